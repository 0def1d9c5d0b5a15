"""Workers (issue 7): msg/s with 1, 2 and 4 ``newsletter dispatch`` processes sharing one PostgreSQL ledger.

The relay is B2's (:mod:`benchmarks.netns`): two network namespaces made for the run,
joined by a veth pair whose each side is delayed 15 ms (``--delay-ms``; netem, or NFQUEUE
and :mod:`benchmarks.delayer` where the kernel has no netem), ``smtp-sink`` in the far
namespace. For each worker count W (``--worker-counts``, default 1,2,4) a fresh database
of N subscribers gets W copies of the real command line, started together in the near
namespace on the same issue::

    NEWSLETTER_DATABASE_URL=postgresql://postgres@/wW?host=<socket dir>&port=<port> \\
        ip netns exec <near> .venv/bin/newsletter --config <tmp>/newsletter.toml \\
        dispatch --issue <tmp>/issues/<seed>.md --json -q

each with ``[smtp] connections = C`` (``--worker-connections``, default 16: one worker is
then clearly bound by the relay's round trips, about 16 / (2 × 31 ms) = 260 msg/s, far
below the ~7,000 msg/s one process reaches on loopback in B1), so W workers hold W × C
connections. They claim rows with ``FOR UPDATE SKIP LOCKED``; if the relay is the limit,
throughput grows with W close to linearly, to the ideal ``W × C / (2 × RTT)`` (two
round trips a message, as in B2). N is sized for about ``--workers-seconds`` (10 s) at
that ideal.

**Where PostgreSQL runs.** One throwaway server (``tests/harness/pgserver.py``'s ``PgServer``,
as the postgres user, in /dev/shm) in the root network namespace, reached by the workers
through its **unix socket**: a socket is a file, and ``ip netns exec`` changes the
network namespace (and remounts /sys) but leaves /dev/shm shared, so the socket that
the server created there is reachable from the near namespace, while its 127.0.0.1
listener is not (each namespace has its own loopback). That keeps the server exactly as
the tests run it (no second way to start it, nothing listening on the veth) and keeps
the database traffic off the delayed path: only SMTP crosses the 30 ms veth, as it
would with workers next to their database and a relay far away. Subscribers are
inserted with SQL (``generate_series``, one statement per table) after the project's
own migrations made the schema (``newsletter subscribers count`` on the empty
database): the CLI's import adds one row at a time on PostgreSQL.

**Figures.** Wall time runs from just before the first worker is started to the exit of
the last one (each exit time taken by a thread blocked in ``waitid`` on that PID); msg/s
= the workers' summed ``sent`` / that wall time. "After start-up" is from the earliest
moment a worker began its run (its exit time minus the ``elapsed`` it reports, which
includes rendering the issue) to the last exit. Ratio = msg/s / ideal; scaling = msg/s /
the 1-worker msg/s. Checks: smtp-sink's own count (``-c``) must equal N, every worker
must exit 0, and the ledger must hold N rows ``sent``. As soon as every worker has
opened its run in the ledger, ``newsletter workers --json`` is run once (root namespace,
same socket) and the number of live workers it lists is compared with the open runs. CPU: each worker's user and system
time from ``wait4``; PostgreSQL's (the postmaster, its live children and the children
it reaped, from /proc), the delayers' and smtp-sink's from /proc; and the machine's
busy fraction of all cores from /proc/stat over the run. If the cores are nearly all
busy, the CPU rather than the relay is the limit, and the notes say so.

**A shared machine.** Two cores leave no room for a neighbour: before each run the
benchmark waits (``--quiet-wait``, up to 300 s) until other processes leave the cores
under 10 % busy, and a run during which they took more than 10 % of the cores anyway
("other" CPU: the machine's busy time minus everything measured) is run again, at most
``--workers-retries`` (2) times; the notes say when a figure comes from a disturbed run.

Everything started here is stopped by its PID (workers: SIGTERM on ``--timeout`` or an
interrupt, SIGKILL 30 s later), and the namespaces, veth, delayers, smtp-sink and
PostgreSQL are removed whatever happens. Needs root (network namespaces), iproute2, and
PostgreSQL's server binaries (``scripts/bootstrap.sh --postgres``, run if they are
missing).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks import report
from benchmarks.delivery import (
    Workspace,
    auto_timeout,
    environment,
    make_workspace,
    message_size,
    parse_summary,
    rate_text,
    scratch,
)
from benchmarks.netns import FAR_ADDRESS, SINK_PORT, Wire, ensure_tool, wire
from benchmarks.servers import BOOTSTRAP, SmtpSink, signals_deferred, signals_interrupt

if TYPE_CHECKING:
    from tests.harness.pgserver import PgServer

__all__ = ["add_arguments", "run"]

LIST_NAME = "default"
#: `newsletter workers` is asked who is running once all workers opened their runs, or at the latest when
#: smtp-sink has counted this fraction of N
WORKERS_CHECK_AT = 0.5
#: machine-wide busy fraction from which the notes call the CPU the limit
CPU_BOUND = 0.9
#: busy fraction of all cores below which the machine counts as quiet before a run
QUIET = 0.1
#: a run during which other processes took more than this share of all cores is run again (--workers-retries)
DISTURBED = 0.1
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- CPU accounting from /proc ------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (index 0 = state), None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def process_cpu(pid: int, *, reaped_children: bool = False) -> float:
    """CPU seconds (user + system) of ``pid``, plus those of the children it has reaped when asked."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _CLOCK_TICKS


