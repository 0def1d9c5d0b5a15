"""SQLite's dialect: one file in WAL mode, its migrations, ``flock`` run locks, and what its errors mean.

The schema's version is ``PRAGMA user_version``; a write transaction is ``BEGIN IMMEDIATE``
(one writer at a time, so nothing else serializes); a set of ids is an ``IN (?, …)`` list
or one statement a row (``executemany``), SQLite having no arrays. Whether a run is alive
is an ``flock`` on ``<database>.locks/run-<id>.lock``: the kernel drops it when the process
ends, however it ends. An error becomes one line naming the file, what is wrong (locked,
full, read-only, damaged) and what to do about it.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from newsletter.errors import StoreError
from newsletter.store.dialect import Connection, Cursor, Statement, foreign_database

__all__ = [
    "FileRunLock",
    "MIGRATIONS",
    "SQLiteDialect",
    "database_error",
]

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
    # 7: what comes back by mail (issue 15). A subscriber may be 'complained' (an abuse report:
    # every membership ended, never mailed again). SQLite can't alter a CHECK constraint, and
    # rebuilding subscribers would mean rebuilding every table that references it; a CHECK that
    # only allows one more value is the change SQLite's documentation ("Making Other Kinds Of
    # Table Schema Changes") makes by editing the table's SQL in place (no row can fail it), then
    # RESET so this connection reads the schema again (the DDL below tells the others).
    # Each bounce, complaint or unsubscribe by mail is a row of feedback (its fingerprint makes
    # processing a message twice change nothing); the delivery it concerns keeps the worst of
    # them (complaint > hard > soft) with its code, diagnostic and time. A list's unsubscribes
    # are read per issue from the memberships that ended (the partial index holds only those).
    """
    PRAGMA writable_schema = ON;
    UPDATE sqlite_master SET sql = replace(sql, '''unsubscribed'', ''bounced'')',
                                           '''unsubscribed'', ''bounced'', ''complained'')')
        WHERE type = 'table' AND name = 'subscribers';
    PRAGMA writable_schema = RESET;
    CREATE TABLE feedback (
        id             INTEGER PRIMARY KEY,
        issue_id       INTEGER NOT NULL,
        subscriber_id  INTEGER NOT NULL,
        kind           TEXT NOT NULL CHECK (kind IN ('hard_bounce', 'soft_bounce', 'complaint', 'unsubscribe')),
        status         TEXT,                       -- RFC 3463 code, '5.1.1'
        diagnostic     TEXT NOT NULL DEFAULT '',
        at             REAL NOT NULL,              -- unix time
        day            INTEGER NOT NULL,           -- at's UTC day: soft bounces count at most once a day
        fingerprint    TEXT NOT NULL UNIQUE,       -- the same report twice is recorded once
        FOREIGN KEY (issue_id, subscriber_id) REFERENCES deliveries (issue_id, subscriber_id)
    );
    CREATE INDEX feedback_issue ON feedback (issue_id, kind, subscriber_id);
    CREATE INDEX feedback_subscriber ON feedback (subscriber_id, kind, day, issue_id);
    ALTER TABLE deliveries ADD COLUMN feedback TEXT;           -- hard_bounce | soft_bounce | complaint
    ALTER TABLE deliveries ADD COLUMN feedback_status TEXT;
    ALTER TABLE deliveries ADD COLUMN feedback_text TEXT;
    ALTER TABLE deliveries ADD COLUMN feedback_at REAL;
    CREATE INDEX memberships_ended ON memberships (list_id, updated_at) WHERE status = 'unsubscribed';
    """,
    # 8: data rights (issue 16 item 6). A forgotten subscriber keeps a row ('forgotten', a
    # placeholder address, no name or fields) so that each issue's deliveries and counts stay
    # right; the address itself survives only as a keyed hash in ``forgotten`` (its primary
    # key is the lookup an import makes), so that no import or ``add`` silently brings them
    # back. The CHECK gains one value the way migration 7 did it.
    """
    PRAGMA writable_schema = ON;
    UPDATE sqlite_master SET sql = replace(sql, '''bounced'', ''complained'')',
                                           '''bounced'', ''complained'', ''forgotten'')')
        WHERE type = 'table' AND name = 'subscribers';
    PRAGMA writable_schema = RESET;
    CREATE TABLE forgotten (
        hash          TEXT PRIMARY KEY,            -- hex HMAC-SHA256 of the lower-cased address
        forgotten_at  TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
    # 9: consent (issue 16 items 2 and 3). A membership may be 'pending' (a signup waiting for
    # its double opt-in: dispatch selects 'active' only, so it is never mailed); the CHECK
    # gains the value the way migration 7 did it. Each consent event is a row of ``consents``:
    # how (form, api, import, cli), where (the form's page, or an import's --consent text),
    # the requester's network (an address truncated to /24 or /48, never the address), when
    # it was asked for and when it was confirmed. Read per subscriber (``subscribers show``).
    # A consent is about one membership: one foreign key to it (the membership's own keys
    # already check the subscriber and the list; two more checks a row made a PostgreSQL
    # import with --consent 39% slower than without, this one 26%).
    """
    PRAGMA writable_schema = ON;
    UPDATE sqlite_master SET sql = replace(sql, 'CHECK (status IN (''active'', ''unsubscribed''))',
                                           'CHECK (status IN (''active'', ''unsubscribed'', ''pending''))')
        WHERE type = 'table' AND name = 'memberships';
    PRAGMA writable_schema = RESET;
    CREATE TABLE consents (
        id             INTEGER PRIMARY KEY,
        subscriber_id  INTEGER NOT NULL,
        list_id        INTEGER NOT NULL,
        method         TEXT NOT NULL CHECK (method IN ('form', 'api', 'import', 'cli')),
        source         TEXT NOT NULL DEFAULT '' CHECK (length(source) <= 500),
        ip_prefix      TEXT,                       -- '203.0.113.0/24', '2001:db8:1::/48'
        requested_at   TEXT NOT NULL,
        confirmed_at   TEXT,
        FOREIGN KEY (list_id, subscriber_id) REFERENCES memberships (list_id, subscriber_id)
    );
    CREATE INDEX consents_subscriber ON consents (subscriber_id, list_id);
    """,
    # 10: signups (issue 16 items 2 and 4). Each confirmation email is a row of
    # ``confirmations``, which is also its outbox entry ('queued' -> 'sending' -> 'sent' or
    # 'failed'; a deferred one goes back to 'queued' with a later next_attempt_at, a claimed
    # one holds next_attempt_at = the end of its lease, so a crashed sender's row is due again).
    # The consents a confirmation asks about point at it (NULL for an import's or the command
    # line's). A welcome issue goes out once per (subscriber, list): ``welcomes``, the same
    # outbox columns. ``signup_counters`` counts signups per network and in all per hour, one
    # UPSERT each, so the limits hold across processes. Times that are records (created,
    # expires, confirmed, sent) are ISO text like the other tables'; the schedule
    # (next_attempt_at, claimed_at) is unix time like the deliveries'.
    # The partial indexes hold only what the hot queries look for: the outbox's due rows,
    # the unconfirmed confirmations that purge expires, the pending memberships it ends.
    """
    CREATE TABLE confirmations (
        id               INTEGER PRIMARY KEY,
        subscriber_id    INTEGER NOT NULL REFERENCES subscribers(id),
        created_at       TEXT NOT NULL,
        expires_at       TEXT NOT NULL,
        confirmed_at     TEXT,
        status           TEXT NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'sending', 'sent', 'failed')),
        attempts         INTEGER NOT NULL DEFAULT 0,
        next_attempt_at  REAL NOT NULL DEFAULT 0,     -- unix time; while 'sending': when its lease ends
        claimed_at       REAL,                        -- unix time
        sent_at          TEXT,
        message_id       TEXT NOT NULL DEFAULT '',
        last_error       TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX confirmations_subscriber ON confirmations (subscriber_id, created_at);
    CREATE INDEX confirmations_due ON confirmations (next_attempt_at) WHERE status IN ('queued', 'sending');
    CREATE INDEX confirmations_unconfirmed ON confirmations (expires_at) WHERE confirmed_at IS NULL;
    ALTER TABLE consents ADD COLUMN confirmation_id INTEGER REFERENCES confirmations(id);
    CREATE INDEX consents_confirmation ON consents (confirmation_id) WHERE confirmation_id IS NOT NULL;
    CREATE INDEX memberships_pending ON memberships (updated_at) WHERE status = 'pending';
    CREATE TABLE welcomes (
        id               INTEGER PRIMARY KEY,
        subscriber_id    INTEGER NOT NULL REFERENCES subscribers(id),
        list_id          INTEGER NOT NULL REFERENCES lists(id),
        created_at       TEXT NOT NULL,
        status           TEXT NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'sending', 'sent', 'failed')),
        attempts         INTEGER NOT NULL DEFAULT 0,
        next_attempt_at  REAL NOT NULL DEFAULT 0,
        claimed_at       REAL,
        sent_at          TEXT,
        message_id       TEXT NOT NULL DEFAULT '',
        last_error       TEXT NOT NULL DEFAULT '',
        UNIQUE (subscriber_id, list_id)
    );
    CREATE INDEX welcomes_due ON welcomes (next_attempt_at) WHERE status IN ('queued', 'sending');
    CREATE TABLE signup_counters (
        key           TEXT NOT NULL,                -- 'all', or 'net:' and a network ('203.0.113.0/24')
        window_start  INTEGER NOT NULL,             -- unix time of the hour it counts
        count         INTEGER NOT NULL,
        PRIMARY KEY (key, window_start)
    ) WITHOUT ROWID;
    """,
)

