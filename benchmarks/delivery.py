"""Delivery throughput (B1) and memory (B4): ``newsletter dispatch`` to Postfix's smtp-sink, as a user runs it.

Each run is the real command line in a child process::

    NEWSLETTER_SECRET_KEY=… .venv/bin/newsletter --config <tmp>/newsletter.toml \\
        dispatch --issue <tmp>/issues/2017-07-07-trump-putin.md --json -q

against a fresh SQLite database of N subscribers (made with the project's own
migrations by ``newsletter subscribers count``, then filled with one SQL statement per
table in one transaction) and a fresh ``smtp-sink`` on 127.0.0.1 (no dump files, so the
sink is not the bottleneck). The ledger is the real one: the run records a row per
subscriber and marks each one sent. The figures come from outside the process:

* wall time from just before the fork to the exit, and msg/s = ``sent`` (from the JSON
  summary) / wall time; the rate the command reports itself (after its start-up and the
  render) is shown beside it;
* peak RSS and CPU time of that one child, from ``os.wait4``;
* how many messages smtp-sink counted (``-c``), as a check that they all arrived.

**B1 throughput** compares that with Postfix's ``smtp-source`` (C, lock-step SMTP)
sending the same number of messages of the same size (``-l`` = the size of one real
personalised message from ``newsletter render --json``; smtp-source adds four short
header lines) over the same number of connections (``-s``, ``-d`` to keep them) to a
fresh smtp-sink. Target: dispatch ≥ 0.8 × smtp-source.

**B4 memory** is the same dispatch with 1,000,000 subscribers (``--memory-size``), and a
small run (a tenth, at most 10,000) to show how memory grows with the list. Target: peak
RSS ≤ 150 MB. Benchmarks report; they never fail on time.

The config sets ``[dispatch] wait_for_retries = 0`` so that a deferral ends the run
instead of waiting for a retry (it shows in the table); DKIM is off (no key file);
``[sender] bounce_address`` is set, so every message goes out from its own signed return
path (VERP, issue 15), as for a list that reads its bounces.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks import report
from benchmarks.servers import (
    Finished,
    SmtpSink,
    newsletter_command,
    run_measured,
    signals_interrupt,
    smtp_source,
)

__all__ = [
    "BOUNCE_ADDRESS",
    "DispatchRun",
    "Workspace",
    "add_arguments",
    "build_database",
    "dispatch_once",
    "run_memory",
    "run_throughput",
]

#: not a real secret: it only signs the unsubscribe links of the benchmark's own messages
BENCH_SECRET_KEY = "benchmark-key-not-secret-0123456789abcdef"
#: the bounce mailbox of the benchmark's config: each message's MAIL FROM is a signed address there (VERP)
BOUNCE_ADDRESS = "bounces@news.example.com"
THROUGHPUT_RATIO_TARGET = 0.8
MEMORY_TARGET_MB = 150.0
MB = 1_000_000


# --- the scratch folder: config, issue, database ------------------------------------


@dataclass(frozen=True)
class Workspace:
    """A folder with ``newsletter.toml``, ``issues/<seed>.md`` and the database path."""

    folder: Path
    config: Path
    issue: Path
    database: Path

    def command(self, *arguments: str) -> list[str]:
        """``newsletter --config <this config> ARGUMENTS…``."""
        return [str(newsletter_command()), "--config", str(self.config), *arguments]

    def dispatch_command(self) -> list[str]:
        """The dispatch exactly as a scheduled job would run it, with a JSON summary."""
        return self.command("dispatch", "--issue", str(self.issue), "--json", "-q")


#: dropped from the environment of what is measured (see :func:`environment`)
DROPPED_VARIABLES = ("PYTHONDONTWRITEBYTECODE",)


def environment() -> dict[str, str]:
    """This process's environment for the measured commands, plus the benchmark's secret key.

    Without the user's NEWSLETTER_* variables, and without PYTHONDONTWRITEBYTECODE: with
    it (some sandboxes set it) the package's bytecode is never cached and every start
    compiles it from source, which a user's installation doesn't do after its first run.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("NEWSLETTER_") and key not in DROPPED_VARIABLES
    }
    env["NEWSLETTER_SECRET_KEY"] = BENCH_SECRET_KEY
    return env


