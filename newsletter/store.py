"""The SQLite store: schema and migrations, subscribers, lists and memberships.

One file, WAL mode, versioned migrations (``PRAGMA user_version``). Every write that
belongs together happens in one transaction, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from newsletter.errors import StoreError

__all__ = [
    "BUSY_TIMEOUT",
    "MIGRATIONS",
    "Store",
    "Subscriber",
    "SubscriberRow",
    "UpsertCounts",
    "database_error",
]

#: seconds a connection waits for another process's write lock before it gives up with
#: "locked": long enough to sit out another run's commit, a ``subscribers import`` or a
#: backup, short enough that a stuck lock holder is reported instead of hanging cron.
BUSY_TIMEOUT = 10.0

#: each entry moves the schema one version up; never edit one that has shipped
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE subscribers (
        id          INTEGER PRIMARY KEY,
        email       TEXT NOT NULL,
        email_key   TEXT NOT NULL UNIQUE,          -- lower-cased: duplicates merge
        name        TEXT NOT NULL DEFAULT '',
        fields      TEXT NOT NULL DEFAULT '{}',    -- extra merge fields, JSON object
        status      TEXT NOT NULL DEFAULT 'active'
                    CHECK (status IN ('active', 'unsubscribed', 'bounced')),
        created_at  TEXT NOT NULL,
        updated_at  TEXT NOT NULL
    );
    CREATE TABLE lists (
        id    INTEGER PRIMARY KEY,
        name  TEXT NOT NULL UNIQUE
    );
    CREATE TABLE memberships (
        list_id        INTEGER NOT NULL REFERENCES lists(id),
        subscriber_id  INTEGER NOT NULL REFERENCES subscribers(id),
        status         TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'unsubscribed')),
        created_at     TEXT NOT NULL,
        updated_at     TEXT NOT NULL,
        PRIMARY KEY (list_id, subscriber_id)
    );
    CREATE TABLE issues (
        id            INTEGER PRIMARY KEY,
        slug          TEXT NOT NULL UNIQUE,
        list_name     TEXT NOT NULL,
        subject       TEXT NOT NULL,
        content_hash  TEXT NOT NULL,
        created_at    TEXT NOT NULL,
        completed_at  TEXT
    );
    CREATE TABLE deliveries (
        issue_id         INTEGER NOT NULL REFERENCES issues(id),
        subscriber_id    INTEGER NOT NULL REFERENCES subscribers(id),
        status           TEXT NOT NULL DEFAULT 'pending'
                         CHECK (status IN ('pending', 'sending', 'sent', 'deferred', 'failed', 'uncertain')),
        attempts         INTEGER NOT NULL DEFAULT 0,
        next_attempt_at  REAL NOT NULL DEFAULT 0,     -- unix time
        last_code        INTEGER,
        last_text        TEXT,
        message_id       TEXT NOT NULL,
        created_at       TEXT NOT NULL,
        updated_at       TEXT NOT NULL,
        sent_at          TEXT,
        PRIMARY KEY (issue_id, subscriber_id)
    ) WITHOUT ROWID;
    CREATE INDEX deliveries_due ON deliveries (issue_id, status, next_attempt_at);
    """,
    # 2: the ledger learns who holds a row (runs, alive while they hold <db>.locks/run-<id>.lock),
    # when it was first tried, and 'skipped'.
    """
    CREATE TABLE runs (
        id            INTEGER PRIMARY KEY,
        pid           INTEGER NOT NULL,
        host          TEXT NOT NULL,
        started_at    TEXT NOT NULL,
        finished_at   TEXT
    );
    CREATE TABLE deliveries_v2 (
        issue_id          INTEGER NOT NULL REFERENCES issues(id),
        subscriber_id     INTEGER NOT NULL REFERENCES subscribers(id),
        status            TEXT NOT NULL DEFAULT 'pending'
                          CHECK (status IN ('pending', 'sending', 'sent', 'deferred', 'failed', 'uncertain',
                                            'skipped')),
        attempts          INTEGER NOT NULL DEFAULT 0,
        next_attempt_at   REAL NOT NULL DEFAULT 0,    -- unix time
        first_attempt_at  REAL,                       -- unix time; deferred rows give up after a maximum age
        last_code         INTEGER,
        last_text         TEXT,
        message_id        TEXT NOT NULL,
        run_id            INTEGER REFERENCES runs(id), -- the run that claimed or is sending it
        claim_until       REAL NOT NULL DEFAULT 0,     -- other runs leave a claimed row alone until then
        created_at        TEXT NOT NULL,
        updated_at        TEXT NOT NULL,
        sent_at           TEXT,
        PRIMARY KEY (issue_id, subscriber_id)
    ) WITHOUT ROWID;
    INSERT INTO deliveries_v2 (issue_id, subscriber_id, status, attempts, next_attempt_at, last_code, last_text,
                               message_id, created_at, updated_at, sent_at)
        SELECT issue_id, subscriber_id, status, attempts, next_attempt_at, last_code, last_text,
               message_id, created_at, updated_at, sent_at FROM deliveries;
    DROP TABLE deliveries;
    ALTER TABLE deliveries_v2 RENAME TO deliveries;
    -- The due indexes hold only the rows still to send: with every status in one index, each
    -- message would move its entry twice (pending -> sending -> sent); now it leaves once.
    CREATE INDEX deliveries_pending ON deliveries (issue_id, next_attempt_at) WHERE status = 'pending';
    CREATE INDEX deliveries_deferred ON deliveries (issue_id, next_attempt_at) WHERE status = 'deferred';
    CREATE INDEX deliveries_sent_at ON deliveries (sent_at) WHERE sent_at IS NOT NULL;
    ALTER TABLE issues ADD COLUMN list_id INTEGER REFERENCES lists(id);
    """,
)