def tree_cpu(root: int) -> float:
    """CPU seconds of a server that forks one process per session (PostgreSQL): the root, its live
    children, and the children it has reaped already (their time moves into its cutime/cstime)."""
    total = process_cpu(root, reaped_children=True)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None and int(fields[1]) == root:
            total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return total


def machine_ticks() -> tuple[int, int, int]:
    """(busy, total, softirq) clock ticks of all cores since boot, from the first line of /proc/stat."""
    with open("/proc/stat", encoding="ascii") as stat:
        values = [int(value) for value in stat.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal  # guest time is inside user already
    return busy, busy + idle + iowait, softirq


def machine_busy(seconds: float = 1.0) -> float:
    """The busy fraction of all cores over the next ``seconds``."""
    busy_before, total_before, _ = machine_ticks()
    time.sleep(seconds)
    busy_after, total_after, _ = machine_ticks()
    return (busy_after - busy_before) / max(1, total_after - total_before)


def wait_for_quiet(max_wait: float) -> tuple[float, float]:
    """Wait (at most ``max_wait`` s) until other processes leave the cores nearly idle; (busy fraction, waited s).

    The benchmark wants both cores: another program busy on them (a test suite, a build)
    would halve what the workers get and make the scaling meaningless. The run goes ahead
    after ``max_wait`` anyway, and the busy fraction found just before it is reported.
    """
    started = time.monotonic()
    busy = machine_busy()
    announced = False
    while busy > QUIET and time.monotonic() - started < max_wait:
        if not announced:
            print(f"  other processes keep the machine {busy:.0%} busy: waiting up to {max_wait:.0f} s for it to "
                  "calm down", file=sys.stderr, flush=True)
            announced = True
        busy = machine_busy()
    return busy, time.monotonic() - started


# --- PostgreSQL ------------------------------------------------------------------------------


def ensure_postgres() -> bool:
    """Whether PostgreSQL's server binaries are there, running ``scripts/bootstrap.sh --postgres`` if not."""
    from tests.harness.pgserver import find_bindir

    try:
        find_bindir()
        return True
    except RuntimeError:
        pass
    print("PostgreSQL server binaries missing: running bash scripts/bootstrap.sh --postgres", file=sys.stderr,
          flush=True)
    subprocess.run(["bash", str(BOOTSTRAP), "--postgres"], cwd=report.ROOT, check=False)
    try:
        find_bindir()
        return True
    except RuntimeError as exc:
        print(f"workers benchmark skipped: {exc}", file=sys.stderr)
        return False


def build_pg_database(workspace: Workspace, env: Mapping[str, str], url: str, count: int) -> float:
    """Migrate the empty database at ``url`` with the project's own code, add ``count`` subscribers; seconds.

    ``reader<i>@example.org`` / ``Reader <i>``, all active on the default list: one
    ``INSERT … SELECT … generate_series`` per table, in one transaction.
    """
    import psycopg

    start = time.perf_counter()
    subprocess.run(workspace.command("subscribers", "count", "--json"), env=dict(env), check=True,
                   stdout=subprocess.DEVNULL, cwd=workspace.folder)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    with psycopg.connect(url) as connection:  # one transaction, committed on leaving the block
        connection.execute("INSERT INTO lists (name) VALUES (%s) ON CONFLICT (name) DO NOTHING", (LIST_NAME,))
        row = connection.execute("SELECT id FROM lists WHERE name = %s", (LIST_NAME,)).fetchone()
        assert row is not None
        list_id = row[0]
        connection.execute(
            "INSERT INTO subscribers (email, email_key, name, fields, status, created_at, updated_at)"
            " SELECT 'reader' || i || '@example.org', 'reader' || i || '@example.org', 'Reader ' || i, '{}',"
            " 'active', %s, %s FROM generate_series(1, %s) AS i",
            (now, now, count),
        )
        connection.execute(
            "INSERT INTO memberships (list_id, subscriber_id, status, created_at, updated_at)"
            " SELECT %s, id, 'active', %s, %s FROM subscribers",
            (list_id, now, now),
        )
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("ANALYZE")
    return time.perf_counter() - start


def ledger_counts(url: str) -> dict[str, int]:
    """Rows of ``deliveries`` by status."""
    import psycopg

    with psycopg.connect(url) as connection:
        rows = connection.execute("SELECT status, count(*) FROM deliveries GROUP BY status").fetchall()
    return {str(status): int(number) for status, number in rows}


# --- the workers -----------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    """One ``newsletter dispatch`` child, reaped by a thread of its own the moment it exits."""

    index: int
    process: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path
    started: float
    ended: float | None = None
    returncode: int | None = None
    usage: resource.struct_rusage | None = None
    stderr_tail: str = ""  # its last lines of standard error, kept once it has exited
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None

    def watch(self) -> None:
        self.thread = threading.Thread(target=self._reap, name=f"reap-{self.process.pid}", daemon=True)
        self.thread.start()

    def _reap(self) -> None:
        pid = self.process.pid
        # Wait without reaping first: until the reaping below, the PID stays ours (a zombie at worst),
        # so signal() under the lock can never hit another process that got the number.
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        ended = time.perf_counter()
        with self.lock:
            _, status, usage = os.wait4(pid, 0)
            self.ended, self.usage = ended, usage
            self.returncode = os.waitstatus_to_exitcode(status)
            self.process.returncode = self.returncode  # reaped here: Popen must not wait again

    def signal(self, number: int) -> None:
        with self.lock:
            if self.ended is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, number)

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    @property
    def cpu(self) -> tuple[float, float]:
        """(user, system) seconds."""
        return (self.usage.ru_utime, self.usage.ru_stime) if self.usage is not None else (0.0, 0.0)


