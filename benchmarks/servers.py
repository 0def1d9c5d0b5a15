"""Processes for the delivery benchmarks: Postfix's smtp-sink and smtp-source, and timed child processes.

Everything here starts processes and ends only those, by their PID. ``smtp-sink`` is run
without ``-d`` (it dumps nothing, so it is as fast as it gets) and with ``-c``, whose
running counters on its standard output tell how many messages it took in.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from benchmarks.report import ROOT

__all__ = [
    "SMTP_SINK",
    "SMTP_SOURCE",
    "Finished",
    "Interrupted",
    "SmtpSink",
    "ensure_ready",
    "free_port",
    "newsletter_command",
    "run_measured",
    "signals_interrupt",
    "smtp_source",
]

SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"
BOOTSTRAP = ROOT / "scripts" / "bootstrap.sh"


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, turned into an exception so that ``finally`` blocks clean up."""


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise :class:`Interrupted` (SIGINT raises KeyboardInterrupt anyway)."""

    def raise_interrupt(signum: int, _frame: FrameType | None) -> None:
        raise Interrupted(f"signal {signal.Signals(signum).name}")

    previous = {number: signal.signal(number, raise_interrupt) for number in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ignore SIGINT, SIGTERM and SIGHUP inside (for cleanup that must not be cut short)."""
    numbers = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {number: signal.signal(number, signal.SIG_IGN) for number in numbers}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def newsletter_command() -> Path:
    """The ``newsletter`` entry point of the project's virtualenv (as a user runs it)."""
    beside = Path(sys.executable).parent / "newsletter"
    return beside if beside.exists() else ROOT / ".venv" / "bin" / "newsletter"


def venv_python() -> Path:
    """The virtualenv's Python (the one that runs ``newsletter``)."""
    return newsletter_command().parent / "python"