@dataclass(frozen=True)
class Subscriber:
    """A subscriber as stored."""

    id: int
    email: str
    name: str
    fields: Mapping[str, str]
    status: str
    lists: tuple[str, ...] = ()


@dataclass(frozen=True)
class SubscriberRow:
    """One validated subscriber to upsert (from a CSV row or the command line)."""

    email: str
    name: str = ""
    fields: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class UpsertCounts:
    """What an import did."""

    added: int
    updated: int
    kept_out: int  # unsubscribed or bounced before: left as they were


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class Store:
    """The database: open with :meth:`open`, close with :meth:`close` (or use ``with``).

    Every SQLite error that comes out of a method is a :class:`StoreError` whose text is
    one line: the database's path, what is wrong (locked, full, read-only, damaged) and
    what to do about it.
    """

    def __init__(self, connection: sqlite3.Connection, path: Path, *, timeout: float = BUSY_TIMEOUT) -> None:
        self.connection = connection
        self.path = path
        self.timeout = timeout

    @classmethod
    def open(cls, path: str | Path, *, timeout: float | None = None) -> Store:
        """Open (creating if needed) and migrate the database at ``path``.

        ``timeout`` is how long to wait for another process's lock (default :data:`BUSY_TIMEOUT`).
        A file that isn't a newsletter database is refused and left exactly as it was.
        """
        location = Path(path)
        wait = BUSY_TIMEOUT if timeout is None else timeout
        connection: sqlite3.Connection | None = None
        try:
            if location.parent and not location.parent.exists():
                location.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so transactions are explicit.
            connection = sqlite3.connect(str(location), timeout=wait, isolation_level=None)
            connection.row_factory = sqlite3.Row
            # Look before touching: switching to WAL would rewrite the header of a file that
            # turns out to be some other program's database. One statement, one snapshot.
            version, tables = connection.execute(
                "SELECT (SELECT user_version FROM pragma_user_version),"
                " (SELECT group_concat(name, ', ') FROM (SELECT name FROM sqlite_master"
                "  WHERE name NOT LIKE 'sqlite_%' ORDER BY name LIMIT 3))"
            ).fetchone()
            if not version and tables:
                raise _foreign(location, tables)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA foreign_keys=ON")
            store = cls(connection, location, timeout=wait)
            store.migrate()
        except BaseException as exc:
            # Not left open: a failed open in a long-lived process would hold the file (and a
            # read-only or full mount) busy for good.
            if connection is not None:
                with suppress(sqlite3.Error):
                    connection.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise database_error(location, exc, timeout=wait) from exc
            if isinstance(exc, OSError):
                raise StoreError(f"{location}: can't create its folder: {exc.strerror or exc}") from exc
            raise
        return store

    def close(self) -> None:
        """Close the connection."""
        # Closing checkpoints the WAL into the database file; when that fails (a full disk)
        # nothing is lost, the WAL stays and the next open replays it.
        with suppress(sqlite3.Error):
            self.connection.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        """The migration the database is at."""
        return int(self.query("PRAGMA user_version")[0][0])

    def migrate(self) -> None:
        """Apply the migrations the database hasn't had yet, each in its own transaction.

        An SQLite file of some other program (tables, but no newsletter schema version)
        is refused rather than given newsletter's tables.
        """
        if self.schema_version == len(MIGRATIONS):
            return  # the usual case: no write lock needed just to open
        while True:
            with self.transaction() as cursor:
                # Read again under the write lock: another process may have migrated meanwhile.
                version = int(cursor.execute("PRAGMA user_version").fetchone()[0])
                if version > len(MIGRATIONS):
                    raise StoreError(f"{self.path}: schema version {version} is newer than this newsletter knows; "
                                     "upgrade newsletter")
                if version == len(MIGRATIONS):
                    return
                if version == 0:
                    tables = cursor.execute(
                        "SELECT group_concat(name, ', ') FROM (SELECT name FROM sqlite_master"
                        " WHERE name NOT LIKE 'sqlite_%' ORDER BY name LIMIT 3)").fetchone()[0]
                    if tables:
                        raise _foreign(self.path, tables)
                for statement in _statements(MIGRATIONS[version]):
                    cursor.execute(statement)
                cursor.execute(f"PRAGMA user_version = {version + 1}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any error; SQLite errors become StoreError."""
        cursor = self.connection.cursor()
        try:
            cursor.execute("BEGIN IMMEDIATE")
            yield cursor
            cursor.execute("COMMIT")
        except BaseException as exc:
            if self.connection.in_transaction:
                # A ROLLBACK that fails too (the file vanished, say) must not hide the first error;
                # SQLite rolls back a transaction its connection can't finish anyway.
                with suppress(sqlite3.Error):
                    self.connection.execute("ROLLBACK")
            if isinstance(exc, sqlite3.DatabaseError):
                raise database_error(self.path, exc, timeout=self.timeout) from exc
            raise
        finally:
            with suppress(sqlite3.Error):
                cursor.close()

    def query(self, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
        """The rows of one read-only statement; SQLite errors become StoreError."""
        try:
            return self.connection.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise database_error(self.path, exc, timeout=self.timeout) from exc

    # --- lists and subscribers -----------------------------------------------------

    def _list_id(self, cursor: sqlite3.Cursor, name: str) -> int:
        cursor.execute("INSERT OR IGNORE INTO lists (name) VALUES (?)", (name,))
        row = cursor.execute("SELECT id FROM lists WHERE name = ?", (name,)).fetchone()
        return int(row[0])

    def find_list(self, name: str) -> int | None:
        """The id of the list ``name``, or None when there is none."""
        rows = self.query("SELECT id FROM lists WHERE name = ?", (name,))
        return int(rows[0][0]) if rows else None

    def upsert_subscribers(self, rows: Sequence[SubscriberRow], *, list_name: str) -> UpsertCounts:
        """Add or update ``rows`` and put them on ``list_name``, all in one transaction.

        Addresses merge case-insensitively. Someone who unsubscribed (from the list or
        everywhere) or bounced keeps that status: an import never re-activates them.
        """
        added = updated = kept_out = 0
        now = _now()
        with self.transaction() as cursor:
            list_id = self._list_id(cursor, list_name)
            for row in rows:
                key = row.email.lower()
                existing = cursor.execute(
                    "SELECT id, status, fields FROM subscribers WHERE email_key = ?", (key,)
                ).fetchone()
                if existing is None:
                    cursor.execute(
                        "INSERT INTO subscribers (email, email_key, name, fields, created_at, updated_at)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (row.email, key, row.name, json.dumps(dict(row.fields), sort_keys=True), now, now),
                    )
                    subscriber_id = int(cursor.lastrowid or 0)
                    added += 1
                else:
                    subscriber_id = int(existing["id"])
                    merged = {**json.loads(existing["fields"]), **row.fields}
                    cursor.execute(
                        "UPDATE subscribers SET name = CASE WHEN ? <> '' THEN ? ELSE name END,"
                        " fields = ?, updated_at = ? WHERE id = ?",
                        (row.name, row.name, json.dumps(merged, sort_keys=True), now, subscriber_id),
                    )
                    updated += 1
                    membership = cursor.execute(
                        "SELECT status FROM memberships WHERE list_id = ? AND subscriber_id = ?",
                        (list_id, subscriber_id),
                    ).fetchone()
                    left_list = membership is not None and membership["status"] != "active"
                    if existing["status"] != "active" or left_list:
                        kept_out += 1
                # OR IGNORE: an existing membership keeps its status, unsubscribed included.
                cursor.execute(
                    "INSERT OR IGNORE INTO memberships (list_id, subscriber_id, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?)",
                    (list_id, subscriber_id, now, now),
                )
        return UpsertCounts(added, updated, kept_out)

    def unsubscribe(self, email: str, *, list_name: str | None = None) -> bool:
        """Unsubscribe ``email`` from ``list_name``, or from everything; False if unknown."""
        now = _now()
        with self.transaction() as cursor:
            row = cursor.execute("SELECT id FROM subscribers WHERE email_key = ?", (email.lower(),)).fetchone()
            if row is None:
                return False
            if list_name is None:
                cursor.execute(
                    "UPDATE subscribers SET status = 'unsubscribed', updated_at = ?"
                    " WHERE id = ? AND status = 'active'", (now, row["id"]),
                )
                return True
            result = cursor.execute(
                "UPDATE memberships SET status = 'unsubscribed', updated_at = ?"
                " WHERE subscriber_id = ? AND list_id = (SELECT id FROM lists WHERE name = ?)",
                (now, row["id"], list_name),
            )
            return result.rowcount > 0

    def mark_bounced(self, subscriber_id: int) -> None:
        """Never mail this subscriber again (a permanent unknown-user failure)."""
        with self.transaction() as cursor:
            cursor.execute(
                "UPDATE subscribers SET status = 'bounced', updated_at = ? WHERE id = ?", (_now(), subscriber_id)
            )

    def subscribers(self, *, list_name: str | None = None, status: str | None = None,
                    emails: Sequence[str] | None = None) -> list[Subscriber]:
        """Subscribers, optionally only those on ``list_name`` (active there), of ``status``, or with ``emails``."""
        query = (
            "SELECT s.id, s.email, s.name, s.fields, s.status,"
            " (SELECT group_concat(l.name, ',') FROM memberships m JOIN lists l ON l.id = m.list_id"
            "  WHERE m.subscriber_id = s.id AND m.status = 'active') AS lists"
            " FROM subscribers s"
        )
        where: list[str] = []
        params: list[str] = []
        if list_name is not None:
            where.append(
                "EXISTS (SELECT 1 FROM memberships m JOIN lists l ON l.id = m.list_id"
                " WHERE m.subscriber_id = s.id AND l.name = ? AND m.status = 'active')"
            )
            params.append(list_name)
        if status is not None:
            where.append("s.status = ?")
            params.append(status)
        if emails is not None:
            keys = sorted({email.lower() for email in emails})
            where.append(f"s.email_key IN ({','.join('?' * len(keys))})" if keys else "0")
            params.extend(keys)
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY s.id"
        rows = self.query(query, params)
        return [
            Subscriber(
                int(row["id"]), row["email"], row["name"], json.loads(row["fields"]), row["status"],
                tuple(sorted((row["lists"] or "").split(","))) if row["lists"] else (),
            )
            for row in rows
        ]

    def count(self, *, list_name: str | None = None) -> dict[str, int]:
        """How many subscribers there are per status (on ``list_name`` if given)."""
        counts = {"active": 0, "unsubscribed": 0, "bounced": 0}
        if list_name is None:
            rows = self.query("SELECT status, count(*) FROM subscribers GROUP BY status")
        else:
            rows = self.query(
                "SELECT CASE WHEN s.status = 'active' AND m.status = 'unsubscribed' THEN 'unsubscribed'"
                " ELSE s.status END AS state, count(*)"
                " FROM memberships m JOIN lists l ON l.id = m.list_id JOIN subscribers s ON s.id = m.subscriber_id"
                " WHERE l.name = ? GROUP BY state",
                (list_name,),
            )
        for state, number in rows:
            counts[str(state)] = int(number)
        return counts


def _statements(script: str) -> list[str]:
    """The SQL statements of ``script`` (``executescript`` would commit our transaction)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        # complete_statement knows about quotes and comments, unlike a split on ";".
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements


def database_error(path: Path, exc: sqlite3.DatabaseError, *, timeout: float = BUSY_TIMEOUT) -> StoreError:
    """The StoreError for ``exc`` on the database at ``path``: one line, what is wrong and what to do."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None  # extended codes keep the primary in the low byte
    text = " ".join(str(exc).split())
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "database is locked" in text:
        what = (f"the database is locked by another process (waited {timeout:g} s for it); "
                "run again once that process is done")
    elif primary == sqlite3.SQLITE_FULL or "disk is full" in text or (
            primary in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN) and _no_space(path)):
        # A full disk can also fail the WAL index (-shm) as an I/O error: the same fault, the same fix.
        what = ("database or disk is full; the change that failed was not written: "
                f"free some space on {path.parent} and run again")
    elif primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or "malformed" in text \
            or "not a database" in text:
        what = (f"the file is damaged or not a database ({text}); it was left as it is: "
                "restore it from a backup, or point [database] path at another file")
    elif primary in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_PERM):
        what = f"{text}: {_diagnose(path)}"
    else:
        what = text
    return StoreError(f"{path}: {what}")


