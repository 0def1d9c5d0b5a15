"""The database engine: open, migrate, transactions, reads, and what went wrong.

SQLite by default (one file, WAL mode, :mod:`newsletter.store.sqlite`), or PostgreSQL when
the location is a ``postgresql://`` URL (:mod:`newsletter.store.postgres`), so that several
dispatch processes on several machines can share one ledger. :class:`Database` holds the
connection and the backend's :class:`~newsletter.store.dialect.Dialect`, and knows nothing
of subscribers or deliveries: the repositories over it do (:mod:`newsletter.store.subscribers`,
:mod:`newsletter.store.ledger`). Every write that belongs together happens in one
transaction, so a failure leaves nothing half-written, and every database error that comes
out is a :class:`StoreError` of one line.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Self

from newsletter.errors import StoreError
from newsletter.store.dialect import Connection, Cursor, Dialect, foreign_database
from newsletter.store.sqlite import SQLiteDialect

__all__ = [
    "BUSY_TIMEOUT",
    "Database",
    "dialect_for",
]

#: seconds a connection waits for another process's write lock before it gives up with
#: "locked": long enough to sit out another run's commit, a ``subscribers import`` or a
#: backup, short enough that a stuck lock holder is reported instead of hanging cron.
BUSY_TIMEOUT = 10.0


def dialect_for(location: str | Path, *, timeout: float) -> Dialect:
    """The dialect of the database at ``location``: a ``postgresql://`` URL, or an SQLite file."""
    if isinstance(location, str) and location.startswith(("postgresql://", "postgres://")):
        from newsletter.store.postgres import PostgresDialect  # psycopg is imported only for a URL

        return PostgresDialect(location, timeout=timeout)
    return SQLiteDialect(Path(location), timeout=timeout)


