"""The store: schema and migrations, subscribers, lists and memberships.

SQLite by default (one file, WAL mode, versioned migrations in ``PRAGMA user_version``),
or PostgreSQL when the location is a ``postgresql://`` URL (:mod:`newsletter.store.postgres`:
the same migrations in its types, the version in a ``schema_version`` table), so that
several dispatch processes on several machines can share one ledger. The SQL is written
once; every write that belongs together happens in one transaction, so a failure leaves
nothing half-written.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

from newsletter.errors import StoreError

if TYPE_CHECKING:
    from newsletter.store.postgres import PgConnection

__all__ = [
    "BUSY_TIMEOUT",
    "Cursor",
    "IMPORT_CHUNK",
    "MIGRATIONS",
    "MembershipState",
    "Rejoined",
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

#: rows an import reads, decides about and writes at a time: its memory stays flat whatever the file's size
IMPORT_CHUNK = 2000

#: what :meth:`Store.rejoin` did
Rejoined = Literal["rejoined", "unchanged", "suppressed", "unknown"]

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
    # 5: memberships by subscriber. The primary key (list_id, subscriber_id) serves lookups by
    # list only (SQLite uses a composite key from its first column): without this index every
    # "this subscriber's lists" subquery of export and list scanned all memberships, per row.
    # And a removal from everything ends every membership (see Store.unsubscribe): removals
    # made before, which only set the subscriber's status, get their memberships ended too.
    """
    CREATE INDEX memberships_subscriber ON memberships (subscriber_id, status, list_id);
    UPDATE memberships SET status = 'unsubscribed', updated_at = strftime('%Y-%m-%dT%H:%M:%S+00:00', 'now')
        WHERE status = 'active' AND subscriber_id IN (SELECT id FROM subscribers WHERE status = 'unsubscribed');
    """,
    # 6: when each issue's first message was marked sent, written by the ledger at that moment:
    # the archive reads one row per issue instead of grouping every delivery for each request.
    """
    ALTER TABLE issues ADD COLUMN first_sent_at TEXT;
    UPDATE issues SET first_sent_at = (SELECT min(d.sent_at) FROM deliveries d
                                       WHERE d.issue_id = issues.id AND d.status = 'sent');
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
class MembershipState:
    """One membership as stored: the address, the list, its status and the subscriber's."""

    email: str
    list_name: str
    status: str  # 'active' | 'unsubscribed'
    person: str  # 'active' | 'unsubscribed' | 'bounced'

    @property
    def receives(self) -> bool:
        """Whether they get this list now."""
        return self.status == "active" and self.person == "active"

    @property
    def suppressed(self) -> bool:
        """Whether the address is kept from every list (it bounced): re-subscribing can't bring it back."""
        return self.person not in ("active", "unsubscribed")


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
        from newsletter.store import postgres

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
            from newsletter.store.postgres import MIGRATIONS as PG_MIGRATIONS

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

    def upsert_subscribers(self, rows: Iterable[SubscriberRow], *, list_name: str) -> UpsertCounts:
        """Add or update ``rows`` and put them on ``list_name``, all in one transaction.

        Addresses merge case-insensitively (the same address twice merges like two imports).
        Someone who unsubscribed (from the list or everywhere) or bounced keeps that status: an
        import never re-activates them, and a list it adds them to counts them as left.
        ``rows`` is read :data:`IMPORT_CHUNK` at a time, so an iterator of any length (a
        million rows of ``subscribers import``) takes the same memory as a few thousand.
        """
        added = updated = kept_out = 0
        now = _now()
        with self.transaction() as cursor:
            if self.postgres:
                # Each chunk looks up a few thousand keys in tables of any size, which only index
                # lookups do in time proportional to the chunk. Statistics taken while the tables
                # were small (or mid-import) made the planner scan whole tables per chunk instead:
                # an import quadratic in the table's size. These settings end with the transaction.
                for setting in _INDEX_LOOKUPS_ONLY:
                    cursor.execute(f"SET LOCAL {setting} = off")
            list_id = self._list_id(cursor, list_name)
            pending = iter(rows)
            while chunk := list(itertools.islice(pending, IMPORT_CHUNK)):
                counts = self._merge(cursor, list_id, chunk, now)
                added, updated, kept_out = added + counts.added, updated + counts.updated, kept_out + counts.kept_out
        return UpsertCounts(added, updated, kept_out)

    def _merge(self, cursor: Cursor, list_id: int, rows: Sequence[SubscriberRow], now: str) -> UpsertCounts:
        """One chunk of an import: read what exists for it, decide in memory, write with a few statements.

        Each statement covers the whole chunk: on PostgreSQL a statement is a round trip
        (array parameters, ``unnest``), on SQLite an ``executemany``; one statement per row
        took minutes for 100,000 rows.
        """
        added = updated = kept_out = 0
        keys = list(dict.fromkeys(row.email.lower() for row in rows))
        people: dict[str, _Person] = {}
        for sql, params in self._lookups(_EXISTING, keys):
            for found in cursor.execute(sql, params).fetchall():
                people[found["email_key"]] = _Person(int(found["id"]), found["email"], found["name"],
                                                     found["status"], json.loads(found["fields"]))
        on_list: dict[int, str] = {}
        known_ids = [person.id for person in people.values() if person.id is not None]
        for sql, params in self._lookups(_ON_LIST, known_ids, list_id):
            for found in cursor.execute(sql, params).fetchall():
                on_list[int(found["subscriber_id"])] = found["status"]
        joined: set[str] = set()  # keys with a membership row by the end of this chunk
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
        changed = [person for person in people.values() if person.changed and person.id is not None]
        self._insert_people(cursor, new, now)
        self._update_people(cursor, changed, now)
        # OR IGNORE: an existing membership keeps its status, unsubscribed included. Someone
        # removed from everything (or bounced) joins a new list as having left it: a later
        # "subscribe again" on one list's page must not wake up lists an import added meanwhile.
        members = [(people[key].id, "active" if people[key].status == "active" else "unsubscribed") for key in joined]
        if self.postgres:
            cursor.execute(
                "INSERT INTO memberships (list_id, subscriber_id, status, created_at, updated_at)"
                " SELECT ?, u.id, u.status, ?, ? FROM unnest(?::bigint[], ?::text[]) AS u(id, status)"
                " ON CONFLICT DO NOTHING",
                (list_id, now, now, [member[0] for member in members], [member[1] for member in members]),
            )
        else:
            cursor.executemany(
                "INSERT OR IGNORE INTO memberships (list_id, subscriber_id, status, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?)",
                [(list_id, person_id, status, now, now) for person_id, status in members],
            )
        return UpsertCounts(added, updated, kept_out)

    def _lookups(self, lookup: _Lookup, values: Sequence[Any], *extra: object) -> Iterator[tuple[str, Sequence[Any]]]:
        """The statements that run ``lookup`` for ``values``: one with an array parameter on PostgreSQL,
        one per 500 values on SQLite (``IN (…)`` filled in with placeholders)."""
        if not values:
            return
        if self.postgres:
            yield lookup.postgres, (list(values), *extra)
            return
        for chunk in _chunks(values, 500):
            yield lookup.sqlite.replace("IN (…)", f"IN ({','.join('?' * len(chunk))})"), (*extra, *chunk)

    def _insert_people(self, cursor: Cursor, new: Sequence[tuple[str, _Person]], now: str) -> None:
        """Insert the new subscribers of a chunk, in order, and learn their ids."""
        if not new:
            return
        if self.postgres:
            rows = cursor.execute(
                "INSERT INTO subscribers (email, email_key, name, fields, created_at, updated_at)"
                " SELECT u.email, u.key, u.name, u.fields, ?, ? FROM unnest(?::text[], ?::text[], ?::text[], ?::text[])"
                " WITH ORDINALITY AS u(email, key, name, fields, n) ORDER BY u.n RETURNING id, email_key",
                (now, now, [person.email for _, person in new], [key for key, _ in new],
                 [person.name for _, person in new], [_fields_json(person.fields) for _, person in new]),
            ).fetchall()
        else:
            cursor.executemany(
                "INSERT INTO subscribers (email, email_key, name, fields, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(person.email, key, person.name, _fields_json(person.fields), now, now) for key, person in new],
            )
            rows = [found for sql, params in self._lookups(_NEW_IDS, [key for key, _ in new])
                    for found in cursor.execute(sql, params).fetchall()]
        people = dict(new)
        for found in rows:
            people[found["email_key"]].id = int(found["id"])

    def _update_people(self, cursor: Cursor, changed: Sequence[_Person], now: str) -> None:
        """Write the names and merge fields of a chunk's subscribers that were there before."""
        if not changed:
            return
        if self.postgres:
            cursor.execute(
                _UPDATE_PEOPLE_PG,
                (now, [person.id for person in changed], [person.name for person in changed],
                 [_fields_json(person.fields) for person in changed]),
            )
        else:
            cursor.executemany(
                "UPDATE subscribers SET name = ?, fields = ?, updated_at = ? WHERE id = ?",
                [(person.name, _fields_json(person.fields), now, person.id) for person in changed],
            )

    def unsubscribe(self, email: str, *, list_name: str | None = None) -> bool:
        """Unsubscribe ``email`` from ``list_name``, or from everything; False if unknown.

        From everything: every membership ends and the subscriber is ``unsubscribed``, so
        that no import or ``subscribers add`` puts them on a list again. Only their own
        "subscribe again" on one list's page brings back that one list (:meth:`rejoin`).
        """
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
                cursor.execute(
                    "UPDATE memberships SET status = 'unsubscribed', updated_at = ?"
                    " WHERE subscriber_id = ? AND status = 'active'", (now, row["id"]),
                )
                return True
            result = cursor.execute(
                "UPDATE memberships SET status = 'unsubscribed', updated_at = ?"
                " WHERE subscriber_id = ? AND list_id = (SELECT id FROM lists WHERE name = ?)",
                (now, row["id"], list_name),
            )
            return bool(result.rowcount > 0)

    def membership_state(self, subscriber_id: int, list_id: int) -> MembershipState | None:
        """One membership as stored (address, list, its status, the subscriber's status), or None."""
        rows = self.query(
            "SELECT s.email, l.name, m.status, s.status AS person FROM memberships m"
            " JOIN subscribers s ON s.id = m.subscriber_id JOIN lists l ON l.id = m.list_id"
            " WHERE m.subscriber_id = ? AND m.list_id = ?",
            (subscriber_id, list_id),
        )
        if not rows:
            return None
        row = rows[0]
        return MembershipState(str(row["email"]), str(row["name"]), str(row["status"]), str(row["person"]))

    def membership(self, subscriber_id: int, list_id: int) -> tuple[str, str, bool] | None:
        """(address, list name, whether they get it now) of one membership, or None when there is none."""
        state = self.membership_state(subscriber_id, list_id)
        return None if state is None else (state.email, state.list_name, state.receives)

    def leave_list(self, subscriber_id: int, list_id: int) -> bool:
        """End one membership (an unsubscribe link); True when it was active until now."""
        with self.transaction() as cursor:
            changed = cursor.execute(
                "UPDATE memberships SET status = 'unsubscribed', updated_at = ?"
                " WHERE subscriber_id = ? AND list_id = ? AND status = 'active'",
                (_now(), subscriber_id, list_id),
            ).rowcount
        return bool(changed > 0)

    def rejoin(self, subscriber_id: int, list_id: int) -> Rejoined:
        """Put exactly one membership back (the re-subscribe button); what happened.

        ``"rejoined"``: they get this list again, and only it: someone who had been removed
        from everything is active again with this one list, their other lists stay ended.
        ``"unchanged"``: they were on it already. ``"suppressed"``: the address bounced, so
        nothing changes (mail to it can't arrive; only an operator can look into that).
        ``"unknown"``: there is no such membership.
        """
        now = _now()
        with self.transaction() as cursor:
            row = cursor.execute(
                "SELECT m.status, s.status AS person FROM memberships m JOIN subscribers s ON s.id = m.subscriber_id"
                " WHERE m.subscriber_id = ? AND m.list_id = ?",
                (subscriber_id, list_id),
            ).fetchone()
            if row is None:
                return "unknown"
            if row["person"] not in ("active", "unsubscribed"):
                return "suppressed"
            if row["person"] == "active" and row["status"] == "active":
                return "unchanged"
            cursor.execute(
                "UPDATE subscribers SET status = 'active', updated_at = ? WHERE id = ? AND status = 'unsubscribed'",
                (now, subscriber_id),
            )
            cursor.execute(
                "UPDATE memberships SET status = 'active', updated_at = ?"
                " WHERE subscriber_id = ? AND list_id = ? AND status = 'unsubscribed'",
                (now, subscriber_id, list_id),
            )
        return "rejoined"

    def rejoin_list(self, subscriber_id: int, list_id: int) -> bool:
        """:meth:`rejoin`, True when it brought the membership back."""
        return self.rejoin(subscriber_id, list_id) == "rejoined"

    def mark_bounced(self, subscriber_id: int) -> None:
        """Never mail this subscriber again (a permanent unknown-user failure)."""
        with self.transaction() as cursor:
            cursor.execute(
                "UPDATE subscribers SET status = 'bounced', updated_at = ? WHERE id = ?", (_now(), subscriber_id)
            )

    # --- reading many rows ------------------------------------------------------------

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """One consistent view of the database for the reads inside (an export's header and its rows).

        SQLite: a read transaction (WAL: writers carry on meanwhile); PostgreSQL: a
        read-only ``REPEATABLE READ`` one, which streaming needs too. Nested: the outer one counts.
        """
        if self.connection.in_transaction:
            yield
            return
        self._execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY" if self.postgres else "BEGIN")
        try:
            yield
        except BaseException:
            if self.connection.in_transaction:
                with suppress(Exception):
                    self.connection.execute("ROLLBACK")
            raise
        self._execute("COMMIT")

    def _execute(self, sql: str) -> None:
        try:
            self.connection.execute(sql)
        except Exception as exc:
            error = self._error(exc)
            if error is not None:
                raise error from exc
            raise

    def stream(self, sql: str, params: Sequence[object] = (), *, size: int = 2000) -> Iterator[Any]:
        """The rows of one read-only statement as they come: memory holds ``size`` of them, whatever the total.

        SQLite steps its cursor; PostgreSQL reads a server-side cursor ``size`` rows a
        round trip (inside :meth:`snapshot`, which this opens when none is). Database
        errors become StoreError.
        """
        with self.snapshot():
            try:
                connection = self.connection
                if isinstance(connection, sqlite3.Connection):
                    yield from connection.execute(sql, params)
                else:
                    yield from connection.stream(sql, params, size=size)
            except Exception as exc:
                error = self._error(exc)
                if error is not None:
                    raise error from exc
                raise

    def subscriber_select(self, *, list_id: int | None = None, status: str | None = None,
                          emails: Sequence[str] | None = None) -> tuple[str, list[object]]:
        """The statement (and its parameters) that :meth:`iter_subscribers` runs.

        Linear in the subscribers: each one's lists come from ``memberships_subscriber``
        (an index search, not a scan of every membership per row), the list filter from
        the primary key (list_id, subscriber_id).
        """
        query = (
            "SELECT s.id, s.email, s.name, s.fields, s.status,"
            " (SELECT group_concat(l.name, ',') FROM memberships m JOIN lists l ON l.id = m.list_id"
            "  WHERE m.subscriber_id = s.id AND m.status = 'active') AS lists"
            " FROM subscribers s"
        )
        where, params = self._subscriber_filter(list_id=list_id, status=status, emails=emails)
        return query + where + " ORDER BY s.id", params

    def _subscriber_filter(self, *, list_id: int | None, status: str | None,
                           emails: Sequence[str] | None) -> tuple[str, list[object]]:
        where: list[str] = []
        params: list[object] = []
        if list_id is not None:
            where.append("EXISTS (SELECT 1 FROM memberships m WHERE m.list_id = ? AND m.subscriber_id = s.id"
                         " AND m.status = 'active')")
            params.append(list_id)
        if status is not None:
            where.append("s.status = ?")
            params.append(status)
        if emails is not None:
            keys = sorted({email.lower() for email in emails})
            where.append(f"s.email_key IN ({','.join('?' * len(keys))})" if keys else "1 = 0")
            params.extend(keys)
        return (" WHERE " + " AND ".join(where) if where else ""), params

    def field_names_select(self, *, list_id: int | None = None, status: str | None = None) -> tuple[str, list[object]]:
        """The statement (and its parameters) that :meth:`field_names` runs: every merge field's name, once."""
        where, params = self._subscriber_filter(list_id=list_id, status=status, emails=None)
        where = (where + " AND " if where else " WHERE ") + "s.fields <> '{}'"
        keys = "jsonb_object_keys(s.fields::jsonb) AS k(key)" if self.postgres else "json_each(s.fields) AS k"
        return f"SELECT DISTINCT k.key FROM subscribers s, {keys}{where}", params

    def _list_filter(self, list_name: str | None) -> int | None:
        """The id of ``list_name`` (None: no filter); -1, which matches nothing, for a list that doesn't exist."""
        if list_name is None:
            return None
        found = self.find_list(list_name)
        return -1 if found is None else found

    def field_names(self, *, list_name: str | None = None, status: str | None = None) -> list[str]:
        """The merge fields the subscribers :meth:`iter_subscribers` yields have, sorted (an export's columns)."""
        sql, params = self.field_names_select(list_id=self._list_filter(list_name), status=status)
        return sorted(str(row[0]) for row in self.stream(sql, params))

    def iter_subscribers(self, *, list_name: str | None = None, status: str | None = None,
                         emails: Sequence[str] | None = None) -> Iterator[Subscriber]:
        """Subscribers one at a time by id, optionally only those on ``list_name`` (active there), of
        ``status``, or with ``emails``: a million of them stream in the memory of a few thousand."""
        sql, params = self.subscriber_select(list_id=self._list_filter(list_name), status=status, emails=emails)
        for row in self.stream(sql, params):
            lists = row["lists"]
            yield Subscriber(int(row["id"]), row["email"], row["name"],
                             json.loads(row["fields"]) if row["fields"] != "{}" else {}, row["status"],
                             tuple(sorted(lists.split(","))) if lists else ())

    def subscribers(self, *, list_name: str | None = None, status: str | None = None,
                    emails: Sequence[str] | None = None) -> list[Subscriber]:
        """Subscribers, optionally only those on ``list_name`` (active there), of ``status``, or with ``emails``."""
        return list(self.iter_subscribers(list_name=list_name, status=status, emails=emails))

    def explain(self, sql: str, params: Sequence[object] = ()) -> str:
        """The database's plan for one statement, one line a step: ``EXPLAIN QUERY PLAN`` on SQLite
        (``SEARCH`` = an index lookup, ``SCAN`` = every row), ``EXPLAIN`` on PostgreSQL."""
        if self.postgres:
            return "\n".join(str(row[0]) for row in self.query(f"EXPLAIN {sql}", params))
        rows = self.query(f"EXPLAIN QUERY PLAN {sql}", params)
        depth: dict[int, int] = {0: -1}
        lines = []
        for node, parent, _, detail in rows:
            depth[int(node)] = depth.get(int(parent), -1) + 1
            lines.append("  " * depth[int(node)] + str(detail))
        return "\n".join(lines)

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