def _no_space(path: Path) -> bool:
    try:
        return os.statvfs(path.parent).f_bavail == 0
    except OSError:
        return False


def _diagnose(path: Path) -> str:
    """Why SQLite can't open or write ``path``, as far as the file system tells (for root too)."""
    folder = path.parent
    try:
        stats = os.statvfs(folder)
        # The file may be a mount of its own (a read-only bind mount).
        own = os.statvfs(path) if path.exists() else stats
    except OSError as exc:
        return f"its folder {folder} can't be used ({exc.strerror or exc})"
    # Permission bits don't stop root, so ask the file system itself first.
    if own.f_flag & os.ST_RDONLY:
        return "the file is on a read-only mount; the database needs it writable"
    if stats.f_flag & os.ST_RDONLY:
        return (f"its folder {folder} is on a read-only mount; the database needs it writable "
                f"(SQLite creates {path.name}-wal and {path.name}-shm beside it)")
    if not os.access(folder, os.W_OK | os.X_OK):
        return (f"its folder {folder} is not writable (SQLite creates {path.name}-wal and "
                f"{path.name}-shm beside it): make it writable")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return "the file is not readable and writable: fix its permissions"
    return "check that the file and its folder are readable and writable"


def _foreign(path: Path, tables: str) -> StoreError:
    return StoreError(f"{path}: an SQLite database, but not newsletter's (tables {tables} and no schema version); "
                      "left as it was: point [database] path at another file")