def make_workspace(folder: Path, *, issue: Path, host: str, port: int, connections: int,
                   timeout: float = 30.0) -> Workspace:
    """Write the config and copy the issue into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    issues = folder / "issues"
    issues.mkdir(exist_ok=True)
    issue_copy = issues / issue.name
    shutil.copyfile(issue, issue_copy)
    config = folder / "newsletter.toml"
    config.write_text(
        "\n".join(
            [
                "[sender]",
                'from = "The Briefing <briefing@news.example.com>"',
                'site_url = "https://news.example.com"',
                # VERP on, as a list that reads its bounces runs: every MAIL FROM a signed return path
                f'bounce_address = "{BOUNCE_ADDRESS}"',
                "",
                "[smtp]",
                f'host = "{host}"',
                f"port = {port}",
                'security = "none"',
                f"connections = {connections}",
                f"timeout = {timeout:g}",
                "",
                "[database]",
                'path = "newsletter.db"',
                "",
                "[issues]",
                'dir = "issues"',
                "",
                "[dispatch]",
                "wait_for_retries = 0",
                "",
            ]
        ),
        encoding="utf-8",
    )
    return Workspace(folder, config, issue_copy, folder / "newsletter.db")


def build_database(workspace: Workspace, count: int, *, list_name: str = "default") -> float:
    """Make the database (the project's migrations, via the CLI) and add ``count`` subscribers; seconds taken.

    Subscribers are ``reader<i>@example.org`` / ``Reader <i>``, all active on ``list_name``,
    inserted by one ``INSERT … SELECT`` per table in one transaction.
    """
    start = time.perf_counter()
    workspace.database.unlink(missing_ok=True)
    # Creating the schema is the project's business: any command that opens the store does it.
    subprocess.run(workspace.command("subscribers", "count", "--json"), env=environment(), check=True,
                   stdout=subprocess.DEVNULL, cwd=workspace.folder)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    connection = sqlite3.connect(workspace.database, isolation_level=None)
    try:
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("INSERT OR IGNORE INTO lists (name) VALUES (?)", (list_name,))
        (list_id,) = connection.execute("SELECT id FROM lists WHERE name = ?", (list_name,)).fetchone()
        first = 1 + (connection.execute("SELECT coalesce(max(id), 0) FROM subscribers").fetchone()[0])
        connection.execute(
            "WITH RECURSIVE n(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " INSERT INTO subscribers (id, email, email_key, name, fields, status, created_at, updated_at)"
            " SELECT i, 'reader' || i || '@example.org', 'reader' || i || '@example.org', 'Reader ' || i, '{}',"
            " 'active', ?, ? FROM n",
            (first, first + count - 1, now, now),
        )
        connection.execute(
            "INSERT INTO memberships (list_id, subscriber_id, status, created_at, updated_at)"
            " SELECT ?, id, 'active', ?, ? FROM subscribers WHERE id >= ?",
            (list_id, now, now, first),
        )
        connection.execute("COMMIT")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()
    return time.perf_counter() - start


def message_size(workspace: Workspace) -> int:
    """Bytes of one personalised message, as ``newsletter render --json`` reports it (``eml_bytes``)."""
    out = workspace.folder / "render"
    completed = subprocess.run(workspace.command("render", str(workspace.issue), "-o", str(out), "--json"),
                               env=environment(), check=True, capture_output=True, text=True, cwd=workspace.folder)
    data = json.loads(completed.stdout)
    if "eml_bytes" in data:
        return int(data["eml_bytes"])
    return Path(data["eml"]).stat().st_size


# --- one dispatch -----------------------------------------------------------------


@dataclass(frozen=True)
class DispatchRun:
    """One ``newsletter dispatch`` child process and what it said about itself."""

    subscribers: int
    connections: int
    finished: Finished
    summary: Mapping[str, object]  # the issue's entry of the JSON summary ({} when there was none)
    errors: tuple[str, ...]
    sink_count: int | None

    @property
    def sent(self) -> int:
        value = self.summary.get("sent", 0)
        return int(value) if isinstance(value, int | float) else 0

    @property
    def rate(self) -> float:
        """Messages sent per second of wall time (start-up included)."""
        return self.sent / self.finished.wall if self.finished.wall > 0 else 0.0

    @property
    def own_rate(self) -> float | None:
        """The rate the command reports itself (``sent`` / its ``elapsed``), if it does."""
        elapsed = self.summary.get("elapsed")
        if isinstance(elapsed, int | float) and elapsed > 0:
            return self.sent / float(elapsed)
        return None

    @property
    def rss_mb(self) -> float:
        return self.finished.max_rss_kib * 1024 / MB

    def problems(self) -> list[str]:
        """What went wrong, if anything: to print as warnings (the figures are then suspect)."""
        found: list[str] = []
        if self.finished.returncode != 0 or self.finished.timed_out:
            found.append(self.finished.describe_failure())
        found.extend(self.errors)
        for key in ("deferred", "failed", "uncertain", "waiting", "skipped"):
            value = self.summary.get(key)
            if isinstance(value, int) and value:
                found.append(f"{value} {key}")
        if self.summary.get("error"):
            found.append(str(self.summary["error"]))
        if self.sent != self.subscribers:
            found.append(f"sent {self.sent:,} of {self.subscribers:,}")
        if self.sink_count is not None and self.sink_count != self.sent:
            found.append(f"smtp-sink counted {self.sink_count:,} messages, dispatch reported {self.sent:,} sent")
        return found


def parse_summary(stdout: str) -> tuple[dict[str, object], tuple[str, ...]]:
    """The first issue of ``dispatch --json``'s output and its errors (empty when the output isn't JSON)."""
    try:
        data = json.loads(stdout)
    except json.JSONDecodeError:
        return {}, ()
    issues = data.get("issues") or [{}]
    return dict(issues[0]), tuple(str(error) for error in data.get("errors", []))


def dispatch_once(workspace: Workspace, subscribers: int, connections: int, *, sink: SmtpSink | None,
                  netns: str | None = None, timeout: float | None = None) -> DispatchRun:
    """Run the dispatch in a child process (in ``netns`` when given) and collect its figures."""
    command = workspace.dispatch_command()
    if netns is not None:
        command = ["ip", "netns", "exec", netns, *command]  # ip execs it: rusage is the dispatch's own
    finished = run_measured(command, env=environment(), cwd=workspace.folder, timeout=timeout,
                            folder=workspace.folder / "logs")
    summary, errors = parse_summary(finished.stdout)
    return DispatchRun(subscribers, connections, finished, summary, errors,
                       sink.messages() if sink is not None else None)


def auto_timeout(messages: int) -> float:
    """A bound on one run: generous (200 msg/s would be far below any sender's worst), but a bound."""
    return 120.0 + messages / 200.0


@contextlib.contextmanager
def scratch(base: Path | None, prefix: str, keep: bool) -> Iterator[Path]:
    """A temporary folder, removed afterwards unless ``keep``."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        yield folder
    finally:
        if keep:
            print(f"kept {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)


def warn(run: DispatchRun, label: str) -> None:
    for problem in run.problems():
        print(f"warning: {label}: {problem}", file=sys.stderr)


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- B1 throughput ----------------------------------------------------------------


@dataclass(frozen=True)
class ThroughputResult:
    run: DispatchRun
    build_seconds: float
    source: Finished
    source_sink_count: int | None

    @property
    def source_rate(self) -> float:
        # What smtp-sink counted when it could count (a timed-out smtp-source sent fewer).
        delivered = self.source_sink_count if self.source_sink_count is not None else self.run.subscribers
        return delivered / self.source.wall if self.source.wall > 0 else 0.0

    @property
    def ratio(self) -> float:
        return self.run.rate / self.source_rate if self.source_rate > 0 else 0.0


def measure_throughput(folder: Path, issue: Path, size: int, connections: int, timeout: float | None,
                       message_bytes: int) -> ThroughputResult:
    """One dispatch of ``size`` subscribers, then smtp-source with the same load, each to a fresh sink."""
    with SmtpSink(folder / "sink") as sink:
        workspace = make_workspace(folder / "dispatch", issue=issue, host="127.0.0.1", port=sink.port,
                                   connections=connections)
        _log(f"  building a database of {size:,} subscribers ...")
        build = build_database(workspace, size)
        _log(f"  newsletter dispatch to {size:,} subscribers, {connections} connections ...")
        run = dispatch_once(workspace, size, connections, sink=sink, timeout=timeout or auto_timeout(size))
    warn(run, f"dispatch of {size:,}")
    with SmtpSink(folder / "sink") as sink:
        _log(f"  smtp-source: {size:,} messages of {message_bytes:,} bytes, {connections} sessions ...")
        source = smtp_source("127.0.0.1", sink.port, sessions=connections, messages=size, size=message_bytes,
                             folder=folder / "logs", timeout=timeout or auto_timeout(size))
        counted = sink.messages()
    if source.returncode != 0:
        print(f"warning: smtp-source: {source.describe_failure()}", file=sys.stderr)
    if counted is not None and counted != size:
        print(f"warning: smtp-sink counted {counted:,} of smtp-source's {size:,} messages", file=sys.stderr)
    return ThroughputResult(run, build, source, counted)


def rate_text(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def throughput_table(results: Sequence[ThroughputResult]) -> str:
    rows = []
    for result in results:
        run = result.run
        verdict = "met" if result.ratio >= THROUGHPUT_RATIO_TARGET else "NOT met"
        rows.append([
            f"{run.subscribers:,}",
            str(run.connections),
            f"{run.sent:,}",
            f"{run.finished.wall:.2f} s",
            rate_text(run.rate),
            rate_text(run.own_rate),
            f"{run.rss_mb:.0f} MB",
            f"{run.finished.cpu / max(run.sent, 1) * 1e6:.0f} µs",
            rate_text(result.source_rate),
            f"{result.ratio:.2f}",
            f"≥ {THROUGHPUT_RATIO_TARGET:g}: {verdict}",
        ])
    header = ["Subscribers", "Conns", "Sent", "Wall", "msg/s", "msg/s after start-up", "Peak RSS",
              "CPU/msg", "smtp-source msg/s", "Ratio", "Target"]
    return report.format_table(header, rows, right=range(0, 10))


def throughput_notes(results: Sequence[ThroughputResult], message_bytes: int, connections: int) -> list[str]:
    notes = [
        f"One personalised message: {message_bytes:,} bytes (seed issue, `newsletter render --json`); "
        f"no DKIM signature; each message's MAIL FROM its own signed return path (`[sender] bounce_address = "
        f"\"{BOUNCE_ADDRESS}\"`, VERP).",
        "msg/s = sent / wall time of the whole command (Python start-up, render and ledger included); "
        "\"after start-up\" is sent / the `elapsed` the command reports. CPU/msg = the dispatch process's "
        "user + system CPU / sent; peak RSS from `os.wait4`, the command forked from a small launcher (Linux counts "
        "in ru_maxrss the image a child replaced at exec, which would be this benchmark's own).",
        f"smtp-source: `smtp-source -d -s {connections} -m <N> -l {message_bytes} -f a@example.com "
        "-t b@example.com 127.0.0.1:<port>` (C, lock-step SMTP, no pipelining) to a fresh "
        "`smtp-sink -c -u root -m 1024 127.0.0.1:<port> 1024` (no dump); Ratio = dispatch msg/s / smtp-source msg/s.",
    ]
    for result in results:
        notes.append(
            f"{result.run.subscribers:,} subscribers: database built in {result.build_seconds:.1f} s; "
            f"smtp-sink counted {_count(result.run.sink_count)} messages from dispatch and "
            f"{_count(result.source_sink_count)} from smtp-source "
            f"({result.source.wall:.2f} s, {result.source.cpu:.2f} s CPU)."
        )
    return notes


def _count(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def parse_sizes(text: str) -> list[int]:
    sizes = [int(part.replace("_", "").replace(",", "")) for part in text.split(",") if part.strip()]
    if not sizes or any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: give positive counts, e.g. 10000,100000")
    return sizes


def run_throughput(args: argparse.Namespace, command: str) -> int:
    """B1: dispatch msg/s against smtp-source's, for each size."""
    sizes: list[int] = [2_000] if args.quick and args.sizes is None else (args.sizes or [10_000, 100_000])
    connections: int = args.connections
    issue = Path(args.issue)
    _log(f"throughput benchmark: {', '.join(f'{size:,}' for size in sizes)} subscribers, {connections} connections")
    results: list[ThroughputResult] = []
    with signals_interrupt(), scratch(args.workdir, "nl-throughput-", args.keep) as folder:
        probe = make_workspace(folder / "probe", issue=issue, host="127.0.0.1", port=25, connections=connections)
        message_bytes = message_size(probe)  # also the warm-up: the package's modules compiled once
        for size in sizes:
            results.append(measure_throughput(folder / f"n{size}", issue, size, connections, args.timeout,
                                              message_bytes))
    table = throughput_table(results)
    notes = throughput_notes(results, message_bytes, connections)
    report.publish(args, "throughput", "Delivery throughput (B1): dispatch to smtp-sink on loopback", command,
                   table, notes, "benchmarks/delivery.py")
    return 0 if all(not result.run.problems() for result in results) else 1


# --- B4 memory --------------------------------------------------------------------


def run_memory(args: argparse.Namespace, command: str) -> int:
    """B4: peak RSS of a dispatch to a big list (and a small one, to see the growth)."""
    size: int = args.memory_size if args.memory_size is not None else (20_000 if args.quick else 1_000_000)
    small = max(1, min(10_000, size // 10))
    connections: int = args.connections
    issue = Path(args.issue)
    _log(f"memory benchmark: {size:,} subscribers (and {small:,} for comparison), {connections} connections")
    runs: list[tuple[DispatchRun, float, int]] = []
    with signals_interrupt(), scratch(args.workdir, "nl-memory-", args.keep) as folder:
        for count in (small, size):
            with SmtpSink(folder / "sink") as sink:
                workspace = make_workspace(folder / f"n{count}", issue=issue, host="127.0.0.1", port=sink.port,
                                           connections=connections)
                _log(f"  building a database of {count:,} subscribers ...")
                build = build_database(workspace, count)
                database_bytes = workspace.database.stat().st_size
                _log(f"  newsletter dispatch to {count:,} subscribers ...")
                run = dispatch_once(workspace, count, connections, sink=sink,
                                    timeout=args.timeout or auto_timeout(count))
            warn(run, f"dispatch of {count:,}")
            runs.append((run, build, database_bytes))
            shutil.rmtree(folder / f"n{count}", ignore_errors=True)
    rows = []
    for run, _build, _bytes in runs:
        verdict = "met" if run.rss_mb <= MEMORY_TARGET_MB else "NOT met"
        rows.append([
            f"{run.subscribers:,}", f"{run.sent:,}", f"{run.finished.wall:.1f} s", rate_text(run.rate),
            f"{run.rss_mb:.0f} MB", f"{run.finished.cpu:.1f} s", f"≤ {MEMORY_TARGET_MB:g} MB: {verdict}",
        ])
    table = report.format_table(["Subscribers", "Sent", "Wall", "msg/s", "Peak RSS", "CPU", "Target"], rows,
                                right=range(0, 6))
    (small_run, _, _), (big_run, big_build, big_bytes) = runs
    growth = (big_run.rss_mb - small_run.rss_mb) * MB / max(1, big_run.subscribers - small_run.subscribers)
    notes = [
        "Peak RSS of the dispatch process alone (`os.wait4`, forked from a small launcher, see B1), "
        f"MB = 10^6 bytes; {connections} connections to "
        "`smtp-sink` on 127.0.0.1, ledger on, no DKIM.",
        f"{big_run.subscribers:,}-subscriber database built in {big_build:.1f} s ({big_bytes / MB:.0f} MB "
        "before the run); it then gets the ledger's row per subscriber.",
        f"Growth between the two runs: {growth:,.1f} bytes of peak RSS per subscriber "
        "(about 0 when memory does not depend on the list's size).",
    ]
    report.publish(args, "memory", "Memory (B4): dispatch to a big list", command, table, notes,
                   "benchmarks/delivery.py")
    return 0 if not big_run.problems() and not small_run.problems() else 1


# --- command line -----------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of B1 and B4, and the ones every delivery benchmark shares."""
    group = parser.add_argument_group("delivery benchmarks (throughput, memory, latency, startup)")
    group.add_argument("--quick", action="store_true",
                       help="a fast smoke run: small sizes, every path still run; writes build/BENCHMARKS.quick.md "
                            "unless --output is given")
    group.add_argument("--sizes", type=parse_sizes, default=None,
                       help="throughput: subscriber counts, comma-separated (default: 10000,100000; quick: 2000)")
    group.add_argument("--connections", type=int, default=16,
                       help="throughput and memory: [smtp] connections and smtp-source sessions (default: 16)")
    group.add_argument("--memory-size", type=int, default=None,
                       help="memory: subscribers (default: 1000000; quick: 20000)")
    group.add_argument("--timeout", type=float, default=None,
                       help="seconds one dispatch may take before it is stopped (default: 120 + N/200)")
    group.add_argument("--workdir", type=Path, default=None,
                       help="where scratch folders go (default: the system's temporary folder)")
    group.add_argument("--keep", action="store_true", help="keep the scratch folders (databases, logs)")
