"""Database faults: a lock another process holds, a full disk, a damaged file, a read-only mount.

All real: SQLite files (on tmpfs mounts made for the test where the fault is the file
system's: full or read-only; CI runs as root), the ``newsletter`` command in child
processes, the lock held by yet another child process, and the SMTP server of
:mod:`tests.harness.smtpserver` on 127.0.0.1 in this process. For every fault: one clear line
naming the database file, a non-zero exit, no traceback; the ledger never says ``sent``
for a message the server didn't get (what it got beyond the ledger is at most one
``sending`` row per connection, the gate's promise); and once the fault is gone a later
run finishes the issue with every subscriber reached once (uncertain rows excepted).

The server's ``data_delay`` only paces a run so that it is still going when the test acts;
nothing is asserted about timing.
"""

from __future__ import annotations

import errno
import os
import random
import select
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from click.testing import CliRunner

from newsletter.cli.commands import main
from newsletter.store.engine import BUSY_TIMEOUT
from newsletter.store.subscribers import Store, SubscriberRow
from tests.conftest import ROOT, SEED_ISSUE
from tests.harness.smtpserver import SmtpServer, running_server

pytestmark = pytest.mark.slow  # the inner loop is `pytest -m "not slow"`; CI runs everything

KEY = "db-faults-test-key-0123456789abcdef"
CONNECTIONS = 4
WAIT = 60.0  # seconds: a ceiling for CI, never a timing assertion
SHORT_LOCK_WAIT = 1.0  # the children's busy timeout where a test wants "locked" without waiting 10 s
EXIT_ERROR = 1  # cli.py: dispatch hit an error
EXIT_STORE = 1  # cli.py's _store(): a database that fails is an error (1), not bad input (2)
EXIT_INCOMPLETE = 3

# The real command line (newsletter.cli.commands.run, as the console script), with the store's busy
# timeout set first when argv[1] is a number: the one knob the lock tests turn.
CLI = """\
import sys
import newsletter.store.engine
if sys.argv[1] != "default":
    newsletter.store.engine.BUSY_TIMEOUT = float(sys.argv[1])
from newsletter.cli.commands import run
sys.argv[1:2] = []
run()
"""

# Another program holding the database: one line in, one line out, so the test knows when
# the lock is taken. ``exclusive`` also keeps readers out (PRAGMA locking_mode=EXCLUSIVE).
HOLDER = """\
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
if sys.argv[2] == "exclusive":
    connection.execute("PRAGMA locking_mode=EXCLUSIVE")
print("ready", flush=True)
for line in sys.stdin:
    command, _, argument = line.strip().partition(" ")
    if command == "lock":
        connection.execute("BEGIN EXCLUSIVE")
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()  # holds it in every mode
    elif command == "sql":
        connection.execute(argument)
    elif command == "release":
        connection.execute("COMMIT")
        connection.close()
    print(command, "done", flush=True)
"""


@pytest.fixture
def server() -> Iterator[SmtpServer]:
    yield from running_server()


def _child_env() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if name not in ("NEWSLETTER_CONFIG", "NEWSLETTER_SMTP_PASSWORD", "NEWSLETTER_DKIM_KEY_FILE")}
    env["NEWSLETTER_SECRET_KEY"] = KEY
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


