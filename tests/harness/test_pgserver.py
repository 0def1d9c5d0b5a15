"""tests/harness/pgserver.py: a real, throwaway PostgreSQL server, and the behaviour the ledger will rely on.

Each test gets a database of its own (``pg_url``) on the one session server (``pg_server``):
rows committed on one connection are seen by another, ``FOR UPDATE SKIP LOCKED`` hands concurrent
open transactions disjoint rows, and a session advisory lock is refused to other sessions
until the process holding it dies (SIGKILL), when the server releases it by itself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.harness.pgserver import PgServer, find_bindir

pytest_plugins = ["tests.harness.pgserver"]

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 30.0  # seconds to wait for a condition that normally holds within milliseconds


def wait_for(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)


def pid_gone(pid: int) -> bool:
    """True when the process has exited (a zombie not yet reaped by its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_server_is_private_fast_and_not_root(pg_server: PgServer) -> None:
    assert pg_server.url == f"postgresql://postgres@127.0.0.1:{pg_server.port}/test"
    with psycopg.connect(pg_server.url) as conn:
        settings: dict[str, str] = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('listen_addresses', 'unix_socket_directories', 'fsync', 'synchronous_commit', 'max_connections', "
            "'server_version_num')"
        ).fetchall())
        assert conn.execute("SELECT current_database(), current_user").fetchone() == ("test", "postgres")
    assert settings["listen_addresses"] == "127.0.0.1"
    assert settings["unix_socket_directories"] == str(pg_server.socket_dir)
    assert settings["fsync"] == "off" and settings["synchronous_commit"] == "off"
    assert int(settings["max_connections"]) >= 100
    assert settings["server_version_num"].startswith(pg_server.version)
    # The unix socket works too, and the server doesn't run as root (PostgreSQL refuses to).
    with psycopg.connect(pg_server.socket_url_for("test")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert pg_server.process is not None
    uid = int(Path(f"/proc/{pg_server.process.pid}/status").read_text().split("\nUid:")[1].split()[0])
    assert uid != 0 and pg_server.socket_dir.stat().st_uid == uid


def test_each_test_gets_a_new_empty_database(pg_server: PgServer, pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        name = conn.execute("SELECT current_database()").fetchone()
        assert name is not None and name[0] not in ("test", "postgres")
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
        conn.execute("CREATE TABLE mine (id int)")
    other = pg_server.create_database()
    try:
        assert other != pg_url
        with psycopg.connect(other) as conn:
            assert conn.execute("SELECT to_regclass('mine')").fetchone() == (None,)
    finally:
        pg_server.drop_database(other.rsplit("/", 1)[1])


def test_two_connections_see_each_others_committed_rows(pg_url: str) -> None:
    with psycopg.connect(pg_url) as writer, psycopg.connect(pg_url) as reader:
        writer.execute("CREATE TABLE sends (id int PRIMARY KEY, state text NOT NULL)")
        writer.commit()
        writer.execute("INSERT INTO sends VALUES (1, 'sending')")
        # Not committed yet: the other connection doesn't see it (READ COMMITTED).
        assert reader.execute("SELECT count(*) FROM sends").fetchone() == (0,)
        reader.rollback()
        writer.commit()
        assert reader.execute("SELECT id, state FROM sends").fetchall() == [(1, "sending")]
        reader.rollback()
        reader.execute("UPDATE sends SET state = 'sent' WHERE id = 1")
        reader.commit()
        assert writer.execute("SELECT state FROM sends WHERE id = 1").fetchone() == ("sent",)


def test_skip_locked_gives_concurrent_transactions_disjoint_rows(pg_url: str) -> None:
    claim = "SELECT id FROM queue WHERE state = 'queued' ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
    with psycopg.connect(pg_url) as first, psycopg.connect(pg_url) as second, psycopg.connect(pg_url) as third:
        first.execute("CREATE TABLE queue (id int PRIMARY KEY, state text NOT NULL)")
        first.execute("INSERT INTO queue SELECT n, 'queued' FROM generate_series(1, 10) AS n")
        first.commit()
        # Three transactions open at once; none waits for another's locks, none gets another's rows.
        mine = [row[0] for row in first.execute(claim, (4,)).fetchall()]
        theirs = [row[0] for row in second.execute(claim, (4,)).fetchall()]
        rest = [row[0] for row in third.execute(claim, (10,)).fetchall()]
        assert (mine, theirs, rest) == ([1, 2, 3, 4], [5, 6, 7, 8], [9, 10])
        first.execute("UPDATE queue SET state = 'sent' WHERE id = ANY(%s)", (mine,))
        first.commit()
        second.rollback()  # its rows go back to the queue; the first's are sent
        left = [row[0] for row in first.execute(claim, (10,)).fetchall()]
        assert left == [5, 6, 7, 8]  # 9 and 10 are still the third's
        first.rollback()
        third.rollback()


# A separate process takes the lock and then waits for us; it never lets go by itself.
_HOLDER = """
import sys, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
got = conn.execute("SELECT pg_try_advisory_lock(%s), pg_backend_pid()", (int(sys.argv[2]),)).fetchone()
print(got[0], got[1], flush=True)
sys.stdin.read()
"""


def test_advisory_lock_is_refused_to_others_until_its_holder_is_killed(pg_url: str) -> None:
    key = 7_000_001
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, pg_url, str(key)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        got, backend = holder.stdout.readline().split()
        assert got == "True"
        with psycopg.connect(pg_url, autocommit=True) as conn:
            try_lock = "SELECT pg_try_advisory_lock(%s)"
            assert conn.execute(try_lock, (key,)).fetchone() == (False,)
            assert conn.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = %s AND granted", (key,)
            ).fetchall() == [(int(backend),)]
            # Another key is free: the lock is per key, not per session.
            assert conn.execute(try_lock, (key + 1,)).fetchone() == (True,)
            assert conn.execute("SELECT pg_advisory_unlock(%s)", (key + 1,)).fetchone() == (True,)

            os.kill(holder.pid, signal.SIGKILL)  # no goodbye: the kernel closes its socket
            holder.wait()
            # The holder's backend sees the EOF and ends, and its session locks go with it.
            wait_for(lambda: conn.execute(try_lock, (key,)).fetchone() == (True,),
                     "the killed holder's lock to be released")
            assert conn.execute("SELECT pg_advisory_unlock(%s)", (key,)).fetchone() == (True,)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        for stream in (holder.stdin, holder.stdout):
            if stream is not None:
                stream.close()



def test_room_for_a_dozen_processes_with_a_few_connections_each(pg_url: str) -> None:
    with contextlib.ExitStack() as stack:
        conns = [stack.enter_context(psycopg.connect(pg_url, autocommit=True)) for _ in range(12 * 4)]
        row = conns[0].execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()").fetchone()
        assert row == (48,)


def test_missing_postgresql_names_the_bootstrap_option(tmp_path: Path) -> None:
    (tmp_path / "15" / "bin").mkdir(parents=True)  # a client-only install: no initdb, no postgres
    for root in (tmp_path, tmp_path / "nowhere"):
        with pytest.raises(RuntimeError, match=r"run scripts/bootstrap\.sh --postgres"):
            find_bindir(root)


def test_stop_ends_the_server_and_removes_its_directory() -> None:
    with PgServer(max_connections=20) as server:
        assert server.process is not None and server.dir is not None
        pid, folder, port = server.process.pid, server.dir, server.port
        with psycopg.connect(server.url) as conn:
            assert conn.execute("SHOW max_connections").fetchone() == ("20",)
        assert server.startup_seconds > 0
    assert pid_gone(pid)
    assert not folder.exists()
    assert refuses_connections(port)


# A process that starts a server and is then SIGKILLed, never reaching stop().
_ABANDONER = """
import sys
from tests.harness.pgserver import PgServer
server = PgServer().start()
print(server.process.pid, server.dir, server.port, flush=True)
sys.stdin.read()
"""


def test_a_server_whose_owner_is_killed_shuts_itself_down() -> None:
    owner = subprocess.Popen([sys.executable, "-c", _ABANDONER], cwd=ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    folder: Path | None = None
    try:
        assert owner.stdout is not None
        pid, where, port = owner.stdout.readline().split()
        folder = Path(where)
        assert not pid_gone(int(pid))
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        # setpriv --pdeathsig INT: the postmaster gets a fast shutdown when its parent dies.
        wait_for(lambda: pid_gone(int(pid)), "the orphaned server to shut down")
        assert refuses_connections(int(port))
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        for stream in (owner.stdin, owner.stdout):
            if stream is not None:
                stream.close()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)  # stop() never ran to remove it
