"""A throwaway PostgreSQL server (Debian's ``postgresql`` package) for tests and benchmarks.

``PgServer`` runs ``initdb`` into a fresh temporary directory and starts ``postgres`` on it,
listening on 127.0.0.1 on a free port and on a unix socket in that directory, with trust
authentication, the superuser ``postgres`` and a database ``test``. ``stop()`` (or leaving
the ``with`` block) shuts down the one process it started and removes the directory::

    with PgServer() as server:
        server.url                       # postgresql://postgres@127.0.0.1:PORT/test
        url = server.create_database()   # a new, empty database: its own URL

PostgreSQL refuses to run as root: when this process is root, the server runs as the
``postgres`` system user the package creates (``nobody`` without it), switched to with
``setpriv`` (util-linux) and the temporary directory handed to that user; otherwise it runs
as the current user. The binaries are those of the newest ``/usr/lib/postgresql/<version>/bin``.

For pytest: ``pytest_plugins = ["tests.harness.pgserver"]`` in a test module (or in tests/conftest.py)
brings the fixtures ``pg_server`` (one server for the whole session) and ``pg_url`` (a new empty
database for each test, dropped after it). If PostgreSQL isn't installed they fail, naming
``scripts/bootstrap.sh --postgres`` (CI installs it: no silent skip).

PYTEST_DONT_REWRITE: a test module may import this file before naming it in pytest_plugins;
without this marker pytest would then warn (an error here) that it can't rewrite its asserts.
"""

from __future__ import annotations

import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

import psycopg
import pytest
from psycopg import sql

INSTALL_HINT = "run scripts/bootstrap.sh --postgres (Debian package postgresql; CI's scripts/test.sh does)"
SUPERUSER = "postgres"
DEFAULT_DB = "test"
PG_ROOT = Path("/usr/lib/postgresql")
_START_TIMEOUT = 60.0  # seconds: start-up takes ~0.5 s (2 s on disk); this only stops a hung one hanging CI
_STOP_TIMEOUT = 30.0
_PORT_ATTEMPTS = 5  # a free port can be taken between probing it and the server binding it: retry