def _stop_workers(workers: Sequence[WorkerProcess], grace: float = 30.0) -> None:
    """SIGTERM each live worker (dispatch then stops after what is in flight), SIGKILL after ``grace``."""
    with signals_deferred():
        for worker in workers:
            worker.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for worker in workers:
            if worker.thread is not None:
                worker.thread.join(max(0.0, deadline - time.monotonic()))
        for worker in workers:
            if worker.alive:
                worker.signal(signal.SIGKILL)
                assert worker.thread is not None
                worker.thread.join(10)


@dataclass
class WorkersRun:
    """What one worker count gave."""

    workers: int
    connections: int  # per worker
    subscribers: int
    build_seconds: float
    processes: list[WorkerProcess]
    summaries: list[dict[str, object]]
    errors: list[tuple[str, ...]]
    wall: float
    window: float | None  # from the earliest start of a run to the last exit
    sink_count: int | None
    ledger: dict[str, int]
    listed: tuple[int | None, int] | None  # (live workers `newsletter workers --json` listed, open runs) mid-run
    timed_out: bool
    cpu_workers: float
    cpu_postgres: float
    cpu_delayers: float
    cpu_sink: float
    cpu_bench: float  # this process (its polling) and the one `newsletter workers` it ran
    busy: float  # fraction of all cores busy over the run
    softirq: float  # core-seconds in softirq (kernel networking, mostly) over the run
    background: float  # busy fraction of all cores in the second before the run (other processes)
    waited: float  # seconds spent waiting for the machine to be quiet before the run
    attempt: int = 1  # 2, 3: the earlier runs of this count were disturbed by other processes

    @property
    def other_share(self) -> float:
        """The share of all cores that processes outside the benchmark took during the run (roughly)."""
        return self.cpu_other / ((os.cpu_count() or 1) * self.wall) if self.wall > 0 else 0.0

    @property
    def exit_spread(self) -> float:
        """Seconds between the first and the last worker's exit."""
        ends = [worker.ended for worker in self.processes if worker.ended is not None]
        return max(ends) - min(ends) if ends else 0.0

    @property
    def cpu_other(self) -> float:
        """Busy core-seconds of the run not in the processes measured nor in softirq: other processes (roughly)."""
        listed = (self.cpu_workers + self.cpu_postgres + self.cpu_delayers + self.cpu_sink + self.softirq
                  + self.cpu_bench)
        return max(0.0, self.busy * (os.cpu_count() or 1) * self.wall - listed)

    @property
    def sent_each(self) -> list[int]:
        counts = []
        for summary in self.summaries:
            value = summary.get("sent", 0)
            counts.append(int(value) if isinstance(value, int | float) else 0)
        return counts

    @property
    def sent(self) -> int:
        return sum(self.sent_each)

    @property
    def rate(self) -> float:
        return self.sent / self.wall if self.wall > 0 else 0.0

    @property
    def own_rate(self) -> float | None:
        return self.sent / self.window if self.window else None

    def problems(self) -> list[str]:
        found: list[str] = []
        if self.timed_out:
            found.append("timed out (the workers were stopped)")
        for worker, summary, errors in zip(self.processes, self.summaries, self.errors, strict=True):
            label = f"worker {worker.index + 1}"
            if worker.returncode != 0:
                found.append(f"{label} exited {worker.returncode}: {worker.stderr_tail}")
            found.extend(f"{label}: {error}" for error in errors)
            for key in ("deferred", "failed", "uncertain", "waiting", "skipped"):
                value = summary.get(key)
                if isinstance(value, int) and value:
                    found.append(f"{label}: {value} {key}")
            if summary.get("error"):
                found.append(f"{label}: {summary['error']}")
        if self.sent != self.subscribers:
            found.append(f"the workers sent {self.sent:,} of {self.subscribers:,}")
        if self.sink_count != self.subscribers:
            found.append(f"smtp-sink counted {_count(self.sink_count)} messages, not {self.subscribers:,}")
        if self.ledger.get("sent", 0) != self.subscribers or sum(self.ledger.values()) != self.subscribers:
            found.append(f"ledger: {self.ledger}")
        if self.listed is not None and self.listed[0] != self.listed[1]:
            found.append(f"`newsletter workers` listed {_count(self.listed[0])} live workers mid-run while "
                         f"{self.listed[1]} runs were open")
        return found