@dataclass
class Newsletter:
    """A newsletter in a temporary folder whose database lives at ``db`` (maybe on a test mount)."""

    folder: Path
    config: Path
    db: Path
    issue: Path
    emails: list[str]

    def start(self, *args: str, lock_wait: float | None = None) -> subprocess.Popen[str]:
        """``newsletter --config … ARGS`` in a child process."""
        return subprocess.Popen(
            [sys.executable, "-c", CLI, "default" if lock_wait is None else str(lock_wait),
             "--config", str(self.config), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env(), cwd=self.folder,
        )

    def command(self, *args: str, lock_wait: float | None = None) -> tuple[int, str, str]:
        """Run ``newsletter ARGS`` in a child process: (exit code, stdout, stderr)."""
        with self.start(*args, lock_wait=lock_wait) as process:
            try:
                stdout, stderr = process.communicate(timeout=2 * WAIT)
            finally:
                if process.poll() is None:
                    process.kill()  # the child we started, nothing else
        return process.returncode, stdout, stderr

    def dispatch(self, *extra: str, lock_wait: float | None = None) -> tuple[int, str, str]:
        return self.command("dispatch", "--issue", str(self.issue), *extra, lock_wait=lock_wait)

    def cli(self, *args: str) -> tuple[int, str]:
        """The same command in this process (click's runner): (exit code, stdout + stderr)."""
        environment = {"NEWSLETTER_SECRET_KEY": KEY, "NEWSLETTER_DKIM_KEY_FILE": ""}
        result = CliRunner().invoke(main, ["--config", str(self.config), *args], env=environment)
        return result.exit_code, result.output

    def statuses(self) -> dict[str, str]:
        """Every delivery row of the seed issue as email -> status (read like ``status`` does)."""
        with Store.open(self.db) as store:
            rows = store.query(
                "SELECT s.email_key, d.status FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id"
                " JOIN issues i ON i.id = d.issue_id WHERE i.slug = ?", (SEED_ISSUE.stem,))
        return {str(row[0]): str(row[1]) for row in rows}


def make_newsletter(folder: Path, port: int, subscribers: int, *, db: Path | None = None) -> Newsletter:
    (folder / "issues").mkdir(parents=True)
    issue = folder / "issues" / SEED_ISSUE.name
    shutil.copy(SEED_ISSUE, issue)
    db = db or folder / "news.db"
    config = folder / "newsletter.toml"
    config.write_text(
        f"""\
[sender]
from = "The Briefing <briefing@news.example.com>"

[smtp]
host = "127.0.0.1"
port = {port}
security = "none"
connections = {CONNECTIONS}
timeout = {WAIT}

[database]
path = "{db}"

[issues]
dir = "issues"

[dispatch]
retry_initial = 0.01
retry_max = 0.05
wait_for_retries = 5
""",
        encoding="utf-8",
    )
    emails = [f"reader{number}@example.org" for number in range(subscribers)]
    with Store.open(db) as store:
        store.upsert_subscribers([SubscriberRow(email, f"Reader {n}") for n, email in enumerate(emails)],
                                 list_name="default")
    return Newsletter(folder, config, db, issue, emails)


def error_line(stderr: str, db: Path) -> str:
    """The one line that reports the error; it names the database file, and there is no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, stderr
    assert str(db) in lines[0], lines[0]
    return lines[0]


# --- another process holds the lock ---------------------------------------------------------


class LockHolder:
    """A child process with its own connection to the database, told line by line what to do."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.expect("ready")

    def expect(self, word: str) -> None:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], WAIT)
        line = self.process.stdout.readline() if ready else ""
        if not line.startswith(word):
            self.process.kill()
            _, stderr = self.process.communicate(timeout=WAIT)
            pytest.fail(f"the lock holder said {line!r}, not {word!r}: {stderr}")

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        self.expect(command.split()[0])

    def lock(self) -> None:
        """Take the write lock (waiting for a transaction in progress, as any writer does)."""
        self.send("lock")

    def release(self) -> None:
        self.send("release")


@contextmanager
def lock_holder(db: Path, mode: str = "normal") -> Iterator[LockHolder]:
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), mode], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with process:
        try:
            yield LockHolder(process)
        finally:
            if process.poll() is None:
                process.kill()  # the child we started, nothing else; its lock dies with it
                process.wait(timeout=WAIT)


