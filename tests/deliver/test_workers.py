"""Several ``newsletter dispatch`` processes on one PostgreSQL ledger, as separate machines would
run them: three workers share 30,000 deliveries, each subscriber gets exactly one copy; one
worker SIGKILLed mid-run costs at most its connections' in-flight messages, and the others
finish the job. Real processes, a real PostgreSQL, a capturing SMTP server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, SEED_ISSUE
from tests.harness.stormserver import StormServer

pytestmark = pytest.mark.slow  # the inner loop is `pytest -m "not slow"`; CI runs everything

pytest_plugins = ["tests.harness.pgserver"]

CONNECTIONS = 4
WAIT = 180.0  # seconds: a ceiling for CI, never a timing assertion


@dataclass
class Cluster:
    folder: Path
    config: Path
    issue: Path
    env: dict[str, str]
    capture: StormServer

    def newsletter(self, *arguments: str) -> list[str]:
        return [sys.executable, "-m", "newsletter", "--config", str(self.config), *arguments]

    def worker(self) -> subprocess.Popen[str]:
        return subprocess.Popen(self.newsletter("dispatch", "--issue", str(self.issue), "--json", "-q"),
                                env=self.env, cwd=self.folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str) -> Iterator[Cluster]:
    capture = StormServer(keep_data=False).start()
    try:
        issue = tmp_path / "issues" / SEED_ISSUE.name
        issue.parent.mkdir()
        issue.write_bytes(SEED_ISSUE.read_bytes())
        config = tmp_path / "newsletter.toml"
        config.write_text(f'[smtp]\nhost = "127.0.0.1"\nport = {capture.port}\nconnections = {CONNECTIONS}\n'
                          f'timeout = 60\n\n[dispatch]\nwait_for_retries = 0\n', encoding="utf-8")
        env = {key: value for key, value in os.environ.items() if not key.startswith("NEWSLETTER_")}
        env.update(NEWSLETTER_DATABASE_URL=pg_url, NEWSLETTER_SECRET_KEY="workers-test-key-0123456789abcdef",
                   PYTHONPATH=str(ROOT))
        yield Cluster(tmp_path, config, issue, env, capture)
    finally:
        capture.stop()


def _subscribe(cluster: Cluster, count: int) -> list[str]:
    emails = [f"reader{number}@example.org" for number in range(count)]
    people = cluster.folder / "people.csv"
    people.write_text("email,name\n" + "".join(f"{email},Reader {n}\n" for n, email in enumerate(emails)),
                      encoding="utf-8")
    subprocess.run(cluster.newsletter("subscribers", "import", str(people)), env=cluster.env, check=True,
                   capture_output=True, timeout=WAIT)
    return emails


def _finish(process: subprocess.Popen[str]) -> tuple[int, dict[str, object]]:
    out, err = process.communicate(timeout=WAIT)
    summary = json.loads(out)["issues"][0] if out.strip() else {}
    return process.returncode, summary


def _status(cluster: Cluster) -> dict[str, int]:
    done = subprocess.run(cluster.newsletter("status", "--json"), env=cluster.env, capture_output=True, text=True,
                          check=True, timeout=WAIT)
    counts: dict[str, int] = json.loads(done.stdout)[0]["counts"]
    return counts


def test_three_workers_share_30000_deliveries_exactly_once(cluster: Cluster,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    emails = _subscribe(cluster, 30_000)
    started = time.monotonic()
    workers = [cluster.worker() for _ in range(3)]
    results = [_finish(worker) for worker in workers]
    elapsed = time.monotonic() - started
    received = cluster.capture.by_recipient()
    sent_by = [int(summary.get("sent", 0)) for _, summary in results]  # type: ignore[call-overload]
    with capsys.disabled():
        print(f"\nthree workers on PostgreSQL: sent {sent_by} = {sum(sent_by)} in {elapsed:.1f} s; the capture got "
              f"{sum(received.values())} messages for {len(received)} addresses")
    assert [code for code, _ in results] == [0, 0, 0], results
    assert received == {email: 1 for email in emails}
    assert sum(sent_by) == 30_000
    assert all(count > 0 for count in sent_by)  # each worker did part of it
    assert _status(cluster)["sent"] == 30_000


def test_a_worker_killed_mid_run_costs_at_most_its_connections(cluster: Cluster,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    emails = _subscribe(cluster, 6_000)
    victim, *others = [cluster.worker() for _ in range(3)]
    try:
        deadline = time.monotonic() + WAIT
        while sum(cluster.capture.by_recipient().values()) < 600:  # well into the run
            assert time.monotonic() < deadline and victim.poll() is None, "the run did not get going"
            time.sleep(0.01)
        victim.send_signal(signal.SIGKILL)
        victim.wait(WAIT)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
        victim.communicate()
    results = [_finish(worker) for worker in others]
    # A last run, as cron would start it, closes the books of the dead one.
    final = _finish(cluster.worker())
    received = cluster.capture.by_recipient()
    counts = _status(cluster)
    with capsys.disabled():
        print(f"\nworker killed: the others sent {[summary.get('sent') for _, summary in results]}; last run "
              f"{final[1].get('notes')}; ledger {counts}; the capture got {sum(received.values())} messages")
    assert max(received.values()) == 1  # nobody twice
    missing = set(emails) - set(received)
    assert counts["uncertain"] <= CONNECTIONS  # what the dead worker had in flight
    assert len(missing) <= counts["uncertain"]  # nobody lost but the reported uncertain
    assert counts["sent"] + counts["uncertain"] == len(emails)
    assert counts["pending"] == counts["sending"] == counts["deferred"] == 0