class _Lookup(NamedTuple):
    """One of an import's lookups by a chunk of values, in each dialect (``IN (…)`` filled in by Store._lookups)."""

    sqlite: str
    #: the values as an array (the first parameter), each looked up by a LATERAL subquery that
    #: OFFSET 0 keeps from being flattened into a join: whatever the statistics say, the plan is
    #: one index search per value (a join let the planner read the whole list per chunk instead)
    postgres: str


#: the subscribers of a chunk's addresses (email_key's unique index)
_EXISTING = _Lookup(
    "SELECT id, email, email_key, name, status, fields FROM subscribers WHERE email_key IN (…)",
    "SELECT s.* FROM unnest(?::text[]) AS k(key), LATERAL (SELECT id, email, email_key, name, status, fields"
    " FROM subscribers WHERE email_key = k.key OFFSET 0) AS s",
)
#: their membership of the list (the primary key)
_ON_LIST = _Lookup(
    "SELECT subscriber_id, status FROM memberships WHERE list_id = ? AND subscriber_id IN (…)",
    "SELECT m.* FROM unnest(?::bigint[]) AS k(id), LATERAL (SELECT subscriber_id, status FROM memberships"
    " WHERE list_id = ? AND subscriber_id = k.id OFFSET 0) AS m",
)
#: the ids of the subscribers just inserted (SQLite; PostgreSQL's INSERT returns them)
_NEW_IDS = _Lookup("SELECT id, email_key FROM subscribers WHERE email_key IN (…)", "")
#: an import's update of the subscribers of a chunk who were there before, on PostgreSQL (by primary key)
_UPDATE_PEOPLE_PG = ("UPDATE subscribers SET name = u.name, fields = u.fields, updated_at = ?"
                     " FROM unnest(?::bigint[], ?::text[], ?::text[]) AS u(id, name, fields)"
                     " WHERE subscribers.id = u.id")
#: planner settings an import's transaction turns off on PostgreSQL: what is left is index lookups
_INDEX_LOOKUPS_ONLY = ("enable_seqscan", "enable_bitmapscan", "enable_hashjoin", "enable_mergejoin", "enable_material")
_FIELDS_JSON = json.JSONEncoder(sort_keys=True)


def _fields_json(fields: Mapping[str, str]) -> str:
    """Merge fields as stored: a JSON object, keys sorted."""
    return _FIELDS_JSON.encode(fields) if fields else "{}"


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
