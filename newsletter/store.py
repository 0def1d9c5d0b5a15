"""The store: schema and migrations, subscribers, lists and memberships.

SQLite by default (one file, WAL mode, versioned migrations in ``PRAGMA user_version``),
or PostgreSQL when the location is a ``postgresql://`` URL (:mod:`newsletter.postgres`:
the same migrations in its types, the version in a ``schema_version`` table), so that
several dispatch processes on several machines can share one ledger. The SQL is written
once; every write that belongs together happens in one transaction, so a failure leaves
nothing half-written.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from newsletter.errors import StoreError

if TYPE_CHECKING:
    from newsletter.postgres import PgConnection

__all__ = [
    "BUSY_TIMEOUT",
    "Cursor",
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
    # 3: [smtp] rate is shared by every process on the database: each reserves its sending slots here.
    """
    CREATE TABLE throttle (
        name     TEXT PRIMARY KEY,
        next_at  REAL NOT NULL DEFAULT 0    -- unix time of the first slot nobody has reserved
    );
    INSERT INTO throttle (name, next_at) VALUES ('send', 0);
    """,
    # 4: the issue file as it was sent, for the web archive (the file may change or go later).
    """
    ALTER TABLE issues ADD COLUMN source_text TEXT;
    """,
)


class Cursor(Protocol):
    """What the store's transactions hand out: an :class:`sqlite3.Cursor`, or its PostgreSQL twin."""

    @property
    def rowcount(self) -> int:
        """Rows the last statement changed."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any:
        """Run one statement."""

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any:
        """Run one statement per parameter tuple."""

    def fetchone(self) -> Any:
        """The next row, or None."""

    def fetchall(self) -> list[Any]:
        """The remaining rows."""

    def close(self) -> None:
        """Close it."""


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

    def __init__(self, connection: sqlite3.Connection | PgConnection, path: Path, *,
                 timeout: float = BUSY_TIMEOUT, url: str = "") -> None:
        self.connection = connection
        self.path = path
        self.timeout = timeout
        #: the PostgreSQL URL, or "" for an SQLite file
        self.url = url
        self.postgres = bool(url)
        #: how messages name the database: the file, or the URL without its password
        self.label = str(path)

    @classmethod
    def open(cls, path: str | Path, *, timeout: float | None = None) -> Store:
        """Open (creating if needed) and migrate the database at ``path`` (a file, or a postgresql:// URL).

        ``timeout`` is how long to wait for another process's lock (default :data:`BUSY_TIMEOUT`).
        A file that isn't a newsletter database is refused and left exactly as it was.
        """
        wait = BUSY_TIMEOUT if timeout is None else timeout
        if isinstance(path, str) and path.startswith(("postgresql://", "postgres://")):
            return cls._open_postgres(path, wait)
        location = Path(path)
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

    @classmethod
    def _open_postgres(cls, url: str, wait: float) -> Store:
        from newsletter import postgres

        label = postgres.redacted(url)
        try:
            connection = postgres.connect(url, timeout=wait)
        except Exception as exc:  # psycopg.Error, or a malformed URL
            raise StoreError(f"{label}: can't connect: {_first_line(exc)}") from exc
        store = cls(connection, Path("postgresql"), timeout=wait, url=url)
        store.label = label
        try:
            store.migrate()
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        """Close the connection."""
        # Closing checkpoints the WAL into the database file; when that fails (a full disk)
        # nothing is lost, the WAL stays and the next open replays it.
        with suppress(Exception):
            self.connection.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        """The migration the database is at."""
        if self.postgres:
            if not self.query("SELECT to_regclass('schema_version') IS NOT NULL")[0][0]:
                return 0
            rows = self.query("SELECT version FROM schema_version")
            return int(rows[0][0]) if rows else 0
        return int(self.query("PRAGMA user_version")[0][0])

    def migrate(self) -> None:
        """Apply the migrations the database hasn't had yet, each in its own transaction.

        A database of some other program (tables, but no newsletter schema version)
        is refused rather than given newsletter's tables.
        """
        migrations = self._migrations()
        if self.schema_version == len(migrations):
            return  # the usual case: no write lock needed just to open
        while True:
            with self.transaction() as cursor:
                # Read again under the write lock: another process may have migrated meanwhile.
                version = self._locked_version(cursor)
                if version > len(migrations):
                    raise StoreError(f"{self.label}: schema version {version} is newer than this newsletter knows; "
                                     "upgrade newsletter")
                if version == len(migrations):
                    return
                if version == 0:
                    tables = self._other_tables(cursor)
                    if tables:
                        raise _foreign(self.label, tables)
                for statement in _statements(migrations[version]):
                    cursor.execute(statement)
                if self.postgres:
                    cursor.execute("DELETE FROM schema_version")
                    cursor.execute("INSERT INTO schema_version (version) VALUES (?)", (version + 1,))
                else:
                    cursor.execute(f"PRAGMA user_version = {version + 1}")

    def _migrations(self) -> tuple[str, ...]:
        if self.postgres:
            from newsletter.postgres import MIGRATIONS as PG_MIGRATIONS

            return PG_MIGRATIONS
        return MIGRATIONS

    def _locked_version(self, cursor: Cursor) -> int:
        if not self.postgres:
            return int(cursor.execute("PRAGMA user_version").fetchone()[0])
        # One migrating process at a time (released at COMMIT); the others wait, then find it done.
        cursor.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
        cursor.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = cursor.execute("SELECT version FROM schema_version").fetchone()
        return int(row[0]) if row else 0

    def _other_tables(self, cursor: Cursor) -> str:
        if self.postgres:
            row = cursor.execute(
                "SELECT string_agg(name, ', ') FROM (SELECT table_name AS name FROM information_schema.tables"
                " WHERE table_schema = current_schema() AND table_name <> 'schema_version'"
                " ORDER BY table_name LIMIT 3) t"
            ).fetchone()
        else:
            row = cursor.execute(
                "SELECT group_concat(name, ', ') FROM (SELECT name FROM sqlite_master"
                " WHERE name NOT LIKE 'sqlite_%' ORDER BY name LIMIT 3)").fetchone()
        return str(row[0] or "") if row else ""

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        """``BEGIN`` (SQLite: ``BEGIN IMMEDIATE``) … ``COMMIT``, rolled back on any error.

        Database errors become StoreError.
        """
        cursor = self.connection.cursor()
        try:
            cursor.execute("BEGIN" if self.postgres else "BEGIN IMMEDIATE")
            yield cursor
            cursor.execute("COMMIT")
        except BaseException as exc:
            if self.connection.in_transaction:
                # A ROLLBACK that fails too (the file vanished, say) must not hide the first error;
                # SQLite rolls back a transaction its connection can't finish anyway.
                with suppress(Exception):
                    self.connection.execute("ROLLBACK")
            error = self._error(exc)
            if error is not None:
                raise error from exc
            raise
        finally:
            with suppress(Exception):
                cursor.close()

    def query(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        """The rows of one read-only statement; database errors become StoreError."""
        try:
            return self.connection.execute(sql, params).fetchall()
        except Exception as exc:
            error = self._error(exc)
            if error is not None:
                raise error from exc
            raise

    def serialize(self, cursor: Cursor, key: int) -> None:
        """Make transactions that call this with the same ``key`` run one at a time (until COMMIT).

        SQLite's ``BEGIN IMMEDIATE`` already lets one writer in at a time; PostgreSQL's
        transactions run side by side, so a read-then-write that must not interleave (two
        workers opening the same issue) takes a transaction advisory lock.
        """
        if self.postgres:
            cursor.execute("SELECT pg_advisory_xact_lock(?)", (key,))

    def _error(self, exc: BaseException) -> StoreError | None:
        """The StoreError for a database exception (None for anything else)."""
        if isinstance(exc, sqlite3.DatabaseError):
            return database_error(self.path, exc, timeout=self.timeout)
        if self.postgres:
            import psycopg

            if isinstance(exc, psycopg.Error):
                return _postgres_error(self.label, exc, timeout=self.timeout)
        return None

    # --- lists and subscribers -----------------------------------------------------

    def _list_id(self, cursor: Cursor, name: str) -> int:
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
            # Read what exists for the whole batch, decide in memory, write with a few
            # executemany calls: on PostgreSQL each statement is a round trip, and an import
            # of 100,000 rows one statement at a time took minutes.
            keys = list(dict.fromkeys(row.email.lower() for row in rows))
            people: dict[str, _Person] = {}
            for chunk in _chunks(keys, 500):
                for found in cursor.execute(
                    f"SELECT id, email, email_key, name, status, fields FROM subscribers"
                    f" WHERE email_key IN ({','.join('?' * len(chunk))})", chunk,
                ).fetchall():
                    people[found["email_key"]] = _Person(int(found["id"]), found["email"], found["name"],
                                                         found["status"], json.loads(found["fields"]))
            on_list: dict[int, str] = {}
            known_ids = [person.id for person in people.values() if person.id is not None]
            for id_chunk in _chunks(known_ids, 500):
                for found in cursor.execute(
                    f"SELECT subscriber_id, status FROM memberships WHERE list_id = ?"
                    f" AND subscriber_id IN ({','.join('?' * len(id_chunk))})", (list_id, *id_chunk),
                ).fetchall():
                    on_list[int(found["subscriber_id"])] = found["status"]
            joined: set[str] = set()  # keys with a membership row by the end of this batch
            for row in rows:
                key = row.email.lower()
                person = people.get(key)
                if person is None:
                    people[key] = _Person(None, row.email, row.name, "active", dict(row.fields), changed=True)
                    added += 1
                else:
                    person.fields = {**person.fields, **row.fields}
                    if row.name:
                        person.name = row.name
                    person.changed = True
                    updated += 1
                    left_list = person.id is not None and on_list.get(person.id, "active") != "active"
                    if person.status != "active" or left_list:
                        kept_out += 1
                joined.add(key)
            new = [(key, person) for key, person in people.items() if person.id is None]
            new_keys = {key for key, _ in new}
            cursor.executemany(
                "INSERT INTO subscribers (email, email_key, name, fields, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(person.email, key, person.name, json.dumps(person.fields, sort_keys=True), now, now)
                 for key, person in new],
            )
            for chunk in _chunks([key for key, _ in new], 500):
                for found in cursor.execute(
                    f"SELECT id, email_key FROM subscribers WHERE email_key IN ({','.join('?' * len(chunk))})", chunk,
                ).fetchall():
                    people[found["email_key"]].id = int(found["id"])
            cursor.executemany(
                "UPDATE subscribers SET name = ?, fields = ?, updated_at = ? WHERE id = ?",
                [(person.name, json.dumps(person.fields, sort_keys=True), now, person.id)
                 for key, person in people.items() if person.changed and key not in new_keys],
            )
            # OR IGNORE: an existing membership keeps its status, unsubscribed included.
            cursor.executemany(
                "INSERT OR IGNORE INTO memberships (list_id, subscriber_id, created_at, updated_at)"
                " VALUES (?, ?, ?, ?)",
                [(list_id, people[key].id, now, now) for key in joined],
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
            return bool(result.rowcount > 0)

    def membership(self, subscriber_id: int, list_id: int) -> tuple[str, str, bool] | None:
        """(address, list name, whether they get it now) of one membership, or None when there is none."""
        rows = self.query(
            "SELECT s.email, l.name, m.status, s.status AS person FROM memberships m"
            " JOIN subscribers s ON s.id = m.subscriber_id JOIN lists l ON l.id = m.list_id"
            " WHERE m.subscriber_id = ? AND m.list_id = ?",
            (subscriber_id, list_id),
        )
        if not rows:
            return None
        row = rows[0]
        return str(row["email"]), str(row["name"]), row["status"] == "active" and row["person"] == "active"

    def leave_list(self, subscriber_id: int, list_id: int) -> bool:
        """End one membership (an unsubscribe link); True when it was active until now."""
        with self.transaction() as cursor:
            changed = cursor.execute(
                "UPDATE memberships SET status = 'unsubscribed', updated_at = ?"
                " WHERE subscriber_id = ? AND list_id = ? AND status = 'active'",
                (_now(), subscriber_id, list_id),
            ).rowcount
        return bool(changed > 0)

    def rejoin_list(self, subscriber_id: int, list_id: int) -> bool:
        """Put one membership back (the re-subscribe button); True when something changed.

        Someone who left every list and now asks to come back to this one is active again;
        an address that bounced is not, since mail to it can't arrive.
        """
        now = _now()
        with self.transaction() as cursor:
            person = cursor.execute(
                "UPDATE subscribers SET status = 'active', updated_at = ? WHERE id = ? AND status = 'unsubscribed'",
                (now, subscriber_id),
            ).rowcount
            joined = cursor.execute(
                "UPDATE memberships SET status = 'active', updated_at = ?"
                " WHERE subscriber_id = ? AND list_id = ? AND status = 'unsubscribed'",
                (now, subscriber_id, list_id),
            ).rowcount
        return bool(person + joined > 0)

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
            where.append(f"s.email_key IN ({','.join('?' * len(keys))})" if keys else "1 = 0")
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


@dataclass
class _Person:
    """A subscriber while an import decides about it."""

    id: int | None
    email: str
    name: str
    status: str
    fields: dict[str, str]
    changed: bool = False


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _foreign(path: Path | str, tables: str) -> StoreError:
    return StoreError(f"{path}: a database, but not newsletter's (tables {tables} and no schema version); "
                      "left as it was: point [database] at another one")


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


#: the advisory lock key that serializes migrations on PostgreSQL
_MIGRATION_LOCK = 0x6E6C_6D69  # "nlmi"


def _postgres_error(label: str, exc: BaseException, *, timeout: float) -> StoreError:
    """The StoreError for a psycopg error: one line, what is wrong and what to do."""
    import psycopg.errors

    text = _first_line(exc)
    if isinstance(exc, psycopg.errors.LockNotAvailable | psycopg.errors.QueryCanceled):
        what = f"a lock another process holds wasn't released in {timeout:g} s; run again once it is done"
    elif isinstance(exc, psycopg.errors.DiskFull):
        what = f"the database server is out of disk space ({text}); nothing of the failed change was written"
    elif isinstance(exc, psycopg.OperationalError):
        what = f"the connection to the database failed ({text}); nothing of the failed change was written"
    else:
        what = text
    return StoreError(f"{label}: {what}")
