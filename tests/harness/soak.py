"""The crash soak: dispatch to a capturing SMTP server while SIGKILLing the dispatcher at random
moments, restarting it each time, then count what arrived against who should have it.

Promised, and checked here: **no duplicates**; **nobody lost** except deliveries the tool
itself reports as ``uncertain``; and at most ``connections`` uncertain per kill (one message
in flight per connection when the process died).

Half the kills come at a random time after launch (start-up, render, ledger set-up, the first
claims), half once the server has received a random number of messages (mid-sending).
Everything is real: the ``newsletter`` CLI in child processes, a SQLite file, and the
capturing server of :mod:`tests.harness.stormserver` (faults off) in this process.

``tests/deliver/test_soak.py`` runs it in CI (10,000 recipients, 20 kills); ``scripts/soak`` runs it
longer: ``scripts/soak --recipients 100000 --kills 200``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.harness.stormserver import StormServer

ROOT = Path(__file__).resolve().parents[2]
SEED_ISSUE = ROOT / "issues" / "2017-07-07-trump-putin.md"
KEY = "soak-test-key-0123456789abcdef0123"
WAIT = 120.0  # seconds: a ceiling for one run, never a timing assertion


@dataclass
class SoakResult:
    """What a soak found; :attr:`problems` is empty when every promise held."""

    recipients: int
    connections: int
    kills: int
    kills_mid_sending: int
    runs: int
    received: int
    duplicates: int
    lost: int
    uncertain: int
    lost_not_uncertain: int
    sent_not_received: int
    elapsed: float
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for a log."""
        return (f"crash soak: {self.recipients:,} recipients, {self.connections} connections, {self.kills} SIGKILLs"
                f" ({self.kills_mid_sending} mid-sending), {self.runs} runs in {self.elapsed:.1f} s: received"
                f" {self.received:,}, duplicates {self.duplicates}, lost {self.lost} (all uncertain:"
                f" {self.lost_not_uncertain == 0}), uncertain {self.uncertain} (limit"
                f" {self.connections * self.kills}), sent but not received {self.sent_not_received}")


def _write_config(folder: Path, port: int, connections: int) -> Path:
    config = folder / "newsletter.toml"
    config.write_text(
        f'[sender]\nfrom = "The Briefing <briefing@news.example.com>"\nsite_url = "https://news.example.com"\n\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {port}\nconnections = {connections}\ntimeout = 30\n\n'
        f'[database]\npath = "soak.db"\n\n[dispatch]\nwait_for_retries = 0\n',
        encoding="utf-8",
    )
    return config


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("NEWSLETTER_")}
    env["NEWSLETTER_SECRET_KEY"] = KEY
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _newsletter(config: Path, *arguments: str) -> list[str]:
    return [sys.executable, "-m", "newsletter", "--config", str(config), *arguments]


def _wait(condition: Callable[[], bool], process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition() and process.poll() is None:
        if time.monotonic() > deadline:
            raise TimeoutError("the dispatch made no progress in time")
        time.sleep(0.002)


def run_soak(folder: Path, *, recipients: int = 10_000, kills: int = 20, connections: int = 8, seed: int = 1,
             log: Callable[[str], None] = print) -> SoakResult:
    """Run the soak in ``folder`` (a fresh directory) and return what it found."""
    started = time.monotonic()
    rng = random.Random(seed)
    server = StormServer().start()
    try:
        config = _write_config(folder, server.port, connections)
        people = folder / "people.csv"
        emails = [f"reader{number}@example.org" for number in range(recipients)]
        people.write_text("email,name\n" + "".join(f"{email},Reader {n}\n" for n, email in enumerate(emails)),
                          encoding="utf-8")
        subprocess.run(_newsletter(config, "subscribers", "import", str(people)), env=_env(), check=True,
                       capture_output=True)
        issue = folder / "issues" / SEED_ISSUE.name
        issue.parent.mkdir(exist_ok=True)
        issue.write_bytes(SEED_ISSUE.read_bytes())
        dispatch = _newsletter(config, "dispatch", "--issue", str(issue), "--json", "-q")
        # Kill moments: half by time since launch, half by messages received (sorted, so the run moves on).
        by_count = sorted(rng.randrange(1, recipients) for _ in range(kills - kills // 2))
        plan: list[tuple[str, float]] = [("time", rng.uniform(0.05, 0.6)) for _ in range(kills // 2)]
        plan += [("count", float(count)) for count in by_count]
        rng.shuffle(plan)
        runs = kills_mid_sending = 0
        for kind, value in plan:
            process = subprocess.Popen(dispatch, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       cwd=folder)
            runs += 1
            before = sum(server.by_recipient().values())
            if kind == "time":
                deadline = time.monotonic() + value
                _wait(lambda deadline=deadline: time.monotonic() >= deadline, process)  # type: ignore[misc]
            else:
                target = max(value, before + 1)
                _wait(lambda target=target: sum(server.by_recipient().values()) >= target, process)  # type: ignore[misc]
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                if sum(server.by_recipient().values()) > before:
                    kills_mid_sending += 1
            process.wait(WAIT)
        final = subprocess.run(dispatch, env=_env(), capture_output=True, text=True, cwd=folder, timeout=WAIT * 5)
        runs += 1
        summary = json.loads(final.stdout)["issues"][0] if final.stdout.strip() else {}
        log(f"last run: exit {final.returncode}, {summary.get('sent', '?')} sent,"
            f" {summary.get('uncertain', '?')} uncertain, complete {summary.get('complete')}")
        received = server.by_recipient()
    finally:
        server.stop()
    connection = sqlite3.connect(folder / "soak.db")
    try:
        rows = dict(connection.execute(
            "SELECT s.email, d.status FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id").fetchall())
    finally:
        connection.close()
    uncertain = {email for email, status in rows.items() if status == "uncertain"}
    sent = {email for email, status in rows.items() if status == "sent"}
    lost = {email for email in emails if not received.get(email)}
    result = SoakResult(
        recipients=recipients, connections=connections, kills=kills, kills_mid_sending=kills_mid_sending,
        runs=runs, received=sum(received.values()),
        duplicates=sum(1 for count in received.values() if count > 1),
        lost=len(lost), uncertain=len(uncertain), lost_not_uncertain=len(lost - uncertain),
        sent_not_received=len(sent - set(received)), elapsed=time.monotonic() - started,
    )
    if result.duplicates:
        result.problems.append(f"{result.duplicates} recipients got the issue more than once")
    if result.lost_not_uncertain:
        result.problems.append(f"{result.lost_not_uncertain} recipients got nothing and the ledger doesn't say"
                               " uncertain")
    if result.uncertain > connections * kills:
        result.problems.append(f"{result.uncertain} uncertain, more than {connections} per kill")
    if result.sent_not_received:
        result.problems.append(f"{result.sent_not_received} marked sent that the server never got")
    if set(received) - set(emails):
        result.problems.append("the server got messages for addresses nobody subscribed")
    if summary.get("complete") is not True:
        result.problems.append(f"the last run did not complete the issue (exit {final.returncode})")
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.harness.soak``: run a soak and print its result; exit 1 if a promise broke."""
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="newsletter-soak-") as folder:
        result = run_soak(Path(folder), recipients=args.recipients, kills=args.kills, connections=args.connections,
                          seed=args.seed, log=lambda text: print(text, file=sys.stderr, flush=True))
    print(json.dumps(asdict(result), indent=2) if args.json else result.line())
    print(f"seed {args.seed}", file=sys.stderr)
    for problem in result.problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if result.problems else 0


if __name__ == "__main__":
    sys.exit(main())
