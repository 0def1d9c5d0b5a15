"""The delivery ledger: one row per (issue, subscriber), and the runs that work on it.

A row moves ``pending → sending → sent | deferred | failed``; ``deferred`` goes back to
``sending`` when it comes due. The move to ``sending`` is the only way to send, and it is
a conditional UPDATE inside a transaction, so however many runs work at once a row is
sent by one of them at a time. A run marks a row ``sending`` in the same transaction that
records the result of its previous one, so a crash leaves at most one row per connection
``sending``; the next run turns those into ``uncertain`` and leaves them alone unless told
otherwise, so nobody gets an issue twice.

Whether a run is alive is told by a lock it holds (the dialect's: on SQLite an ``flock``
on ``<database>.locks/run-<id>.lock``, on PostgreSQL a session advisory lock on a
connection of its own). The kernel (or the database server) drops it when the process
dies, however it dies. On PostgreSQL several processes claim rows at once with
``FOR UPDATE SKIP LOCKED``. The SQL is written once; where the backends differ (a set of
ids as a parameter, the clock that paces sending) the database's dialect states its own.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from newsletter.store.dialect import Cursor, RunLock
from newsletter.store.engine import Database

__all__ = [
    "Delivery",
    "IssueRecord",
    "Ledger",
    "Result",
    "STATES",
    "Worker",
]

#: every state a delivery can be in, in the order reports show them
STATES = ("pending", "sending", "sent", "deferred", "failed", "uncertain", "skipped")

_CLAIMABLE = "('pending', 'deferred')"
#: the advisory lock key that serializes opening issues on PostgreSQL
_OPEN_ISSUE_LOCK = 0x6E6C_6F69  # "nloi"


@dataclass(frozen=True)
class IssueRecord:
    """An issue as the ledger knows it."""

    id: int
    slug: str
    list_id: int
    list_name: str
    content_hash: str
    completed_at: str | None


class Delivery(NamedTuple):  # a tuple: made for every message, and cheap to make
    """One row claimed for sending, with what composing its message needs."""

    issue_id: int
    subscriber_id: int
    email: str
    name: str
    fields: Mapping[str, str]
    message_id: str
    attempts: int
    first_attempt_at: float | None


class Result(NamedTuple):  # a tuple: made for every message, and cheap to make
    """What to write for a delivery that was marked ``sending``.

    ``status`` ``release`` puts the row back as it was (pending, attempt not counted):
    for a send that never started because the run stopped. ``uncertain``: the whole
    message went out but the server's final reply never came (timed out), so the server
    may have it; like a crash's in-flight rows, it is not sent
    again unless ``--resend-uncertain`` says so.
    """

    issue_id: int
    subscriber_id: int
    status: Literal["sent", "deferred", "failed", "uncertain", "release"]
    code: int | None = None
    text: str = ""
    next_attempt_at: float = 0.0
    bounced: bool = False


@dataclass(frozen=True)
class Worker:
    """A live run (a ``newsletter dispatch`` process) as ``newsletter workers`` shows it."""

    run_id: int
    host: str
    pid: int
    started_at: str
    #: rows it has claimed and not started yet
    claimed: int
    #: rows it is sending now
    sending: int
    #: rows it has sent since it started
    sent: int
    #: messages a second over the last minute
    rate: float

    def as_dict(self) -> dict[str, object]:
        """For ``--json``."""
        return {"run": self.run_id, "host": self.host, "pid": self.pid, "started_at": self.started_at,
                "claimed": self.claimed, "sending": self.sending, "sent": self.sent, "rate": round(self.rate, 1)}


def _issue_record(row: Any, slug: str) -> IssueRecord:
    return IssueRecord(int(row["id"]), slug, int(row["list_id"] or 0), row["list_name"], row["content_hash"],
                       row["completed_at"])


def _stamp(now: float | None = None) -> str:
    moment = dt.datetime.now(dt.UTC) if now is None else dt.datetime.fromtimestamp(now, dt.UTC)
    return moment.isoformat(timespec="seconds")


class Ledger:
    """The narrow interface the dispatcher needs, over an open database."""

    def __init__(self, store: Database) -> None:
        self.store = store
        #: issues whose first_sent_at this ledger has written (or found earlier) in a committed transaction
        self._first_sent_noted: set[int] = set()

    # --- issues ---------------------------------------------------------------------

    def open_issue(self, *, slug: str, list_name: str, subject: str, content_hash: str, domain: str,
                   source_text: str | None = None) -> IssueRecord:
        """The issue ``slug``; on first sight, record it and one pending row per active list member.

        Creating the issue and its rows is one transaction: the audience is fixed then,
        and a crash in between leaves neither.
        """
        now = _stamp()
        with self.store.transaction() as cursor:
            self.store.serialize(cursor, _OPEN_ISSUE_LOCK)  # two workers starting together make it once
            row = cursor.execute(
                "SELECT i.id, i.list_id, i.list_name, i.content_hash, i.completed_at FROM issues i WHERE slug = ?",
                (slug,),
            ).fetchone()
            if row is not None:
                return _issue_record(row, slug)
            cursor.execute("INSERT INTO lists (name) VALUES (?) ON CONFLICT DO NOTHING", (list_name,))
            list_id = int(cursor.execute("SELECT id FROM lists WHERE name = ?", (list_name,)).fetchone()[0])
            issue_id = int(cursor.execute(
                "INSERT INTO issues (slug, list_name, list_id, subject, content_hash, created_at, source_text)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (slug, list_name, list_id, subject, content_hash, now, source_text),
            ).fetchone()[0])
            # The Message-ID is fixed here, so a resend (after --resend-uncertain) carries the
            # same one and a receiving system can tell it is the same message. A bounce that
            # quotes it finds its delivery by it: Feedback.delivery_by_message_id reads the slug
            # and the subscriber id back out of "<slug>.<id>@<domain>" (keep the two in step).
            cursor.execute(
                "INSERT INTO deliveries (issue_id, subscriber_id, message_id, created_at, updated_at)"
                " SELECT ?, s.id, ? || '.' || s.id || '@' || ?, ?, ?"
                " FROM memberships m JOIN subscribers s ON s.id = m.subscriber_id"
                " WHERE m.list_id = ? AND m.status = 'active' AND s.status = 'active'",
                (issue_id, slug, domain, now, now, list_id),
            )
        return IssueRecord(issue_id, slug, list_id, list_name, content_hash, None)

    def find_issue(self, slug: str) -> IssueRecord | None:
        """The issue ``slug`` if the ledger has it."""
        row = self._query_one(
            "SELECT id, list_id, list_name, content_hash, completed_at FROM issues WHERE slug = ?", (slug,)
        )
        return None if row is None else _issue_record(row, slug)

    def issues(self) -> list[tuple[str, str | None]]:
        """Every issue the ledger has, as (slug, completed_at), oldest first."""
        rows = self._query("SELECT slug, completed_at FROM issues ORDER BY id", ())
        return [(row["slug"], row["completed_at"]) for row in rows]

    def update_content_hash(self, issue_id: int, content_hash: str, source_text: str | None = None) -> None:
        """Accept a changed issue file for the deliveries still to come (and for the archive)."""
        with self.store.transaction() as cursor:
            cursor.execute("UPDATE issues SET content_hash = ?, source_text = coalesce(?, source_text) WHERE id = ?",
                           (content_hash, source_text, issue_id))

    def audience(self, list_name: str) -> int:
        """How many active subscribers ``list_name`` has now (what a first dispatch would create)."""
        row = self._query_one(
            "SELECT count(*) FROM memberships m JOIN lists l ON l.id = m.list_id"
            " JOIN subscribers s ON s.id = m.subscriber_id"
            " WHERE l.name = ? AND m.status = 'active' AND s.status = 'active'",
            (list_name,),
        )
        return int(row[0]) if row else 0

    def reopen(self, issue_id: int) -> None:
        """Clear the issue's completion (to resend its uncertain rows)."""
        with self.store.transaction() as cursor:
            cursor.execute("UPDATE issues SET completed_at = NULL WHERE id = ?", (issue_id,))

    def complete_if_done(self, issue_id: int) -> bool:
        """Mark the issue complete when no row can still be sent; True if it is complete."""
        with self.store.transaction() as cursor:
            open_rows = cursor.execute(
                "SELECT count(*) FROM deliveries WHERE issue_id = ? AND status IN ('pending', 'deferred', 'sending')",
                (issue_id,),
            ).fetchone()[0]
            if open_rows:
                return False
            cursor.execute(
                "UPDATE issues SET completed_at = ? WHERE id = ? AND completed_at IS NULL", (_stamp(), issue_id)
            )
        return True

    # --- runs -------------------------------------------------------------------------

    def start_run(self) -> tuple[int, RunLock]:
        """Register this process as a run and take its lock."""
        now = dt.datetime.now(dt.UTC)
        lock: RunLock | None = None
        try:
            with self.store.transaction() as cursor:
                run_id = int(cursor.execute(
                    "INSERT INTO runs (pid, host, started_at) VALUES (?, ?, ?) RETURNING id",
                    (os.getpid(), socket.gethostname(), now.isoformat(timespec="seconds")),
                ).fetchone()[0])
                # Locked before the row commits: no other run may ever see this one without its lock.
                lock = self.store.dialect.run_lock(run_id)
                lock.acquire()
        except BaseException:
            # The COMMIT failed (a full disk, say): the run doesn't exist, so neither may its lock.
            if lock is not None:
                lock.release()
            raise
        return run_id, lock

    def run_is_alive(self, run_id: int) -> bool:
        """Whether the run ``run_id`` still holds its lock."""
        return self.store.dialect.run_is_alive(self.store.connection, run_id)

    def finish_run(self, run_id: int, lock: RunLock) -> None:
        """Record the run's end, drop its claims and release its lock."""
        try:
            with self.store.transaction() as cursor:
                cursor.execute("UPDATE runs SET finished_at = ? WHERE id = ?", (_stamp(), run_id))
                cursor.execute(
                    f"UPDATE deliveries SET run_id = NULL, claim_until = 0 WHERE run_id = ? AND status IN {_CLAIMABLE}",
                    (run_id,),
                )
        finally:
            # Released even when the database refused the update (locked, full): the run is over
            # either way, and a lock kept by a process that goes on (a test, a long-lived caller)
            # would make the next run think this one still owns its ``sending`` rows.
            lock.release()

    def recover(self, issue_id: int) -> int:
        """Close the books of dead runs: their ``sending`` rows become ``uncertain``, their claims free.

        Returns how many rows became uncertain.
        """
        now = _stamp()
        # Inside the write transaction, so no run can mark a row between the check and the update.
        with self.store.transaction() as cursor:
            runs = cursor.execute("SELECT id FROM runs WHERE finished_at IS NULL").fetchall()
            dead = [int(row["id"]) for row in runs if not self.run_is_alive(int(row["id"]))]
            for run_id in dead:
                cursor.execute("UPDATE runs SET finished_at = ? WHERE id = ? AND finished_at IS NULL",
                               (f"{now} (died)", run_id))
                cursor.execute(
                    f"UPDATE deliveries SET run_id = NULL, claim_until = 0 WHERE run_id = ? AND status IN {_CLAIMABLE}",
                    (run_id,),
                )
            # Not the rows of runs still going, read at the moment of the update: on PostgreSQL a
            # run may start (and mark rows) while this transaction runs, and it is alive.
            result = cursor.execute(
                "UPDATE deliveries SET status = 'uncertain', run_id = NULL, claim_until = 0, updated_at = ?,"
                " last_text = 'the run sending it stopped before the server answered; not resent'"
                " WHERE issue_id = ? AND status = 'sending'"
                " AND (run_id IS NULL OR run_id NOT IN (SELECT id FROM runs WHERE finished_at IS NULL))",
                (now, issue_id),
            )
            changed = int(result.rowcount)  # read before COMMIT, which resets it
        return changed

    def release_uncertain(self, issue_id: int) -> int:
        """Put ``uncertain`` rows back to ``pending`` (``--resend-uncertain``); returns how many."""
        with self.store.transaction() as cursor:
            result = cursor.execute(
                "UPDATE deliveries SET status = 'pending', next_attempt_at = 0, run_id = NULL, claim_until = 0,"
                " updated_at = ? WHERE issue_id = ? AND status = 'uncertain'",
                (_stamp(), issue_id),
            )
            changed = int(result.rowcount)
        return changed

    def give_up_expired(self, issue_id: int, *, before: float) -> int:
        """Fail deferred rows first tried before ``before`` (unix time); returns how many."""
        with self.store.transaction() as cursor:
            result = cursor.execute(
                "UPDATE deliveries SET status = 'failed', updated_at = ?,"
                " last_text = 'gave up: still deferred after the maximum age; last: ' || coalesce(last_text, '')"
                " WHERE issue_id = ? AND status = 'deferred' AND first_attempt_at < ?",
                (_stamp(), issue_id, before),
            )
            changed = int(result.rowcount)
        return changed

    # --- sending ------------------------------------------------------------------------

    def claim(self, issue_id: int, run_id: int, *, now: float, limit: int, lease: float) -> list[Delivery]:
        """Reserve up to ``limit`` due rows for ``run_id`` (a soft claim other runs respect until ``lease`` ends)."""
        until = now + lease
        dialect = self.store.dialect
        # PostgreSQL: rows another worker is claiming right now are passed over, not waited for.
        skip_locked = dialect.skip_locked("d")
        with self.store.transaction() as cursor:
            rows: list[Any] = []
            # One status at a time, each through its partial index (deliveries_deferred,
            # deliveries_pending) in next_attempt_at order: the status must be a literal for
            # SQLite to use a partial index, and "status IN (…)" would sort every open row.
            for status in ("deferred", "pending"):
                rows += cursor.execute(
                    "SELECT d.subscriber_id, s.email, s.name, s.fields, d.message_id, d.attempts,"
                    " d.first_attempt_at FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id"
                    f" WHERE d.issue_id = ? AND d.status = '{status}' AND d.next_attempt_at <= ?"
                    # Not the rows this run holds already (they are in its queue), nor another's.
                    " AND (d.run_id IS NULL OR d.claim_until < ?)"
                    " ORDER BY d.next_attempt_at LIMIT ?" + skip_locked,
                    (issue_id, now, now, limit - len(rows)),
                ).fetchall()
                if len(rows) >= limit:
                    break
            # By primary key, row by row on SQLite; PostgreSQL: one statement for the batch.
            dialect.execute_each(
                cursor,
                "UPDATE deliveries SET run_id = ?, claim_until = ?"
                f" WHERE issue_id = ? AND subscriber_id {dialect.each_id}",
                (run_id, until, issue_id), [row["subscriber_id"] for row in rows],
            )
        return [
            Delivery(issue_id, int(row["subscriber_id"]), row["email"], row["name"],
                     json.loads(row["fields"]) if row["fields"] != "{}" else {},
                     row["message_id"], int(row["attempts"]), row["first_attempt_at"])
            for row in rows
        ]

    def record(self, run_id: int, list_id: int, results: Iterable[Result], marks: Sequence[Delivery], *,
               now: float) -> list[bool]:
        """One transaction: write ``results``, then mark each of ``marks`` ``sending``.

        A mark succeeds only if the row is still due, not held by another live run, and
        its subscriber is still active on the list (unsubscribes are re-checked here, at
        send time); a row whose subscriber left becomes ``skipped``. Returns, for each
        mark, whether this run may now send it.
        """
        stamp = _stamp(now)
        first_sent: list[int] = []
        dialect = self.store.dialect
        with self.store.transaction() as cursor:
            # The common case, sent, in one statement per reply code (nearly always just 250).
            by_code: dict[tuple[int, int | None], list[int]] = {}
            for result in results:
                if result.status == "sent":
                    by_code.setdefault((result.issue_id, result.code), []).append(result.subscriber_id)
            for (issue_id, code), sent_ids in by_code.items():
                if dialect.execute_each(
                    cursor, "UPDATE deliveries SET status = 'sent', sent_at = ?, last_code = ?, last_text = '',"
                    f" updated_at = ? WHERE issue_id = ? AND subscriber_id {dialect.each_id} AND status = 'sending'"
                    " AND run_id = ?",
                    (stamp, code, stamp, issue_id), sent_ids, (run_id,),
                ) > 0:
                    first_sent.append(issue_id)
            # The archive lists an issue from when its first message went out: kept on the issue's
            # row (the earliest stamp any run writes), so that no page ever reads the deliveries.
            first_sent = [issue_id for issue_id in dict.fromkeys(first_sent) if issue_id not in self._first_sent_noted]
            for issue_id in first_sent:
                cursor.execute(
                    "UPDATE issues SET first_sent_at = ? WHERE id = ? AND (first_sent_at IS NULL OR first_sent_at > ?)",
                    (stamp, issue_id, stamp),
                )
            for result in results:
                if result.status != "sent":
                    self._write_result(cursor, run_id, result, stamp)
            if not marks:
                return []
            issue_id = marks[0].issue_id
            if any(delivery.issue_id != issue_id for delivery in marks):
                raise ValueError("marks of one record() call belong to one issue")
            ids = [delivery.subscriber_id for delivery in marks]
            # PostgreSQL: one array parameter, so the statement's text (and plan) is the same
            # whatever the group's size; SQLite has no arrays: an IN list.
            members, id_values = dialect.in_ids(ids)
            # One statement for the whole group; RETURNING says which rows this run may send.
            granted_ids = {
                int(row[0]) for row in cursor.execute(
                    "UPDATE deliveries SET status = 'sending', attempts = attempts + 1, run_id = ?,"
                    " first_attempt_at = coalesce(first_attempt_at, ?), updated_at = ?"
                    f" WHERE issue_id = ? AND subscriber_id {members} AND status IN {_CLAIMABLE}"
                    " AND next_attempt_at <= ? AND (run_id IS NULL OR run_id = ? OR claim_until < ?)"
                    " AND EXISTS (SELECT 1 FROM subscribers s WHERE s.id = deliveries.subscriber_id"
                    "             AND s.status = 'active')"
                    " AND EXISTS (SELECT 1 FROM memberships m WHERE m.subscriber_id = deliveries.subscriber_id"
                    "             AND m.list_id = ? AND m.status = 'active')"
                    " RETURNING subscriber_id",
                    (run_id, now, stamp, issue_id, *id_values, now, run_id, now, list_id),
                ).fetchall()
            }
            for subscriber_id in ids:
                if subscriber_id not in granted_ids:
                    cursor.execute(
                        "UPDATE deliveries SET status = 'skipped', updated_at = ?,"
                        " last_text = 'unsubscribed or bounced before it was sent'"
                        f" WHERE issue_id = ? AND subscriber_id = ? AND status IN {_CLAIMABLE}"
                        " AND NOT (EXISTS (SELECT 1 FROM subscribers s WHERE s.id = deliveries.subscriber_id"
                        "                  AND s.status = 'active')"
                        "      AND EXISTS (SELECT 1 FROM memberships m WHERE m.subscriber_id = deliveries.subscriber_id"
                        "                  AND m.list_id = ? AND m.status = 'active'))",
                        (stamp, issue_id, subscriber_id, list_id),
                    )
        self._first_sent_noted.update(first_sent)  # committed: this run's later stamps can only be later
        # The same row twice in one group is granted once: only one send per row, ever.
        granted: list[bool] = []
        for subscriber_id in ids:
            granted.append(subscriber_id in granted_ids)
            granted_ids.discard(subscriber_id)
        return granted

    @staticmethod
    def _write_result(cursor: Cursor, run_id: int, result: Result, stamp: str) -> None:
        key = (result.issue_id, result.subscriber_id)
        guard = "WHERE issue_id = ? AND subscriber_id = ? AND status = 'sending' AND run_id = ?"
        if result.status == "sent":
            cursor.execute(
                "UPDATE deliveries SET status = 'sent', sent_at = ?, last_code = ?, last_text = ?,"
                f" updated_at = ? {guard}",
                (stamp, result.code, result.text, stamp, *key, run_id),
            )
        elif result.status == "deferred":
            cursor.execute(
                "UPDATE deliveries SET status = 'deferred', next_attempt_at = ?, last_code = ?, last_text = ?,"
                f" claim_until = 0, updated_at = ? {guard}",
                (result.next_attempt_at, result.code, result.text, stamp, *key, run_id),
            )
        elif result.status == "failed":
            cursor.execute(
                f"UPDATE deliveries SET status = 'failed', last_code = ?, last_text = ?, updated_at = ? {guard}",
                (result.code, result.text, stamp, *key, run_id),
            )
            if result.bounced:
                cursor.execute(
                    "UPDATE subscribers SET status = 'bounced', updated_at = ? WHERE id = ? AND status = 'active'",
                    (stamp, result.subscriber_id),
                )
        elif result.status == "uncertain":
            cursor.execute(
                "UPDATE deliveries SET status = 'uncertain', last_code = ?, last_text = ?, run_id = NULL,"
                f" claim_until = 0, updated_at = ? {guard}",
                (result.code, result.text, stamp, *key, run_id),
            )
        else:  # release: never started, so neither an attempt nor a deferral
            cursor.execute(
                "UPDATE deliveries SET status = CASE WHEN attempts > 1 THEN 'deferred' ELSE 'pending' END,"
                f" attempts = attempts - 1, claim_until = 0, updated_at = ? {guard}",
                (stamp, *key, run_id),
            )

    # --- reading --------------------------------------------------------------------------

    def next_due(self, issue_id: int) -> float | None:
        """When the earliest pending or deferred row comes due (unix time), or None when there is none."""
        times = [
            row[0] for status in ("pending", "deferred")
            if (row := self._query_one(
                f"SELECT min(next_attempt_at) FROM deliveries WHERE issue_id = ? AND status = '{status}'", (issue_id,)
            )) is not None and row[0] is not None
        ]
        return float(min(times)) if times else None

    def held_elsewhere(self, issue_id: int, run_id: int) -> int:
        """Rows not sent yet (claimed, or being sent) that another run holds, and that run is alive."""
        rows = self._query(
            "SELECT d.run_id, count(*) FROM deliveries d JOIN runs r ON r.id = d.run_id"
            " WHERE d.issue_id = ? AND d.status IN ('pending', 'deferred', 'sending') AND d.run_id <> ?"
            " AND r.finished_at IS NULL AND (d.status = 'sending' OR d.claim_until > ?) GROUP BY d.run_id",
            (issue_id, run_id, time.time()),
        )
        # A run that died still looks unfinished until recover() closes its books.
        return sum(int(row[1]) for row in rows if self.run_is_alive(int(row[0])))

    def counts(self, issue_id: int) -> dict[str, int]:
        """How many rows are in each state."""
        counts = dict.fromkeys(STATES, 0)
        for row in self._query("SELECT status, count(*) FROM deliveries WHERE issue_id = ? GROUP BY status",
                               (issue_id,)):
            counts[str(row[0])] = int(row[1])
        return counts

    def latest_errors(self, issue_id: int, limit: int = 10) -> list[dict[str, object]]:
        """The most recent deferred, failed, uncertain or skipped rows, newest first."""
        rows = self._query(
            "SELECT s.email, d.status, d.attempts, d.last_code, d.last_text, d.updated_at"
            " FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id"
            " WHERE d.issue_id = ? AND d.status IN ('deferred', 'failed', 'uncertain', 'skipped')"
            " ORDER BY d.updated_at DESC, d.subscriber_id LIMIT ?",
            (issue_id, limit),
        )
        return [
            {"email": row["email"], "status": row["status"], "attempts": row["attempts"], "code": row["last_code"],
             "text": row["last_text"] or "", "at": row["updated_at"]}
            for row in rows
        ]

    def reserve_sends(self, count: int, interval: float) -> float:
        """Reserve ``count`` sending slots ``interval`` seconds apart; returns when the first one is (unix time).

        The slots of every process on this database follow one another, so ``[smtp] rate``
        holds for all of them together. On PostgreSQL the database server's clock decides
        (machines' clocks differ); the answer is converted to this machine's clock.
        """
        with self.store.transaction() as cursor:
            return self.store.dialect.reserve(cursor, count * interval)

    def workers(self, *, window: float = 60.0) -> list[Worker]:
        """The runs alive now, with what each holds and its rate over the last ``window`` seconds."""
        since = _stamp(time.time() - window)
        rows = self._query(
            "SELECT r.id, r.host, r.pid, r.started_at,"
            " (SELECT count(*) FROM deliveries d WHERE d.run_id = r.id AND d.status IN ('pending', 'deferred'))"
            "   AS claimed,"
            " (SELECT count(*) FROM deliveries d WHERE d.run_id = r.id AND d.status = 'sending') AS sending,"
            " (SELECT count(*) FROM deliveries d WHERE d.run_id = r.id AND d.status = 'sent') AS sent,"
            " (SELECT count(*) FROM deliveries d WHERE d.run_id = r.id AND d.status = 'sent' AND d.sent_at >= ?)"
            "   AS recent"
            " FROM runs r WHERE r.finished_at IS NULL ORDER BY r.id",
            (since,),
        )
        return [
            Worker(int(row["id"]), str(row["host"]), int(row["pid"]), str(row["started_at"]), int(row["claimed"]),
                   int(row["sending"]), int(row["sent"]), int(row["recent"]) / window)
            for row in rows if self.run_is_alive(int(row["id"]))
        ]

    def sent_since(self, moment: float) -> int:
        """How many messages (all issues) were sent at or after ``moment`` (unix time)."""
        row = self._query_one("SELECT count(*) FROM deliveries WHERE sent_at >= ?", (_stamp(moment),))
        return int(row[0]) if row else 0

    def _query(self, sql: str, params: Sequence[object]) -> list[Any]:
        return self.store.query(sql, params)

    def _query_one(self, sql: str, params: Sequence[object]) -> Any:
        rows = self._query(sql, params)
        return rows[0] if rows else None