def _count(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def list_workers(workspace: Workspace, env: Mapping[str, str], timeout: float = 60.0) -> tuple[int | None, float]:
    """How many live workers ``newsletter workers --json`` lists (None if it failed), and the CPU seconds it took."""
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(workspace.command("workers", "--json"), env=dict(env), stdout=out,
                                   stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, cwd=workspace.folder)
        deadline = time.monotonic() + timeout
        while True:  # reaped here, in this thread: a kill can't reach a reused PID
            found, status, usage = os.wait4(process.pid, os.WNOHANG)
            if found:
                break
            if time.monotonic() > deadline:
                process.kill()
            time.sleep(0.01)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    cpu = usage.ru_utime + usage.ru_stime
    try:
        return (len(json.loads(text)) if process.returncode == 0 else None), cpu
    except (ValueError, TypeError):
        return None, cpu


def open_runs(url: str) -> int:
    """Runs of the ledger not finished yet (started, and not yet closed by their process)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        row = connection.execute("SELECT count(*) FROM runs WHERE finished_at IS NULL").fetchone()
    return int(row[0]) if row else 0


def run_workers(workspace: Workspace, env: Mapping[str, str], url: str, count: int, *, subscribers: int,
                sink: SmtpSink, netns: str,
                timeout: float) -> tuple[list[WorkerProcess], float, bool, tuple[int | None, int] | None, float]:
    """Start ``count`` dispatches together in ``netns`` and wait for all of them.

    Returns the workers, the moment the first was started, whether they timed out,
    (live workers ``newsletter workers`` listed, runs open in the ledger just before), and
    the CPU seconds that command took. It is asked
    once as soon as every worker has opened its run (or, failing that, once the sink has
    counted half of N: a worker can finish before the last one starts on a busy machine).
    """
    command = ["ip", "netns", "exec", netns, *workspace.dispatch_command()]  # ip execs: the PID is the dispatch's
    logs = workspace.folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    workers: list[WorkerProcess] = []
    timed_out = False
    listed: tuple[int | None, int] | None = None
    check_cpu = 0.0
    first = time.perf_counter()
    try:
        for index in range(count):
            out_path, err_path = logs / f"worker-{index + 1}.out", logs / f"worker-{index + 1}.err"
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                started = time.perf_counter()
                process = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=dict(env),
                                           cwd=workspace.folder)
            worker = WorkerProcess(index, process, out_path, err_path, started)
            workers.append(worker)
            worker.watch()
        deadline = first + timeout
        while any(worker.alive for worker in workers):
            if listed is None:
                running = open_runs(url)
                if running >= count or (sink.messages() or 0) >= subscribers * WORKERS_CHECK_AT:
                    number, check_cpu = list_workers(workspace, env)
                    listed = (number, running)
            if time.perf_counter() > deadline:
                timed_out = True
                print(f"warning: {count} workers still running after {timeout:.0f} s: stopping them",
                      file=sys.stderr)
                _stop_workers(workers)
                break
            time.sleep(0.05)
    except BaseException:
        _stop_workers(workers)
        raise
    return workers, first, timed_out, listed, check_cpu


def measure(folder: Path, pg: PgServer, made: Wire, *, issue: Path, count: int, connections: int,
            subscribers: int, timeout: float, quiet_wait: float, attempt: int = 1) -> WorkersRun:
    """One worker count: a fresh database and smtp-sink, ``count`` workers at once, the checks and CPU figures."""
    name = f"w{count}" if attempt == 1 else f"w{count}_{attempt}"
    pg.create_database(name)
    url = pg.socket_url_for(name)
    workspace = make_workspace(folder / name, issue=issue, host=FAR_ADDRESS, port=SINK_PORT, connections=connections)
    env = {**environment(), "NEWSLETTER_DATABASE_URL": url}
    print(f"  building a PostgreSQL database of {subscribers:,} subscribers ...", file=sys.stderr, flush=True)
    build = build_pg_database(workspace, env, url, subscribers)
    near, far = made.near, made.far
    delayer_pids = [delayer.process.pid for delayer in made.delayers]
    postmaster = pg.process.pid if pg.process is not None else 0
    with SmtpSink(folder / name / "sink", host=FAR_ADDRESS, port=SINK_PORT, netns=far,
                  ready=lambda: made.sink_ready(SINK_PORT)) as sink:
        print(f"  {count} worker(s) × {connections} connections, {subscribers:,} messages ...", file=sys.stderr,
              flush=True)
        background, waited = wait_for_quiet(quiet_wait)
        pg_before = tree_cpu(postmaster)
        delayers_before = sum(process_cpu(pid) for pid in delayer_pids)
        busy_before, total_before, softirq_before = machine_ticks()
        own_before = resource.getrusage(resource.RUSAGE_SELF)
        workers, first, timed_out, listed, check_cpu = run_workers(workspace, env, url, count, subscribers=subscribers,
                                                        sink=sink, netns=near, timeout=timeout)
        busy_after, total_after, softirq_after = machine_ticks()
        own_after = resource.getrusage(resource.RUSAGE_SELF)
        delayers_after = sum(process_cpu(pid) for pid in delayer_pids)
        time.sleep(0.2)  # the workers' sessions end as they exit: let the postmaster reap their backends
        pg_after = tree_cpu(postmaster)
        sink_cpu = process_cpu(sink.process.pid)
        sink_count = sink.messages()
    ends = [worker.ended for worker in workers if worker.ended is not None]
    last = max(ends) if ends else time.perf_counter()
    for worker in workers:
        worker.stderr_tail = " / ".join(worker.err_path.read_text(errors="replace").strip().splitlines()[-3:])
    parsed = [parse_summary(worker.out_path.read_text(errors="replace")) for worker in workers]
    summaries = [summary for summary, _ in parsed]
    starts = []
    for worker, summary in zip(workers, summaries, strict=True):
        elapsed = summary.get("elapsed")
        if worker.ended is not None and isinstance(elapsed, int | float) and elapsed > 0:
            starts.append(worker.ended - float(elapsed))
    result = WorkersRun(
        workers=count, connections=connections, subscribers=subscribers, build_seconds=build, processes=workers,
        summaries=summaries, errors=[errors for _, errors in parsed], wall=last - first,
        window=(last - min(starts)) if len(starts) == len(workers) else None, sink_count=sink_count,
        ledger=ledger_counts(url), listed=listed, timed_out=timed_out,
        cpu_workers=sum(sum(worker.cpu) for worker in workers), cpu_postgres=pg_after - pg_before,
        cpu_delayers=delayers_after - delayers_before, cpu_sink=sink_cpu,
        cpu_bench=check_cpu + (own_after.ru_utime + own_after.ru_stime) - (own_before.ru_utime + own_before.ru_stime),
        busy=(busy_after - busy_before) / max(1, total_after - total_before),
        softirq=(softirq_after - softirq_before) / _CLOCK_TICKS, background=background, waited=waited,
        attempt=attempt,
    )
    pg.drop_database(name)
    return result


# --- report ----------------------------------------------------------------------------------


def _ideal(workers: int, connections: int, rtt_ms: float) -> float:
    return workers * connections / (2 * rtt_ms / 1000)


def tables(results: Sequence[WorkersRun], rtt_ms: float) -> str:
    base = next((result.rate for result in results if result.workers == 1), None)
    rows = []
    for result in results:
        ideal = _ideal(result.workers, result.connections, rtt_ms)
        problems = result.problems()
        exits = ", ".join(str(worker.returncode) for worker in result.processes)
        check = f"sink {_count(result.sink_count)} = N; exits {exits}" if not problems else "; ".join(problems)
        scaling = f"{result.rate / base:.2f} ({result.rate / base / result.workers:.2f} of linear)" if base else "-"
        rows.append([
            str(result.workers), str(result.workers * result.connections), f"{result.subscribers:,}",
            f"{result.sent:,}", f"{result.wall:.2f} s", rate_text(result.rate), rate_text(result.own_rate),
            rate_text(ideal), f"{result.rate / ideal:.2f}", scaling,
            " / ".join(f"{sent:,}" for sent in result.sent_each), f"{result.exit_spread:.2f} s", check,
        ])
    header = ["Workers", "Conns", "N", "Sent", "Wall", "msg/s", "msg/s after start-up", "Ideal W×C/(2 RTT)",
              "Ratio", "Scaling (× 1 worker)", "Sent per worker", "Exits spread over", "Check"]
    main = report.format_table(header, rows, right=(*range(0, 9), 11))
    cores = os.cpu_count() or 1
    cpu_rows = []
    for result in results:
        each = " / ".join(f"{user:.1f}+{system:.1f}" for user, system in (worker.cpu for worker in result.processes))
        cpu_rows.append([
            str(result.workers), each, f"{result.cpu_workers:.1f} s",
            f"{result.cpu_workers / max(result.sent, 1) * 1e6:.0f} µs",
            f"{result.cpu_postgres:.1f} s ({result.cpu_postgres / max(result.sent, 1) * 1e6:.0f} µs/msg)",
            f"{result.cpu_delayers:.1f} s" if result.cpu_delayers else "-", f"{result.cpu_sink:.1f} s",
            f"{result.softirq:.1f} s", f"{result.cpu_bench:.1f} s", f"{result.cpu_other:.1f} s",
            f"{result.busy:.0%} ({result.busy * cores:.2f} of {cores})", f"{result.background:.0%}",
            "-" if result.listed is None else f"{_count(result.listed[0])} of {result.listed[1]} open runs",
        ])
    cpu_header = ["Workers", "CPU per worker, user+sys (s)", "Workers' CPU", "Workers' CPU/msg", "PostgreSQL",
                  "Delayers", "smtp-sink", "Softirq", "Benchmark", "Other", "Machine busy (cores)", "Busy before",
                  "`newsletter workers` listed"]
    cpu = report.format_table(cpu_header, cpu_rows, right=range(0, 13))
    return main + "\n\n" + cpu


def notes(results: Sequence[WorkersRun], made: Wire, rtt_ms: float, ping_ms: float | None,
          connects: Sequence[float], connections: int, message_bytes: int, seconds: float) -> list[str]:
    cores = os.cpu_count() or 1
    measured = [
        f"`ping -U` {ping_ms:.1f} ms average" if ping_ms else "ping not available",
        f"TCP connect {statistics.median(connects):.1f} ms median" if connects else "",
    ]
    lines = [
        f"Relay: B2's path (two network namespaces, a veth, delay by {made.method}); "
        f"smtp-sink in the far namespace, the workers in the near one. Round trip: "
        f"{', '.join(part for part in measured if part)}; the ideal uses {rtt_ms:.1f} ms.",
        f"Each worker: the real `newsletter dispatch --json -q` with `[smtp] connections = {connections}`, all started "
        "together on the same issue; PostgreSQL (tests/harness/pgserver.py, fsync off, in /dev/shm) in the root "
        "namespace, "
        "reached through its unix socket (shared across network namespaces), so only SMTP crosses the delayed veth. "
        f"N = about {seconds:g} s at the ideal; a fresh database and smtp-sink for each worker count; one message is "
        f"{message_bytes:,} bytes, no DKIM.",
        "Wall = first worker started to last worker exited; msg/s = the workers' summed `sent` / wall. After start-up "
        "= from the earliest start of a worker's run (its exit minus the `elapsed` it reports, render included) to "
        "the last exit. Ratio = msg/s / ideal; scaling = msg/s / the 1-worker msg/s (linear = the worker count). "
        "Check: smtp-sink's own count equals N, every worker's exit status, and the ledger holds N rows `sent`.",
        "CPU over each run: workers' user+sys from `wait4` (start-up and render included); PostgreSQL = postmaster, "
        "its live children and the children it reaped (/proc); delayers and smtp-sink from /proc; softirq (kernel "
        "networking not charged to a process) from /proc/stat; benchmark = this process's polling and the "
        "`newsletter workers` it ran; other = the machine's busy core-seconds minus all those (other processes; "
        "tick-based, so ±0.5 s); machine busy = non-idle share of all "
        f"{cores} cores in /proc/stat. Busy before = the same share in the second before the run, after waiting "
        f"(up to `--quiet-wait` s) for other processes to leave the cores under {QUIET:.0%} busy. "
        "`newsletter workers --json` (root namespace) was run once, as soon as every worker had opened its run in "
        f"the ledger (or when smtp-sink had counted {WORKERS_CHECK_AT:.0%} of N, if one finished before another "
        "started), and listed that many live workers; open runs = `runs` rows not finished just before.",
    ]
    for result in results:
        lines.append(f"{result.workers} worker(s): database of {result.subscribers:,} built in "
                     f"{result.build_seconds:.1f} s; ledger after the run: "
                     + ", ".join(f"{number:,} {status}" for status, number in sorted(result.ledger.items())) + ".")
    for result in results:
        if result.attempt > 1:
            lines.append(f"The {result.workers}-worker figures are from attempt {result.attempt}: during the earlier "
                         f"one(s) other processes took more than {DISTURBED:.0%} of the machine.")
        if result.background > QUIET or result.other_share > DISTURBED:
            lines.append(f"The {result.workers}-worker run shared the machine: other processes kept it "
                         f"{result.background:.0%} busy just before (after waiting {result.waited:.0f} s) and took "
                         f"about {result.cpu_other:.1f} core-seconds ({result.other_share:.0%} of the cores) during "
                         "it; its figures are lower than a quiet machine gives.")
    if results:
        top = max(results, key=lambda result: result.workers)
        harness = top.cpu_delayers + top.cpu_sink + top.softirq
        parts = (f"workers {top.cpu_workers:.1f} s, PostgreSQL {top.cpu_postgres:.1f} s, "
                 + (f"delayers {top.cpu_delayers:.1f} s, " if top.cpu_delayers else "")
                 + f"smtp-sink {top.cpu_sink:.1f} s, softirq {top.softirq:.1f} s, benchmark {top.cpu_bench:.1f} s, "
                 f"other {top.cpu_other:.1f} s; "
                 f"the benchmark's own relay - {'delayers, ' if top.cpu_delayers else ''}smtp-sink, softirq - "
                 f"{harness:.1f} s of them")
        used = top.busy * cores * top.wall
        base = next((result for result in results if result.workers == 1), None)
        scaling = ""
        if base is not None and top is not base and base.own_rate and top.own_rate:
            scaling = (f" Scaling after start-up is {top.own_rate / base.own_rate:.2f}× "
                       f"(wall: {top.rate / base.rate:.2f}×): {top.workers} start-ups and renders share the "
                       f"{cores} cores at once.")
        own_busy = top.busy - top.other_share
        if own_busy >= CPU_BOUND:
            verdict = (f"the CPU, not the relay, is the limit at {top.workers} workers: the {cores} cores were "
                       f"{top.busy:.0%} busy over the run's {top.wall:.1f} s ({used:.1f} core-seconds: {parts}). "
                       "With more cores the same workers would get closer to the ideal.")
        elif top.busy >= CPU_BOUND:
            verdict = (f"the CPU was the limit of the {top.workers}-worker run only because other processes shared "
                       f"it: the {cores} cores were {top.busy:.0%} busy over the run's {top.wall:.1f} s "
                       f"({used:.1f} core-seconds: {parts}), the benchmark's own processes {own_busy:.0%}. Run it "
                       "again on a quiet machine.")
        elif own_busy >= 0.6:
            verdict = (f"at {top.workers} workers the {cores} cores were {top.busy:.0%} busy over the run's "
                       f"{top.wall:.1f} s ({used:.1f} core-seconds: {parts}): not saturated, so the relay's round "
                       "trips still set the rate, but busy enough that a reply sometimes waits for a core, part "
                       "of the shortfall from linear; a few more workers would make the CPU the limit here.")
        else:
            verdict = (f"at {top.workers} workers the {cores} cores were {top.busy:.0%} busy over the run's "
                       f"{top.wall:.1f} s ({used:.1f} core-seconds: {parts}): the CPU had room left, so the relay's "
                       "round trips, not the machine, set the rate.")
        lines.append(verdict[0].upper() + verdict[1:] + scaling)
    if made.delayers:
        delayer_cpu = sum(delayer.cpu for delayer in made.delayers)
        summaries = "; ".join(delayer.summary for delayer in made.delayers if delayer.summary)
        lines.append(f"The two delayer processes used {delayer_cpu:.1f} s of CPU over the benchmark's "
                     f"{made.lifetime:.0f} s, on the same {cores} cores as everything else ({summaries}).")
    return lines


def run(args: argparse.Namespace, command: str) -> int:
    """msg/s with each worker count against the delayed relay, sharing one PostgreSQL ledger."""
    if os.geteuid() != 0:
        print("workers benchmark skipped: it needs root (network namespaces)", file=sys.stderr)
        return 1
    if ensure_tool("ip", "iproute2") is None or not ensure_postgres():
        return 1
    from tests.harness.pgserver import PgServer

    counts: list[int] = args.worker_counts
    connections: int = args.worker_connections
    seconds: float = args.workers_seconds if args.workers_seconds is not None else (1.5 if args.quick else 10.0)
    quiet_wait: float = args.quiet_wait if args.quiet_wait is not None else (20.0 if args.quick else 300.0)
    issue = Path(args.issue)
    print(f"workers benchmark: {', '.join(map(str, counts))} worker(s) × {connections} connections, "
          f"{args.delay_ms:g} ms each way", file=sys.stderr, flush=True)
    results: list[WorkersRun] = []
    with signals_interrupt(), scratch(args.workdir, "nl-workers-", args.keep) as folder, PgServer() as pg, \
            wire(args.delay_ms, args.netns_sysctl) as made:
        print(f"  PostgreSQL {pg.version} on {pg.socket_dir} (unix socket)", file=sys.stderr, flush=True)
        probe = make_workspace(folder / "probe", issue=issue, host=FAR_ADDRESS, port=SINK_PORT, connections=1)
        message_bytes = message_size(probe)  # also compiles the package's bytecode once
        with SmtpSink(folder / "sink", host=FAR_ADDRESS, port=SINK_PORT, netns=made.far,
                      ready=lambda: made.sink_ready(SINK_PORT)):
            ping_ms = made.ping()
            connects = made.tcp_rtts(SINK_PORT, 10)
        rtt_ms = ping_ms or (statistics.median(connects) if connects else 2 * args.delay_ms)
        for count in counts:
            subscribers = max(200, 4 * count * connections, round(_ideal(count, connections, rtt_ms) * seconds))
            for attempt in range(1, args.workers_retries + 2):
                result = measure(folder, pg, made, issue=issue, count=count, connections=connections,
                                 subscribers=subscribers, timeout=args.timeout or auto_timeout(subscribers),
                                 quiet_wait=quiet_wait, attempt=attempt)
                if result.other_share <= DISTURBED or attempt > args.workers_retries:
                    break
                print(f"  other processes took {result.other_share:.0%} of the machine during the {count}-worker "
                      f"run ({result.rate:,.0f} msg/s): running it again", file=sys.stderr, flush=True)
            for problem in result.problems():
                print(f"warning: {count} worker(s): {problem}", file=sys.stderr)
            print(f"  {count} worker(s): {result.sent:,} sent in {result.wall:.2f} s = {result.rate:,.0f} msg/s "
                  f"(ideal {_ideal(count, connections, rtt_ms):,.0f}); per worker "
                  f"{' / '.join(map(str, result.sent_each))}; smtp-sink counted {_count(result.sink_count)}; "
                  f"machine {result.busy:.0%} busy", file=sys.stderr, flush=True)
            results.append(result)
    report.publish(args, "workers", "Workers: dispatch processes sharing a PostgreSQL ledger, relay 30 ms away",
                   command, tables(results, rtt_ms),
                   notes(results, made, rtt_ms, ping_ms, connects, connections, message_bytes, seconds),
                   "benchmarks/workers.py")
    return 0 if all(not result.problems() for result in results) else 1


# --- command line ----------------------------------------------------------------------------


def _counts(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give worker counts, e.g. 1,2,4")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("workers benchmark (also uses --delay-ms and --netns-sysctl)")
    group.add_argument("--worker-counts", type=_counts, default=[1, 2, 4],
                       help="numbers of dispatch processes, comma-separated (default: 1,2,4)")
    group.add_argument("--worker-connections", type=int, default=16,
                       help="[smtp] connections of each worker (default: 16)")
    group.add_argument("--workers-seconds", type=float, default=None,
                       help="about how long each run lasts at the ideal rate (default: 10; quick: 1.5)")
    group.add_argument("--workers-retries", type=int, default=2,
                       help=f"runs of a worker count to repeat when other processes took more than {DISTURBED:.0%}% "
                            "of the cores during it (default: 2)")
    group.add_argument("--quiet-wait", type=float, default=None,
                       help="seconds to wait, at most, before each run for other processes to leave the cores idle "
                            f"(under {QUIET:.0%}% busy; default: 300; quick: 20)")