def has_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open (its /proc fd links)."""
    try:
        links = [os.readlink(entry) for entry in Path(f"/proc/{pid}/fd").iterdir()]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return str(path) in links


def wait_until(condition: Callable[[], bool], process: subprocess.Popen[str], what: str) -> None:
    """Wait (with a deadline) until ``condition()`` holds while ``process`` runs."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if process.poll() is not None:
            _, stderr = process.communicate(timeout=WAIT)
            pytest.fail(f"the child ended (exit {process.returncode}) before {what}: {stderr}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.01)


def kill_running(processes: list[subprocess.Popen[str]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()  # a child we started, nothing else


def check_stopped_run(newsletter: Newsletter, server: SmtpServer) -> set[str]:
    """After a run the database stopped: nothing is ``sent`` that the server didn't get, and what
    the server got beyond the ledger is at most one ``sending`` row per connection. Returns those."""
    received = server.recorder.by_recipient()
    assert all(copies == 1 for copies in received.values()), received
    statuses = newsletter.statuses()
    sent = {email for email, status in statuses.items() if status == "sent"}
    sending = {email for email, status in statuses.items() if status == "sending"}
    assert sent <= set(received), sent - set(received)
    assert set(received) - sent <= sending, (set(received) - sent, statuses)
    assert len(sending) <= CONNECTIONS, sending
    assert set(statuses.values()) <= {"pending", "sending", "sent"}, Counter(statuses.values())
    return sending


def check_finished(newsletter: Newsletter, server: SmtpServer, in_doubt: set[str], *,
                   in_process: bool = False) -> None:
    """A later run completes the issue: everyone got it once, except rows left in doubt (at most once)."""
    if in_process:
        code, stderr = newsletter.cli("dispatch", "--issue", str(newsletter.issue))
    else:
        code, _, stderr = newsletter.dispatch()
    statuses = newsletter.statuses()
    uncertain = {email for email, status in statuses.items() if status == "uncertain"}
    assert code == (EXIT_INCOMPLETE if uncertain else 0), stderr
    assert uncertain <= in_doubt
    assert set(statuses) == set(newsletter.emails)
    assert {email: status for email, status in statuses.items() if email not in uncertain} == \
        dict.fromkeys(set(newsletter.emails) - uncertain, "sent")
    received = server.recorder.by_recipient()
    assert {email: copies for email, copies in received.items() if email not in uncertain} == \
        dict.fromkeys(set(newsletter.emails) - uncertain, 1)
    assert all(received[email] <= 1 for email in uncertain)
    if uncertain:
        assert f"{len(uncertain)} left uncertain by a run that died" in stderr
    # ... and `status` says so.
    code, output = newsletter.cli("status")
    assert code == 0, output
    assert f"{len(statuses) - len(uncertain)} sent" in output and f"{len(uncertain)} uncertain" in output


def test_the_store_waits_out_a_short_lock(tmp_path: Path, server: SmtpServer) -> None:
    newsletter = make_newsletter(tmp_path, server.port, 20)
    with Store.open(newsletter.db) as store:
        assert store.query("PRAGMA busy_timeout")[0][0] == int(BUSY_TIMEOUT * 1000) == 10_000
    with lock_holder(newsletter.db) as holder:
        holder.lock()
        # Written under the lock: whoever fixes the issue's audience after this has waited for it.
        holder.send("sql INSERT INTO subscribers (email, email_key, created_at, updated_at)"
                    " VALUES ('late@example.org', 'late@example.org', 'now', 'now')")
        holder.send("sql INSERT INTO memberships (list_id, subscriber_id, created_at, updated_at)"
                    " SELECT 1, id, 'now', 'now' FROM subscribers WHERE email_key = 'late@example.org'")
        with newsletter.start("dispatch", "--issue", str(newsletter.issue)) as process:
            try:
                wait_until(lambda: has_open(process.pid, newsletter.db), process, "it opened the database")
                time.sleep(1.0)  # pacing only: let it reach its first write and wait there
                assert process.poll() is None, "a 1 s lock must be waited out, not reported"
                holder.release()
                _, stderr = process.communicate(timeout=2 * WAIT)
            finally:
                if process.poll() is None:
                    process.kill()
        assert process.returncode == 0, stderr
    assert server.recorder.by_recipient() == dict.fromkeys([*newsletter.emails, "late@example.org"], 1)


def test_dispatch_while_another_process_holds_the_lock(tmp_path: Path, server: SmtpServer) -> None:
    newsletter = make_newsletter(tmp_path, server.port, 30)
    connections = server.recorder.connections  # the server's own start-up probe
    with lock_holder(newsletter.db) as holder:
        holder.lock()
        code, _, stderr = newsletter.dispatch(lock_wait=SHORT_LOCK_WAIT)
        assert code == EXIT_ERROR, stderr
        line = error_line(stderr, newsletter.db)
        assert "locked by another process" in line and "run again" in line, line
        assert server.recorder.connections == connections and server.recorder.received() == []
        # Readers aren't blocked (WAL): the issue isn't there, half-made or otherwise.
        code, output = newsletter.cli("status")
        assert (code, output.strip()) == (0, "no issue has been dispatched yet")
        code, _, stderr = newsletter.command("subscribers", "add", "new@example.org", lock_wait=SHORT_LOCK_WAIT)
        assert code == EXIT_STORE, stderr
        assert "locked by another process" in error_line(stderr, newsletter.db)
        holder.release()
    check_finished(newsletter, server, set())


def test_two_commands_on_a_new_database_at_once(tmp_path: Path, server: SmtpServer) -> None:
    # Both find it unmigrated, then queue for the write lock: the second must see the first's
    # migrations done, not run them again ("table subscribers already exists").
    newsletter = make_newsletter(tmp_path, server.port, 0)
    newsletter.db.unlink()
    with lock_holder(newsletter.db) as holder:
        holder.send("sql PRAGMA journal_mode=WAL")  # a new, empty database, as a first open makes it
        holder.lock()
        with ExitStack() as stack:
            adds = [stack.enter_context(newsletter.start("subscribers", "add", email))
                    for email in ("ann@example.org", "bob@example.org")]
            stack.callback(kill_running, adds)  # first on the way out, then each Popen's own exit
            for process in adds:
                wait_until(partial(has_open, process.pid, newsletter.db), process, "it opened the database")
            time.sleep(0.5)  # pacing only: let both read the schema version and queue for the lock
            holder.release()
            errors = [process.communicate(timeout=2 * WAIT)[1] for process in adds]
    assert [process.returncode for process in adds] == [0, 0], errors
    code, output = newsletter.cli("subscribers", "count")
    assert (code, output.strip()) == (0, "2 active, 0 unsubscribed, 0 bounced")


def test_a_lock_that_keeps_readers_out_too(tmp_path: Path, server: SmtpServer) -> None:
    newsletter = make_newsletter(tmp_path, server.port, 10)
    with lock_holder(newsletter.db, "exclusive") as holder:
        holder.lock()
        for args in (("status",), ("subscribers", "count")):
            code, _, stderr = newsletter.command(*args, lock_wait=SHORT_LOCK_WAIT)
            assert code == EXIT_STORE, stderr
            assert "locked by another process" in error_line(stderr, newsletter.db)
        code, _, stderr = newsletter.dispatch(lock_wait=SHORT_LOCK_WAIT)
        assert code == EXIT_ERROR and "locked by another process" in error_line(stderr, newsletter.db)
        holder.release()
    assert server.recorder.received() == []
    check_finished(newsletter, server, set())


def test_a_lock_taken_mid_run_stops_it_and_a_later_run_finishes(tmp_path: Path, server: SmtpServer) -> None:
    newsletter = make_newsletter(tmp_path, server.port, 300)
    server.recorder.data_delay = 0.01
    with lock_holder(newsletter.db) as holder:
        with newsletter.start("dispatch", "--issue", str(newsletter.issue), lock_wait=SHORT_LOCK_WAIT) as process:
            try:
                wait_until(lambda: len(server.recorder.received()) >= 60, process, "60 messages arrived")
                holder.lock()
                _, stderr = process.communicate(timeout=2 * WAIT)
            finally:
                if process.poll() is None:
                    process.kill()
        assert process.returncode == EXIT_ERROR, stderr
        assert "locked by another process" in error_line(stderr, newsletter.db)
        assert 60 <= len(server.recorder.received()) < 300
        in_doubt = check_stopped_run(newsletter, server)  # read while the lock is still held
        holder.release()
    server.recorder.data_delay = 0
    check_finished(newsletter, server, in_doubt)


# --- the disk fills up ---------------------------------------------------------------------------


class Mounts:
    """tmpfs and bind mounts made for one test, all unmounted (innermost first) when it ends."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.mounted: list[Path] = []

    def _mount(self, *args: str) -> None:
        result = subprocess.run(["mount", *args], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.fail(f"can't mount ({' '.join(args)}): {result.stderr.strip()}; these tests need root "
                        "(CI runs as root) and a kernel that allows mounts in the test's namespace")

    def tmpfs(self, name: str, size: str = "8m") -> Path:
        target = self.folder / name
        target.mkdir()
        self._mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(target))
        self.mounted.append(target)
        return target

    def bind(self, source: Path, target: Path) -> None:
        self._mount("--bind", str(source), str(target))
        self.mounted.append(target)

    def read_only(self, target: Path, *, bind: bool = False) -> None:
        self._mount("-o", "remount,bind,ro" if bind else "remount,ro", str(target))

    def writable(self, target: Path) -> None:
        self._mount("-o", "remount,rw", str(target))

    def unmount(self, target: Path) -> None:
        self.mounted.remove(target)
        subprocess.run(["umount", str(target)], check=True, capture_output=True)

    def unmount_all(self) -> None:
        problems = []
        while self.mounted:
            target = self.mounted.pop()
            result = subprocess.run(["umount", str(target)], capture_output=True, text=True)
            if result.returncode != 0:
                subprocess.run(["umount", "-l", str(target)], capture_output=True)  # never leave it mounted
                problems.append(f"{target}: {result.stderr.strip()}")
        assert not problems, problems


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Mounts]:
    made = Mounts(tmp_path)
    try:
        yield made
    finally:
        made.unmount_all()


def fill(folder: Path) -> Path:
    """Write a ballast file until the file system of ``folder`` has not one byte left."""
    ballast = folder / "ballast"
    with ballast.open("wb", buffering=0) as file:
        for size in (1 << 20, 1 << 12, 1):
            chunk = bytes(size)
            while True:
                try:
                    file.write(chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    assert os.statvfs(folder).f_bavail == 0
    return ballast


def test_a_full_disk_before_dispatch(tmp_path: Path, server: SmtpServer, mounts: Mounts) -> None:
    disk = mounts.tmpfs("disk", "2m")
    newsletter = make_newsletter(tmp_path / "work", server.port, 30, db=disk / "news.db")
    ballast = fill(disk)
    code, _, stderr = newsletter.dispatch()
    assert code == EXIT_ERROR, stderr
    assert "database or disk is full" in error_line(stderr, newsletter.db)
    assert server.recorder.received() == []
    code, _, stderr = newsletter.command("subscribers", "add", "new@example.org")
    assert code == EXIT_STORE and "database or disk is full" in error_line(stderr, newsletter.db)
    ballast.unlink()
    code, output = newsletter.cli("status")
    assert (code, output.strip()) == (0, "no issue has been dispatched yet")  # nothing half-made
    check_finished(newsletter, server, set())


def test_the_disk_fills_up_mid_run(tmp_path: Path, server: SmtpServer, mounts: Mounts) -> None:
    # In this process (click's runner), twice: a run that failed must not keep holding anything
    # (its run lock above all) that would stop the next run in the same process from finishing.
    disk = mounts.tmpfs("disk", "8m")
    newsletter = make_newsletter(tmp_path / "work", server.port, 300, db=disk / "news.db")
    server.recorder.data_delay = 0.01
    filled: list[Path] = []

    def fill_once_60_arrived() -> None:
        if server.recorder.wait_for(60, timeout=WAIT):
            filled.append(fill(disk))

    filler = threading.Thread(target=fill_once_60_arrived, daemon=True)
    filler.start()
    code, output = newsletter.cli("dispatch", "--issue", str(newsletter.issue))
    filler.join(timeout=WAIT)
    assert filled, f"the disk was never filled: {output}"
    assert code == EXIT_ERROR, output
    assert "database or disk is full" in error_line(output, newsletter.db)
    assert 60 <= len(server.recorder.received()) < 300
    filled[0].unlink()
    in_doubt = check_stopped_run(newsletter, server)
    server.recorder.data_delay = 0
    check_finished(newsletter, server, in_doubt, in_process=True)


# --- a damaged file, or not a database at all ----------------------------------------------------


def _garbage(path: Path) -> None:
    path.write_bytes(random.Random(5).randbytes(64 * 1024))


def _text(path: Path) -> None:
    path.write_text("email,name\nann@example.org,Ann\n" * 200, encoding="utf-8")


def _header_only(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\x00" + bytes(84))


def _foreign(path: Path) -> None:
    with sqlite3.connect(path) as other:
        other.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, caption TEXT)")
        other.execute("INSERT INTO photos (caption) VALUES ('a cat')")
    other.close()


@pytest.mark.parametrize("damage", [_garbage, _text, _header_only, _foreign],
                         ids=["garbage", "text", "header-only", "another-programs-db"])
def test_a_file_that_is_not_a_newsletter_database(tmp_path: Path, server: SmtpServer,
                                                  damage: Callable[[Path], None]) -> None:
    newsletter = make_newsletter(tmp_path, server.port, 5)
    newsletter.db.unlink()
    damage(newsletter.db)
    before = newsletter.db.read_bytes()
    for args in (("status",), ("subscribers", "count"), ("subscribers", "add", "new@example.org")):
        code, output = newsletter.cli(*args)
        assert code == EXIT_STORE, output
        assert output.count("\n") == 1 and "Traceback" not in output and str(newsletter.db) in output, output
        assert "not a database" in output or "not newsletter's" in output, output
    code, _, stderr = newsletter.dispatch()
    assert code == EXIT_ERROR, stderr
    line = error_line(stderr, newsletter.db)
    assert "not a database" in line or "not newsletter's" in line, line
    assert "left as it was" in line or "left as it is" in line
    assert server.recorder.received() == []
    assert newsletter.db.read_bytes() == before  # not overwritten, not "repaired"


def test_a_truncated_database_sends_nothing_and_stays_as_it_is(tmp_path: Path, server: SmtpServer) -> None:
    newsletter = make_newsletter(tmp_path, server.port, 300)
    code, _, stderr = newsletter.dispatch()
    assert code == 0, stderr
    size = newsletter.db.stat().st_size
    good = newsletter.db.read_bytes()
    for cut in (100, 4096, size // 2, size - 4096):
        newsletter.db.write_bytes(good[:cut])
        for args in (("status",), ("subscribers", "count")):
            code, output = newsletter.cli(*args)
            assert code == EXIT_STORE and "damaged or not a database" in output, (cut, output)
            assert output.count("\n") == 1 and str(newsletter.db) in output, output
        code, _, stderr = newsletter.dispatch("--resend-uncertain")
        assert code == EXIT_ERROR, (cut, stderr)
        assert "damaged or not a database" in error_line(stderr, newsletter.db)
        assert newsletter.db.read_bytes() == good[:cut]
    assert server.recorder.by_recipient() == dict.fromkeys(newsletter.emails, 1)  # only the first run's


# --- a read-only file or folder ------------------------------------------------------------------


def test_a_read_only_mount(tmp_path: Path, server: SmtpServer, mounts: Mounts) -> None:
    disk = mounts.tmpfs("disk", "8m")
    newsletter = make_newsletter(tmp_path / "work", server.port, 20, db=disk / "news.db")
    mounts.read_only(disk)
    code, _, stderr = newsletter.dispatch()
    assert code == EXIT_ERROR, stderr
    assert "read-only" in error_line(stderr, newsletter.db)
    code, output = newsletter.cli("subscribers", "add", "new@example.org")
    assert code == EXIT_STORE and "read-only" in output and str(newsletter.db) in output, output
    assert server.recorder.received() == []
    mounts.writable(disk)
    check_finished(newsletter, server, set())


def test_a_read_only_file_in_a_writable_folder(tmp_path: Path, server: SmtpServer, mounts: Mounts) -> None:
    disk = mounts.tmpfs("disk", "8m")
    newsletter = make_newsletter(tmp_path / "work", server.port, 20, db=disk / "news.db")
    mounts.bind(newsletter.db, newsletter.db)
    mounts.read_only(newsletter.db, bind=True)
    code, _, stderr = newsletter.dispatch()
    assert code == EXIT_ERROR, stderr
    assert "read-only" in error_line(stderr, newsletter.db)
    assert server.recorder.received() == []
    mounts.unmount(newsletter.db)
    check_finished(newsletter, server, set())


def test_a_writable_file_in_a_read_only_folder(tmp_path: Path, server: SmtpServer, mounts: Mounts) -> None:
    data = mounts.tmpfs("data", "8m")
    folder = mounts.tmpfs("folder", "1m")
    newsletter = make_newsletter(tmp_path / "work", server.port, 20, db=folder / "news.db")
    shutil.move(newsletter.db, data / "news.db")
    (folder / "news.db").touch()
    mounts.read_only(folder)
    mounts.bind(data / "news.db", folder / "news.db")  # the file itself stays writable
    code, _, stderr = newsletter.dispatch()
    assert code == EXIT_ERROR, stderr
    line = error_line(stderr, newsletter.db)
    assert "read-only" in line and "news.db-wal" in line, line
    assert server.recorder.received() == []