def ensure_ready() -> None:
    """Make sure smtp-sink, smtp-source and the virtualenv are there: else ``bash scripts/bootstrap.sh --smtp-sink``."""
    missing = [
        str(path)
        for path in (Path(SMTP_SINK), Path(SMTP_SOURCE), newsletter_command())
        if not os.access(path, os.X_OK)
    ]
    if not missing:
        return
    print(f"missing {', '.join(missing)}: running bash scripts/bootstrap.sh --smtp-sink", file=sys.stderr, flush=True)
    subprocess.run(["bash", str(BOOTSTRAP), "--smtp-sink"], cwd=ROOT, check=True)
    still = [path for path in missing if not os.access(path, os.X_OK)]
    if still:
        raise RuntimeError(f"still missing after bootstrap: {', '.join(still)}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stop_process(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds: this one process, by its PID."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()


class SmtpSink:
    """``smtp-sink`` listening on ``host:port`` (optionally inside network namespace ``netns``); stop with :meth:`stop`.

    ``ready`` is how to tell it listens: by default a TCP connection from here (which only
    works when the sink is in this network namespace); the netns benchmark passes its own.
    """

    def __init__(self, folder: Path, *, host: str = "127.0.0.1", port: int | None = None,
                 netns: str | None = None, backlog: int = 1024, max_connections: int = 1024,
                 ready: Callable[[], bool] | None = None) -> None:
        if not os.access(SMTP_SINK, os.X_OK):
            raise RuntimeError(f"{SMTP_SINK} is missing: run bash scripts/bootstrap.sh --smtp-sink")
        self.host = host
        self.port = port or free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.counter_path = folder / f"sink-{self.port}.out"
        self.log_path = folder / f"sink-{self.port}.err"
        user = ["-u", "root"] if os.geteuid() == 0 else []
        command = [SMTP_SINK, "-c", *user, "-m", str(max_connections), f"{host}:{self.port}", str(backlog)]
        if netns is not None:
            command = ["ip", "netns", "exec", netns, *command]  # ip execs the sink: same PID
        with open(self.counter_path, "wb") as out, open(self.log_path, "wb") as err:
            self.process = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        check = ready or self._listens
        deadline = time.monotonic() + 10
        while not check():  # readiness, not a measurement
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"smtp-sink did not start on {host}:{self.port}: {self.log()}")
            time.sleep(0.02)

    def _listens(self) -> bool:
        try:
            socket.create_connection((self.host, self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def log(self) -> str:
        """What smtp-sink wrote to its standard error (its last lines)."""
        try:
            return " / ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-3:])
        except OSError:
            return ""

    def messages(self) -> int | None:
        """How many messages it has received (``mesg=`` of its last counter line), None if unknown."""
        try:
            with open(self.counter_path, "rb") as counters:
                counters.seek(0, os.SEEK_END)
                counters.seek(max(0, counters.tell() - 512))
                tail = counters.read().decode("ascii", "replace")
        except OSError:
            return None
        found = None
        for line in tail.replace("\r", "\n").splitlines():
            for field in line.split():
                if field.startswith("mesg="):
                    with contextlib.suppress(ValueError):
                        found = int(field[5:])
        return found

    def stop(self) -> None:
        """End the sink (this PID only)."""
        _stop_process(self.process)

    def __enter__(self) -> SmtpSink:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Finished:
    """A child process run to its end: wall time, exit status and its own resource usage."""

    command: tuple[str, ...]
    wall: float  # seconds from just before the fork to its exit
    returncode: int
    max_rss_kib: int  # peak resident set size (Linux reports KiB)
    user: float
    system: float
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def cpu(self) -> float:
        """User + system CPU seconds."""
        return self.user + self.system

    def describe_failure(self) -> str:
        """One line on why it failed (for a printed warning)."""
        tail = " / ".join(self.stderr.strip().splitlines()[-3:])
        reason = "timed out" if self.timed_out else f"exit {self.returncode}"
        return f"{Path(self.command[0]).name}: {reason}: {tail}"


# Starts the measured command and reports on it. Why a launcher: Linux records in a child's
# peak RSS (ru_maxrss) the memory of the process image it replaced at exec, and a child of
# this benchmark process (Popen's vfork included) starts out as an image of this process,
# tens of MB after the render benchmark. Forked from this small interpreter (``-I -S``,
# about 8 MB) instead, the command's peak RSS is its own. The launcher times the command
# from just before the spawn to its exit (its own start-up is not counted), takes the
# command's rusage from os.wait4, and passes SIGTERM and SIGHUP on to it.
_LAUNCHER = """
import json, os, signal, sys, time
report, argv = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
pid = os.posix_spawnp(argv[0], argv, os.environ)
def forward(signum, frame):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
signal.signal(signal.SIGTERM, forward)
signal.signal(signal.SIGHUP, forward)
signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the command directly
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
with open(report, "w") as out:
    json.dump({"wall": wall, "returncode": os.waitstatus_to_exitcode(status), "max_rss_kib": usage.ru_maxrss,
               "user": usage.ru_utime, "system": usage.ru_stime}, out)
"""


def run_measured(command: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
                 timeout: float | None = None, folder: Path) -> Finished:
    """Run ``command`` to its end: its wall time, exit status, peak RSS and CPU time (from ``os.wait4``).

    It runs under :data:`_LAUNCHER` (see there why). Standard output and error go to files
    in ``folder`` (no pipes to drain while timing). On ``timeout`` it gets SIGTERM
    (``newsletter dispatch`` then stops after the messages in flight), and SIGKILL 30 s
    later. On KeyboardInterrupt it is stopped the same way.
    """
    folder.mkdir(parents=True, exist_ok=True)
    stamp = f"{time.monotonic_ns()}"
    out_path, err_path = folder / f"run-{stamp}.out", folder / f"run-{stamp}.err"
    report_path = folder / f"run-{stamp}.json"
    timed_out = threading.Event()
    finished = threading.Event()
    launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(report_path), *command]
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.perf_counter()
        process = subprocess.Popen(launcher, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                   env=dict(env) if env is not None else None, cwd=cwd)

        def expire() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)  # the launcher passes it on
            if not finished.wait(30):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, expire) if timeout else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            _stop_process(process, grace=30)
            raise
        finally:
            finished.set()
            if timer is not None:
                timer.cancel()
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    try:
        figures = json.loads(report_path.read_text())
    except (OSError, ValueError):
        # The launcher itself failed or was killed: the launcher's own figures are all there is.
        figures = {"wall": wall, "returncode": process.returncode, "max_rss_kib": usage.ru_maxrss,
                   "user": usage.ru_utime, "system": usage.ru_stime}
    result = Finished(
        command=tuple(str(part) for part in command),
        wall=float(figures["wall"]),
        returncode=int(figures["returncode"]),
        max_rss_kib=int(figures["max_rss_kib"]),
        user=float(figures["user"]),
        system=float(figures["system"]),
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
        timed_out=timed_out.is_set(),
    )
    for path in (out_path, err_path, report_path):
        path.unlink(missing_ok=True)
    return result


def smtp_source(host: str, port: int, *, sessions: int, messages: int, size: int, folder: Path,
                netns: str | None = None, timeout: float | None = None) -> Finished:
    """Postfix's ``smtp-source``: ``messages`` messages of ``size`` payload bytes over ``sessions`` connections.

    ``-d`` keeps each connection for its next message (as ``dispatch`` does; without it,
    every message would open a new connection), ``-s`` is the number of connections in
    parallel and ``-m`` the total number of messages. smtp-source speaks in lock-step
    (no pipelining): MAIL, RCPT, DATA and the message each wait for their reply.
    """
    command = [SMTP_SOURCE, "-d", "-s", str(sessions), "-m", str(messages), "-l", str(size),
               "-f", "a@example.com", "-t", "b@example.com", f"{host}:{port}"]
    if netns is not None:
        command = ["ip", "netns", "exec", netns, *command]
    return run_measured(command, folder=folder, timeout=timeout)


def which(name: str) -> str | None:
    """Like :func:`shutil.which`, also looking in the sbin folders (not always on a user's PATH)."""
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        candidate = Path(folder) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None