#: values one ``IN (…)`` list of an import's lookups holds
_LOOKUP_CHUNK = 500


def _marks(count: int) -> str:
    return ",".join("?" * count)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class SQLiteDialect:
    """SQLite's SQL where it differs from PostgreSQL's, for the database file at ``path``."""

    name = "sqlite"
    migrations = MIGRATIONS
    begin_write = "BEGIN IMMEDIATE"
    begin_snapshot = "BEGIN"  # a read transaction: in WAL mode writers carry on meanwhile
    each_id = "= ?"

    def __init__(self, path: Path, *, timeout: float) -> None:
        self.path = path
        self.label = str(path)
        #: seconds a connection waits for another process's write lock
        self.timeout = timeout
        #: where the runs' lock files are
        self.locks_dir = Path(f"{path}.locks")

    # --- the engine -------------------------------------------------------------------

    def connect(self) -> sqlite3.Connection:
        """Open (creating it and its folder if needed) the file in WAL mode; a foreign database is left as it is."""
        connection: sqlite3.Connection | None = None
        try:
            if self.path.parent and not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: the store issues BEGIN/COMMIT itself, so transactions are explicit.
            connection = sqlite3.connect(str(self.path), timeout=self.timeout, isolation_level=None)
            connection.row_factory = sqlite3.Row
            # Look before touching: switching to WAL would rewrite the header of a file that
            # turns out to be some other program's database. One statement, one snapshot.
            version, tables = connection.execute(
                "SELECT (SELECT user_version FROM pragma_user_version),"
                " (SELECT group_concat(name, ', ') FROM (SELECT name FROM sqlite_master"
                "  WHERE name NOT LIKE 'sqlite_%' ORDER BY name LIMIT 3))"
            ).fetchone()
            if not version and tables:
                raise foreign_database(self.label, tables)
            self._switch_to_wal(connection)
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA foreign_keys=ON")
        except BaseException as exc:
            # Not left open: a failed open in a long-lived process would hold the file (and a
            # read-only or full mount) busy for good.
            if connection is not None:
                with suppress(sqlite3.Error):
                    connection.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise database_error(self.path, exc, timeout=self.timeout) from exc
            if isinstance(exc, OSError):
                raise StoreError(f"{self.path}: can't create its folder: {exc.strerror or exc}") from exc
            raise
        return connection

    def _switch_to_wal(self, connection: sqlite3.Connection) -> None:
        """``PRAGMA journal_mode=WAL``, waiting for another connection that is switching a new file too.

        SQLite answers that pragma "database is locked" at once, without its busy handler,
        while another connection holds the lock it needs: two processes opening a new
        database together failed about one time in forty. The switch is made once per
        file and then persists, so trying again until the busy timeout is enough.
        """
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) \
                        or time.monotonic() >= deadline:
                    raise
                time.sleep(0.005)

    def schema_version(self, connection: Connection) -> int:
        """``PRAGMA user_version``."""
        return int(connection.execute("PRAGMA user_version", ()).fetchall()[0][0])

    def lock_schema(self, cursor: Cursor) -> int:
        """The version, read again: ``BEGIN IMMEDIATE`` already keeps every other writer out."""
        return int(cursor.execute("PRAGMA user_version").fetchone()[0])

    def set_schema_version(self, cursor: Cursor, version: int) -> None:
        """``PRAGMA user_version = version``."""
        cursor.execute(f"PRAGMA user_version = {int(version)}")

    def other_tables(self, cursor: Cursor) -> str:
        """Tables in the file (none of SQLite's own)."""
        row = cursor.execute(
            "SELECT group_concat(name, ', ') FROM (SELECT name FROM sqlite_master"
            " WHERE name NOT LIKE 'sqlite_%' ORDER BY name LIMIT 3)").fetchone()
        return str(row[0] or "") if row else ""

    def serialize(self, cursor: Cursor, key: int) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` lets one writer in at a time already."""

    def stream(self, connection: Connection, sql: str, params: Sequence[object], size: int) -> Iterator[Any]:
        """SQLite steps its cursor: a row at a time."""
        yield from connection.execute(sql, params)

    def explain(self, connection: Connection, sql: str, params: Sequence[object]) -> str:
        """``EXPLAIN QUERY PLAN`` as an indented tree (``SEARCH`` = an index lookup, ``SCAN`` = every row)."""
        rows = connection.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
        depth: dict[int, int] = {0: -1}
        lines = []
        for node, parent, _, detail in rows:
            depth[int(node)] = depth.get(int(parent), -1) + 1
            lines.append("  " * depth[int(node)] + str(detail))
        return "\n".join(lines)

    def error(self, exc: BaseException) -> StoreError | None:
        """:func:`database_error` for an :class:`sqlite3.DatabaseError`."""
        if isinstance(exc, sqlite3.DatabaseError):
            return database_error(self.path, exc, timeout=self.timeout)
        return None

    # --- runs -----------------------------------------------------------------------------

    def run_lock(self, run_id: int) -> FileRunLock:
        """``<database>.locks/run-<id>.lock``."""
        return FileRunLock(self.locks_dir, run_id)

    def run_is_alive(self, connection: Connection, run_id: int) -> bool:
        """Whether the run's lock file is locked (False when it is gone)."""
        return FileRunLock.is_alive(self.locks_dir, run_id)

    # --- pieces of SQL ----------------------------------------------------------------------

    def string_agg(self, expression: str, separator: str) -> str:
        """``group_concat``."""
        return f"group_concat({expression}, {separator})"

    def json_keys(self, column: str) -> str:
        """``json_each``, whose rows have a ``key`` column."""
        return f"json_each({column}) AS k"

    def skip_locked(self, alias: str) -> str:
        """Nothing: one writer at a time, so no row is ever being claimed by another."""
        return ""

    def in_ids(self, ids: Sequence[int]) -> tuple[str, list[Any]]:
        """``IN (?, ?, …)``: SQLite has no arrays."""
        return f"IN ({_marks(len(ids))})", list(ids)

    def execute_each(self, cursor: Cursor, sql: str, before: Sequence[Any], ids: Sequence[int],
                     after: Sequence[Any] = ()) -> int:
        """One statement a row (``executemany``, each by the primary key)."""
        return int(cursor.executemany(sql, [(*before, row_id, *after) for row_id in ids]).rowcount)

    def reserve(self, cursor: Cursor, span: float) -> float:
        """Every process is on this machine: its clock decides."""
        now = time.time()
        row = cursor.execute(
            "UPDATE throttle SET next_at = max(next_at, ?) + ? WHERE name = 'send' RETURNING next_at - ?",
            (now, span, span),
        ).fetchone()
        return float(row[0])

    # --- an import's bulk statements ----------------------------------------------------------

    def prefer_index_lookups(self, cursor: Cursor) -> None:
        """Nothing: SQLite's planner takes the index for ``IN (…)`` on an indexed column."""

    def subscribers_by_key(self, keys: Sequence[str]) -> Iterator[Statement]:
        """By email_key's unique index, 500 keys a statement."""
        for chunk in _chunks(keys, _LOOKUP_CHUNK):
            yield (f"SELECT id, email, email_key, name, status, fields FROM subscribers"
                   f" WHERE email_key IN ({_marks(len(chunk))})", tuple(chunk))

    def memberships_on_list(self, list_id: int, ids: Sequence[int]) -> Iterator[Statement]:
        """By the primary key (list_id, subscriber_id), 500 ids a statement."""
        for chunk in _chunks(ids, _LOOKUP_CHUNK):
            yield (f"SELECT subscriber_id, status FROM memberships WHERE list_id = ?"
                   f" AND subscriber_id IN ({_marks(len(chunk))})", (list_id, *chunk))

    def insert_subscribers(self, cursor: Cursor, rows: Sequence[tuple[str, str, str, str]],
                           now: str) -> list[tuple[int, str]]:
        """``executemany`` (which can't return rows), then their ids read back by key."""
        if not rows:
            return []
        cursor.executemany(
            "INSERT INTO subscribers (email, email_key, name, fields, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(email, key, name, fields, now, now) for email, key, name, fields in rows],
        )
        found: list[tuple[int, str]] = []
        for chunk in _chunks([key for _, key, _, _ in rows], _LOOKUP_CHUNK):
            found += [(int(row[0]), str(row[1])) for row in cursor.execute(
                f"SELECT id, email_key FROM subscribers WHERE email_key IN ({_marks(len(chunk))})", tuple(chunk)
            ).fetchall()]
        return found

    def update_subscribers(self, cursor: Cursor, rows: Sequence[tuple[int, str, str]], now: str) -> None:
        """``executemany`` by the primary key."""
        if rows:
            cursor.executemany(
                "UPDATE subscribers SET name = ?, fields = ?, updated_at = ? WHERE id = ? AND status <> 'forgotten'",
                [(name, fields, now, subscriber_id) for subscriber_id, name, fields in rows],
            )

    def insert_memberships(self, cursor: Cursor, list_id: int, members: Sequence[tuple[int, str]],
                           now: str) -> None:
        """``executemany`` (an array parameter would be PostgreSQL's)."""
        cursor.executemany(
            "INSERT INTO memberships (list_id, subscriber_id, status, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(list_id, subscriber_id, status, now, now) for subscriber_id, status in members],
        )

    def insert_consents(self, cursor: Cursor, list_id: int, ids: Sequence[int], method: str, source: str,
                        now: str) -> None:
        """One ``INSERT … SELECT`` over the ids as a JSON array (``json_each``): SQLite has no arrays."""
        if ids:
            cursor.execute(
                "INSERT INTO consents (subscriber_id, list_id, method, source, requested_at)"
                " SELECT j.value, ?, ?, ?, ? FROM json_each(?) AS j",
                (list_id, method, source, now, json.dumps([int(i) for i in ids])),
            )


class FileRunLock:
    """A run is alive while this lock is held: an ``flock`` on ``<database>.locks/run-<id>.lock``."""

    def __init__(self, folder: Path, run_id: int) -> None:
        self.folder = folder
        self.path = folder / f"run-{run_id}.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Create and lock the file (it is new: run ids are never reused)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"{self.folder}: can't take the run lock: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"{self.folder}: can't take the run lock: {exc.strerror or exc}") from exc
        self._fd = fd

    def release(self) -> None:
        """Unlock and remove the file."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                # A file left behind (its folder turned read-only) is harmless: unlocked, it reads as dead.
                with suppress(OSError):
                    self.path.unlink(missing_ok=True)
            finally:
                os.close(fd)  # closing drops the lock

    @staticmethod
    def is_alive(folder: Path, run_id: int) -> bool:
        """Whether the run ``run_id`` still holds its lock (False when its file is gone)."""
        try:
            fd = os.open(folder / f"run-{run_id}.lock", os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # flock locks belong to this open file: closing it frees ours only
        return False


def database_error(path: Path, exc: sqlite3.DatabaseError, *, timeout: float) -> StoreError:
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
