"""What each database states in its own words: the :class:`Dialect` contract.

The engine (:mod:`newsletter.store.engine`), the subscribers (:mod:`newsletter.store.subscribers`)
and the ledger (:mod:`newsletter.store.ledger`) write their SQL once where SQLite and
PostgreSQL speak alike, with ``?`` for a parameter (the store's one paramstyle). Where the
two differ, they ask the open database's dialect, and each backend states its own SQL in
a module of its own: :mod:`newsletter.store.sqlite` and :mod:`newsletter.store.postgres`
(with their migrations, connections, run locks and error messages). Nothing rewrites the
SQL of one backend into the other's.

The differences, all here: how a connection opens and where the schema version is kept;
how a write transaction and a read-only snapshot begin; a lock that serializes two
transactions; how a run says it is alive (an ``flock`` / a session advisory lock); a set
of ids as a parameter (``IN (?, …)`` or one statement a row / ``= ANY(?)`` with an array);
``FOR UPDATE SKIP LOCKED``; string aggregation and JSON keys; the clock that paces sending;
an import's bulk statements; query plans; and what an error means.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from newsletter.errors import StoreError

__all__ = [
    "Connection",
    "Cursor",
    "Dialect",
    "RunLock",
    "Statement",
    "first_line",
    "foreign_database",
]

#: one statement and its parameters
Statement = tuple[str, Sequence[Any]]


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


class Connection(Protocol):
    """An open database: an :class:`sqlite3.Connection` (``isolation_level=None``), or its PostgreSQL twin."""

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open."""

    def cursor(self) -> Any:
        """A new :class:`Cursor`."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any:
        """Run one statement on a new cursor; returns the cursor."""

    def close(self) -> None:
        """Close it."""


class RunLock(Protocol):
    """The lock that says a run is alive: held from :meth:`acquire` until :meth:`release`, or the process's end."""

    def acquire(self) -> None:
        """Take the lock (a run id is never reused, so it is free); StoreError when it can't be taken."""

    def release(self) -> None:
        """Drop the lock."""


class Dialect(Protocol):
    """One backend's own SQL where it differs from the other's, for one database location."""

    #: ``"sqlite"`` or ``"postgresql"``
    name: str
    #: how messages name the database: the file, or the URL without its password
    label: str
    #: each entry moves the schema one version up, in this backend's types; never edit one that has shipped
    migrations: tuple[str, ...]
    #: the statement that opens a write transaction
    begin_write: str
    #: the statement that opens one consistent read-only view (streaming needs it on PostgreSQL)
    begin_snapshot: str
    #: compares a column with each id of :meth:`execute_each` (``subscriber_id = ?`` / ``= ANY(?)``)
    each_id: str

    # --- the engine -------------------------------------------------------------------

    def connect(self) -> Connection:
        """Open the database (a StoreError naming it when that fails); refuses a foreign SQLite file untouched."""

    def schema_version(self, connection: Connection) -> int:
        """The migration the database is at (0: none yet)."""

    def lock_schema(self, cursor: Cursor) -> int:
        """Inside a write transaction: keep other processes from migrating until COMMIT; the version now."""

    def set_schema_version(self, cursor: Cursor, version: int) -> None:
        """Record that the database is at ``version`` (inside the migration's transaction)."""

    def other_tables(self, cursor: Cursor) -> str:
        """Up to three names of tables some other program made, joined by ``", "`` ("" when there are none)."""

    def serialize(self, cursor: Cursor, key: int) -> None:
        """Make transactions that call this with the same ``key`` run one at a time (until COMMIT)."""

    def stream(self, connection: Connection, sql: str, params: Sequence[object], size: int) -> Iterator[Any]:
        """The rows of one query as they come, ``size`` at a time at most in memory (inside a snapshot)."""

    def explain(self, connection: Connection, sql: str, params: Sequence[object]) -> str:
        """The database's plan for one statement, one line a step."""

    def error(self, exc: BaseException) -> StoreError | None:
        """The StoreError for one of this backend's exceptions (one line: what is wrong, what to do); None otherwise."""

    # --- runs -----------------------------------------------------------------------------

    def run_lock(self, run_id: int) -> RunLock:
        """The lock run ``run_id`` holds while it is alive (not taken yet)."""

    def run_is_alive(self, connection: Connection, run_id: int) -> bool:
        """Whether some process holds run ``run_id``'s lock."""

    # --- pieces of SQL ----------------------------------------------------------------------

    def string_agg(self, expression: str, separator: str) -> str:
        """An aggregate joining ``expression``'s values with ``separator`` (an SQL literal)."""

    def json_keys(self, column: str) -> str:
        """A FROM item yielding each key of the JSON object in ``column`` as ``k.key``."""

    def skip_locked(self, alias: str) -> str:
        """What ends a claim's SELECT: rows another worker is claiming are passed over, not waited for."""

    def in_ids(self, ids: Sequence[int]) -> tuple[str, list[Any]]:
        """``ids`` as a condition on a column (``IN (?, …)`` / ``= ANY(?)``) and its parameters."""

    def execute_each(self, cursor: Cursor, sql: str, before: Sequence[Any], ids: Sequence[int],
                     after: Sequence[Any] = ()) -> int:
        """Run ``sql`` (which compares a column with :attr:`each_id`) for every id; rows changed.

        Its parameters are ``before``, the id (or all of them as one array), then ``after``.
        """

    def reserve(self, cursor: Cursor, span: float) -> float:
        """Move the shared sending slots on by ``span`` seconds; when the first of them is (unix time, our clock)."""

    # --- an import's bulk statements ----------------------------------------------------------

    def prefer_index_lookups(self, cursor: Cursor) -> None:
        """Keep an import's transaction to index lookups, whatever the statistics say."""

    def subscribers_by_key(self, keys: Sequence[str]) -> Iterator[Statement]:
        """Statements reading ``id, email, email_key, name, status, fields`` of the subscribers with ``keys``."""

    def memberships_on_list(self, list_id: int, ids: Sequence[int]) -> Iterator[Statement]:
        """Statements reading ``subscriber_id, status`` of the memberships of subscribers ``ids`` on a list."""

    def insert_subscribers(self, cursor: Cursor, rows: Sequence[tuple[str, str, str, str]],
                           now: str) -> list[tuple[int, str]]:
        """Insert (email, email_key, name, fields) in order; their (id, email_key)."""

    def update_subscribers(self, cursor: Cursor, rows: Sequence[tuple[int, str, str]], now: str) -> None:
        """Write (id, name, fields) of subscribers that are there."""

    def insert_memberships(self, cursor: Cursor, list_id: int, members: Sequence[tuple[int, str]],
                           now: str) -> None:
        """Put (subscriber id, status) on a list; an existing membership keeps its status."""

    def insert_consents(self, cursor: Cursor, list_id: int, ids: Sequence[int], method: str, source: str,
                        now: str) -> None:
        """One consent row (``method``, ``source``, requested ``now``, no network) per subscriber of ``ids``
        on a list: one ``INSERT … SELECT`` statement, whatever the number of ids."""


def first_line(exc: BaseException) -> str:
    """An exception's text on one line (its class name when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def foreign_database(label: str, tables: str) -> StoreError:
    """The error for a database some other program made (``tables``, and no newsletter schema version)."""
    return StoreError(f"{label}: a database, but not newsletter's (tables {tables} and no schema version); "
                      "left as it was: point [database] at another one")