def find_bindir(root: Path = PG_ROOT) -> Path:
    """The newest ``<root>/<version>/bin`` that has ``initdb`` and ``postgres``."""
    versions = []
    for entry in root.glob("*/bin") if root.is_dir() else ():
        version = entry.parent.name
        if re.fullmatch(r"\d+(\.\d+)?", version) and all(os.access(entry / exe, os.X_OK) for exe in ("initdb", "postgres")):
            versions.append((tuple(int(part) for part in version.split(".")), entry))
    if not versions:
        raise RuntimeError(f"PostgreSQL server binaries not found under {root}/<version>/bin: {INSTALL_HINT}")
    return max(versions)[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def default_base_dir() -> str | None:
    """/dev/shm when it is a usable tmpfs with 1 GiB free, else None (tempfile's default).

    In memory, initdb and start take ~0.5 s instead of ~1.3 s and CREATE DATABASE ~10 ms
    instead of ~150 ms on an ext4 disk (measured on a CI-like VM, fsync off either way).
    """
    shm = "/dev/shm"
    try:
        stats = os.statvfs(shm)
    except OSError:
        return None
    if os.access(shm, os.W_OK | os.X_OK) and stats.f_bavail * stats.f_frsize >= 1 << 30:
        return shm
    return None


def _server_user() -> pwd.struct_passwd | None:
    """The user to run the server as: None to stay who we are (not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root, and there is neither a 'postgres' nor a 'nobody' user to run PostgreSQL as")


class PgServer:
    """One PostgreSQL server in its own temporary directory; a context manager.

    Attributes once started: ``port``, ``host`` (127.0.0.1), ``socket_dir`` (the unix socket's
    directory), ``url`` (of the database ``test``), ``bindir``, ``version``, ``startup_seconds``
    (initdb plus start until it accepts connections), ``log_path``.
    """

    host = "127.0.0.1"

    def __init__(self, *, max_connections: int = 200, base_dir: Path | str | None = None,
                 settings: dict[str, str] | None = None) -> None:
        """``base_dir``: where the temporary directory goes (default: :func:`default_base_dir`);
        ``settings``: more postgresql.conf lines, values as PostgreSQL wants them (quoted strings).
        """
        # Up to ~12 client processes × a few connections each, plus the tests' own: 200 is plenty,
        # and costs only a few MB of shared memory.
        self.max_connections = max_connections
        self.base_dir = default_base_dir() if base_dir is None else base_dir
        self.extra_settings = dict(settings or {})
        self.bindir = find_bindir()
        self.version = self.bindir.parent.name
        # STRATEGY FILE_COPY (the option is new in 15; older versions always copy): copy template0's files
        # and checkpoint, about twice as fast here as 15's default WAL_LOG, which writes every page to WAL.
        self._strategy = sql.SQL(" STRATEGY FILE_COPY" if int(self.version.split(".")[0]) >= 15 else "")
        self.port = 0
        self.dir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0
        self._log: IO[bytes] | None = None
        self._names = itertools.count(1)

    # --- life cycle -------------------------------------------------------------------

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    def start(self) -> PgServer:
        if self.dir is not None:
            raise RuntimeError("this PgServer was started already")
        began = time.monotonic()
        user = _server_user()
        self.dir = Path(tempfile.mkdtemp(prefix="pgserver-", dir=self.base_dir))
        try:
            if user is not None:
                os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._initdb(user)
            self._configure()
            for attempt in range(_PORT_ATTEMPTS):
                self.port = free_port()
                if self._launch(user):
                    break
                if attempt == _PORT_ATTEMPTS - 1 or "Address already in use" not in self.log_text():
                    raise RuntimeError(f"PostgreSQL did not start; its log ({self.log_path}):\n{self.log_text()}")
            self.create_database(DEFAULT_DB)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Stop the server this object started (by its PID only) and remove its directory."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            # SIGINT is PostgreSQL's "fast" shutdown, what `pg_ctl stop -m fast` sends: roll back
            # open transactions, disconnect clients, write a checkpoint, exit. Sent to our own
            # child's PID (setpriv execs postgres, so it is the postmaster) rather than to the
            # PID pg_ctl would read from postmaster.pid. If that hangs: SIGQUIT ("immediate"),
            # then SIGKILL; the backends exit on their own when they see the postmaster gone.
            for sig, timeout in ((signal.SIGINT, _STOP_TIMEOUT), (signal.SIGQUIT, 10.0), (signal.SIGKILL, 10.0)):
                process.send_signal(sig)
                try:
                    process.wait(timeout=timeout)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    @property
    def log_path(self) -> Path:
        assert self.dir is not None, "not started"
        return self.dir / "postgres.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def socket_dir(self) -> Path:
        assert self.dir is not None, "not started"
        return self.dir

    @property
    def data_dir(self) -> Path:
        assert self.dir is not None, "not started"
        return self.dir / "data"

    def _as_user(self, user: pwd.struct_passwd | None, *command: str | Path) -> list[str]:
        # --pdeathsig INT: if this Python process dies without stopping the server (kill -9,
        # a crash), the server gets SIGINT (fast shutdown) instead of running on orphaned.
        # Linux sends it when the *thread* that started the server ends: start it from the
        # main thread, or from a thread that outlives the server.
        switch = [] if user is None else [
            "--reuid", str(user.pw_uid), "--regid", str(user.pw_gid), "--clear-groups",
        ]
        return ["setpriv", "--pdeathsig", "INT", *switch, "--", *map(str, command)]

    @staticmethod
    def _env() -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}

    def _initdb(self, user: pwd.struct_passwd | None) -> None:
        command = self._as_user(
            user, self.bindir / "initdb", "--pgdata", self.data_dir, "--username", SUPERUSER,
            "--auth", "trust", "--encoding", "UTF8", "--locale", "C",
            "--no-sync",  # throwaway: no need to fsync the new cluster's files
            "--no-instructions",
        )
        done = subprocess.run(command, env=self._env(), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed (exit {done.returncode}): {done.stdout}{done.stderr}\n"
                               f"(the server's user must be able to reach {self.dir}; set base_dir or TMPDIR)")

    def _configure(self) -> None:
        settings = {
            "listen_addresses": "'127.0.0.1'",  # loopback only, never a public interface
            "unix_socket_directories": f"'{self.socket_dir}'",  # not /var/run/postgresql
            "max_connections": str(self.max_connections),
            # A throwaway test database's durability doesn't matter: no fsync, no waiting for the
            # WAL to reach the disk at commit, no full-page images, minimal WAL. A crash of the
            # machine could corrupt it - and the directory is deleted at the end anyway.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "wal_level": "minimal",
            "max_wal_senders": "0",
            "huge_pages": "off",
            "timezone": "'UTC'",
            "log_timezone": "'UTC'",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
        }
        settings.update(self.extra_settings)
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a", encoding="utf-8") as out:
            out.write("\n# tests/harness/pgserver.py\n")
            out.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _launch(self, user: pwd.struct_passwd | None) -> bool:
        """Start postgres on self.port; True once it accepts connections, False if it exited."""
        if self._log is None:
            self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self._as_user(user, self.bindir / "postgres", "-D", self.data_dir, "-p", str(self.port)),
            env=self._env(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal is for pytest; stop() ends the server
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while True:  # wait until it accepts connections (readiness, not a timing assertion)
            try:
                # Through the unix socket in our own directory: a TCP connection could reach some
                # other server that took the port first (ours then exits: it can't bind it).
                with psycopg.connect(self.socket_url_for("postgres"), connect_timeout=5):
                    return True
            except psycopg.OperationalError:
                if self.process.poll() is not None:
                    self.process = None
                    return False
                if time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not accept connections within {_START_TIMEOUT:.0f} s; "
                                       f"its log:\n{self.log_text()}") from None
                time.sleep(0.01)

    # --- databases --------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL of the database ``test``."""
        return self.url_for(DEFAULT_DB)

    def url_for(self, dbname: str) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/DBNAME`` (TCP on loopback)."""
        if self.port == 0:
            raise RuntimeError("not started")
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{dbname}"

    def socket_url_for(self, dbname: str) -> str:
        """The same database through the unix socket (a little faster to connect)."""
        if self.port == 0:
            raise RuntimeError("not started")
        return f"postgresql://{SUPERUSER}@/{dbname}?host={self.socket_dir}&port={self.port}"

    def _admin_execute(self, statement: sql.Composed) -> None:
        # CREATE/DROP DATABASE can't run inside a transaction block: autocommit.
        with psycopg.connect(self.socket_url_for("postgres"), autocommit=True) as conn:
            conn.execute(statement)

    def create_database(self, name: str | None = None) -> str:
        """Create a new empty database (a copy of template0) and return its URL.

        Without a name it is ``db_<n>``; a given name is used as it is (at most 63 bytes).
        """
        if name is None:
            name = f"db_{next(self._names)}"
        self._admin_execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0{}").format(sql.Identifier(name), self._strategy))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, ending any session still connected to it."""
        self._admin_execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# --- pytest fixtures ---------------------------------------------------------------------

_test_db_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the whole test session."""
    with PgServer() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PgServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A URL of a new, empty database of its own for this test; dropped after it."""
    # Named after the test (readable in the server's log), numbered to stay unique.
    stem = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:40]
    name = f"t{next(_test_db_numbers)}_{stem}"
    url = pg_server.create_database(name)
    yield url
    pg_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where a store goes, once per backend: the SQLite file ``tmp_path / "news.db"``, or a fresh
    PostgreSQL database's URL (the backend contract: every store test runs on both)."""
    if request.param == "sqlite":
        return tmp_path / "news.db"
    return str(request.getfixturevalue("pg_url"))