class Database:
    """An open database: :meth:`open` it, :meth:`close` it (or use ``with``).

    Every database error that comes out of a method is a :class:`StoreError` whose text is
    one line: the database (the file, or the URL without its password), what is wrong
    (locked, full, read-only, damaged, unreachable) and what to do about it.
    """

    def __init__(self, connection: Connection, dialect: Dialect) -> None:
        self.connection = connection
        #: what this backend states in its own SQL
        self.dialect = dialect
        #: how messages name the database: the file, or the URL without its password
        self.label = dialect.label

    @classmethod
    def open(cls, location: str | Path, *, timeout: float | None = None) -> Self:
        """Open (creating if needed) and migrate the database at ``location`` (a file, or a postgresql:// URL).

        ``timeout`` is how long to wait for another process's lock (default :data:`BUSY_TIMEOUT`).
        A file that isn't a newsletter database is refused and left exactly as it was.
        """
        dialect = dialect_for(location, timeout=BUSY_TIMEOUT if timeout is None else timeout)
        database = cls(dialect.connect(), dialect)
        try:
            database.migrate()
        except BaseException:
            # Not left open: a failed open in a long-lived process would hold the file (and a
            # read-only or full mount) busy for good.
            database.close()
            raise
        return database

    def close(self) -> None:
        """Close the connection."""
        # Closing checkpoints SQLite's WAL into the database file; when that fails (a full
        # disk) nothing is lost, the WAL stays and the next open replays it.
        with suppress(Exception):
            self.connection.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- the schema -------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        """The migration the database is at."""
        with self._errors():
            return self.dialect.schema_version(self.connection)

    def migrate(self) -> None:
        """Apply the migrations the database hasn't had yet, each in its own transaction.

        A database of some other program (tables, but no newsletter schema version)
        is refused rather than given newsletter's tables.
        """
        migrations = self.dialect.migrations
        if self.schema_version == len(migrations):
            return  # the usual case: no write lock needed just to open
        while True:
            with self.transaction() as cursor:
                # Read again under the write lock: another process may have migrated meanwhile.
                version = self.dialect.lock_schema(cursor)
                if version > len(migrations):
                    raise StoreError(f"{self.label}: schema version {version} is newer than this newsletter knows; "
                                     "upgrade newsletter")
                if version == len(migrations):
                    return
                if version == 0:
                    tables = self.dialect.other_tables(cursor)
                    if tables:
                        raise foreign_database(self.label, tables)
                for statement in _statements(migrations[version]):
                    cursor.execute(statement)
                self.dialect.set_schema_version(cursor, version + 1)

    # --- transactions and reads ---------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        """A write transaction (SQLite: ``BEGIN IMMEDIATE``) … ``COMMIT``, rolled back on any error.

        Database errors become StoreError.
        """
        cursor = self.connection.cursor()
        try:
            cursor.execute(self.dialect.begin_write)
            yield cursor
            cursor.execute("COMMIT")
        except BaseException as exc:
            if self.connection.in_transaction:
                # A ROLLBACK that fails too (the file vanished, say) must not hide the first error;
                # SQLite rolls back a transaction its connection can't finish anyway.
                with suppress(Exception):
                    self.connection.execute("ROLLBACK")
            error = self.dialect.error(exc)
            if error is not None:
                raise error from exc
            raise
        finally:
            with suppress(Exception):
                cursor.close()

    def serialize(self, cursor: Cursor, key: int) -> None:
        """Make transactions that call this with the same ``key`` run one at a time (until COMMIT).

        SQLite's ``BEGIN IMMEDIATE`` already lets one writer in at a time; PostgreSQL's
        transactions run side by side, so a read-then-write that must not interleave (two
        workers opening the same issue) takes a transaction advisory lock.
        """
        self.dialect.serialize(cursor, key)

    def query(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        """The rows of one read-only statement; database errors become StoreError."""
        try:
            rows: list[Any] = self.connection.execute(sql, params).fetchall()
        except Exception as exc:
            error = self.dialect.error(exc)
            if error is not None:
                raise error from exc
            raise
        return rows

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """One consistent view of the database for the reads inside (an export's header and its rows).

        SQLite: a read transaction (WAL: writers carry on meanwhile); PostgreSQL: a
        read-only ``REPEATABLE READ`` one, which streaming needs too. Nested: the outer one counts.
        """
        if self.connection.in_transaction:
            yield
            return
        with self._errors():
            self.connection.execute(self.dialect.begin_snapshot)
        try:
            yield
        except BaseException:
            if self.connection.in_transaction:
                with suppress(Exception):
                    self.connection.execute("ROLLBACK")
            raise
        with self._errors():
            self.connection.execute("COMMIT")

    def stream(self, sql: str, params: Sequence[object] = (), *, size: int = 2000) -> Iterator[Any]:
        """The rows of one read-only statement as they come: memory holds ``size`` of them, whatever the total.

        SQLite steps its cursor; PostgreSQL reads a server-side cursor ``size`` rows a
        round trip (inside :meth:`snapshot`, which this opens when none is). Database
        errors become StoreError.
        """
        with self.snapshot(), self._errors():
            yield from self.dialect.stream(self.connection, sql, params, size)

    def explain(self, sql: str, params: Sequence[object] = ()) -> str:
        """The database's plan for one statement, one line a step: ``EXPLAIN QUERY PLAN`` on SQLite
        (``SEARCH`` = an index lookup, ``SCAN`` = every row), ``EXPLAIN`` on PostgreSQL."""
        with self._errors():
            return self.dialect.explain(self.connection, sql, params)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Database errors raised inside become StoreError."""
        try:
            yield
        except Exception as exc:
            error = self.dialect.error(exc)
            if error is not None:
                raise error from exc
            raise


def _statements(script: str) -> list[str]:
    """The SQL statements of a migration (``executescript`` would commit our transaction)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        # complete_statement knows about quotes and comments, unlike a split on ";" (and
        # PostgreSQL's migrations use nothing it doesn't know: no dollar quoting).
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements
