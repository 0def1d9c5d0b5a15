"""Signups with double opt-in (issue 16 items 2 and 4, the store side): :class:`Signups`.

A signup (:meth:`Signups.request`, from the form, the JSON API or ``subscribers add
--pending``) makes ``pending`` memberships with a consent row each and queues one
confirmation email: a row of ``confirmations``, which is also its outbox entry. Nobody
pending is mailed an issue. :meth:`Signups.confirm` (the confirm page's POST) turns the
memberships active, once, and queues the welcome issues (``welcomes``: one per subscriber
and list, ever). :meth:`Signups.claim_mail` and :meth:`Signups.record_mail` are the outbox
the sender works through; :meth:`Signups.purge` drops signups nobody confirmed.

Abuse resistance, all in the database so that it holds across every ``serve`` process:

* at most one confirmation email per address within ``[signup] confirm_every_hours``: a
  signup within that time joins the confirmation already queued or sent (no new email), so
  a thousand signups for one victim send the victim one email and store one consent per list;
* ``per_network_per_hour`` signups from one network (a /24 or /48, :func:`truncate_ip`)
  and ``per_hour`` in all, each counted by one UPSERT … RETURNING in ``signup_counters``
  (an hour is a fixed window: from ``HH:00`` to the next). A signup over a limit stores
  nothing (not even its count). ``cli`` signups (an operator's) are not counted;
* the outcome tells the caller what to do (send now, or not), and nothing the web page may
  show: the page answers the same for ``queued``, ``joined`` and ``nothing`` (no enumeration).

A signup never renames an existing subscriber, never re-activates a suppressed one (bounced,
complained: ``nothing``), and a forgotten address may sign up again: only its confirmation
brings it back (and deletes its ``forgotten`` hash, when the keys are given).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from newsletter.config import SignupSettings
from newsletter.store.consent import clean_source, truncate_ip
from newsletter.store.dialect import Cursor
from newsletter.store.engine import Database
from newsletter.store.rights import forget_hash

__all__ = [
    "ConfirmResult",
    "ConfirmationView",
    "MailKind",
    "OutgoingMail",
    "PurgeCounts",
    "SignupMethod",
    "SignupOutcome",
    "SignupRequest",
    "Signups",
]

#: how a reader signed up: the form, the JSON API, ``subscribers add --pending``
SignupMethod = Literal["form", "api", "cli"]
#: the two kinds of email the outbox holds
MailKind = Literal["confirm", "welcome"]

#: the advisory lock keys (PostgreSQL) that serialize one subscriber's signups: "nlsu" << 32 | id
_SUBSCRIBER_LOCK = 0x6E6C_7375 << 32
#: how long a deferred email waits when the sender names no time
_DEFAULT_RETRY = dt.timedelta(minutes=5)
#: characters of an SMTP reply an outbox row keeps
_ERROR_LIMIT = 1000
#: counter windows older than this are purged
_COUNTER_KEEP = 86_400
_HOUR = 3600

# Statements named so that a test and the benchmark can EXPLAIN exactly these (the hot ones).
_COUNT = ("INSERT INTO signup_counters (key, window_start, count) VALUES (?, ?, 1)"
          " ON CONFLICT (key, window_start) DO UPDATE SET count = signup_counters.count + 1 RETURNING count")
_LATEST = ("SELECT id, created_at, expires_at, confirmed_at FROM confirmations WHERE subscriber_id = ?"
           " ORDER BY created_at DESC, id DESC LIMIT 1")
_MEMBERSHIPS = "SELECT list_id, status FROM memberships WHERE subscriber_id = ?"
_LISTS_OF = ("SELECT DISTINCT l.name FROM consents c JOIN lists l ON l.id = c.list_id"
             " WHERE c.confirmation_id = ? ORDER BY l.name")
_CONFIRM_DUE = ("SELECT c.id, c.subscriber_id, s.email, s.name, s.status AS person, c.created_at, c.expires_at,"
                " c.confirmed_at, c.attempts FROM confirmations c JOIN subscribers s ON s.id = c.subscriber_id"
                " WHERE c.status IN ('queued', 'sending') AND c.next_attempt_at <= ?{ids}"
                " ORDER BY c.next_attempt_at LIMIT ?{lock}")
_WELCOME_DUE = ("SELECT w.id, w.subscriber_id, s.email, s.name, s.status AS person, l.name AS list_name,"
                " m.status AS membership, w.created_at, w.attempts FROM welcomes w"
                " JOIN subscribers s ON s.id = w.subscriber_id JOIN lists l ON l.id = w.list_id"
                " LEFT JOIN memberships m ON m.list_id = w.list_id AND m.subscriber_id = w.subscriber_id"
                " WHERE w.status IN ('queued', 'sending') AND w.next_attempt_at <= ?"
                " ORDER BY w.next_attempt_at LIMIT ?{lock}")
_EXPIRED = "SELECT id, subscriber_id FROM confirmations WHERE confirmed_at IS NULL AND expires_at < ?"
_PENDING_OLD = "SELECT subscriber_id, list_id FROM memberships WHERE status = 'pending' AND updated_at < ?"


@dataclass(frozen=True)
class SignupRequest:
    """One signup as the web side or the command line received it."""

    #: already normalised by the caller (``store.subscriber_files.normalise_address``)
    email: str
    #: list names; the caller has checked they are offered (``[lists.NAME] signup = true``)
    lists: tuple[str, ...]
    method: SignupMethod
    #: set only on a subscriber that is new (a signup never renames someone)
    name: str = ""
    #: the form's page (Referer or a hidden ``source`` field): untrusted text
    source: str = ""
    #: the client's address; stored only truncated (:func:`truncate_ip`); not an address: not kept
    ip: str | None = None


@dataclass(frozen=True)
class SignupOutcome:
    """What :meth:`Signups.request` did. Only ``limited`` may show on a page: the rest answer alike."""

    #: "queued": a new confirmation email waits in the outbox (send it now: ``confirmation_id``);
    #: "joined": within confirm_every_hours of the last confirmation email, the new pending
    #: consents ride on that confirmation (no new email; its page lists every list);
    #: "nothing": already active on every list asked for, or the address is suppressed
    #: (bounced, complained): no email, no change;
    #: "limited": the network's or the global per-hour limit is reached: nothing stored
    status: Literal["queued", "joined", "nothing", "limited"]
    confirmation_id: int | None = None


@dataclass(frozen=True)
class ConfirmationView:
    """What the confirm page (GET) shows about one confirmation."""

    email: str
    #: the lists it confirms (the pending consents attached to it), by name
    lists: tuple[str, ...]
    #: confirmed already (the page says so; a POST again is harmless)
    confirmed: bool
    #: past its expiry and not confirmed
    expired: bool


@dataclass(frozen=True)
class ConfirmResult:
    """What :meth:`Signups.confirm` did."""

    status: Literal["confirmed", "already", "expired", "unknown"]
    email: str = ""
    #: the lists of this confirmation that are active now (for the page)
    lists: tuple[str, ...] = ()


@dataclass(frozen=True)
class OutgoingMail:
    """One email of the outbox, claimed for sending (:meth:`Signups.claim_mail`)."""

    kind: MailKind
    #: ``confirmations.id`` or ``welcomes.id``
    id: int
    subscriber_id: int
    email: str
    name: str
    #: confirm: the lists it asks about; welcome: the one list
    lists: tuple[str, ...]
    #: confirm: the last day its link works (the token's expiry); welcome: None
    expires: dt.date | None
    #: attempts so far, this one included (1 the first time)
    attempts: int
    #: when the email was queued (a sender gives up after ``[dispatch] give_up_after_hours``)
    created_at: dt.datetime | None = None


@dataclass(frozen=True)
class PurgeCounts:
    """What :meth:`Signups.purge` deleted."""

    consents: int
    memberships: int
    subscribers: int
    confirmations: int
    counters: int

    def __bool__(self) -> bool:
        return any((self.consents, self.memberships, self.subscribers, self.confirmations, self.counters))


class _Limited(Exception):
    """Raised inside a signup's transaction to roll its counts back."""


def _utc(now: dt.datetime | None) -> dt.datetime:
    """``now`` (default: the clock) in UTC; a naive time counts as UTC."""
    if now is None:
        return dt.datetime.now(dt.UTC)
    return now.replace(tzinfo=dt.UTC) if now.tzinfo is None else now.astimezone(dt.UTC)


def _iso(moment: dt.datetime) -> str:
    """As the tables keep times: ``2026-03-01T10:00:00+00:00`` (text that sorts as time does)."""
    return moment.isoformat(timespec="seconds")


def _parse(text: str) -> dt.datetime:
    return _utc(dt.datetime.fromisoformat(text))


def _network(ip: str | None) -> str | None:
    """The network a consent and a counter keep of ``ip``; None when it isn't an address (a test client)."""
    if ip is None:
        return None
    try:
        return truncate_ip(ip)
    except ValueError:
        return None


class Signups:
    """Signups, confirmations and the outbox of confirmation and welcome emails, over an open database.

    ``forget_keys`` are ``NEWSLETTER_SECRET_KEY``'s: with them, a confirmation deletes the
    ``forgotten`` hash of an address that was forgotten before (the person came back by their
    own double opt-in); without them the hash stays (harmless: the new row is found by address).
    """

    def __init__(self, store: Database, settings: SignupSettings, *, forget_keys: Sequence[bytes] = ()) -> None:
        self.store = store
        self.settings = settings
        self.forget_keys = tuple(forget_keys)

    # --- signing up ------------------------------------------------------------------------

    def request(self, request: SignupRequest, *, now: dt.datetime | None = None) -> SignupOutcome:
        """Record one signup in one transaction; what happened (see :class:`SignupOutcome`).

        Limits first (``signup_counters``; not for ``cli``), then the subscriber (a new one
        gets ``name``), a ``pending`` membership and a consent row (with the confirmation) for
        each list asked for that they aren't active on, and a ``queued`` confirmation, unless
        one was created for this subscriber within ``confirm_every_hours`` and is still
        unconfirmed and unexpired: then the consents join it (``joined``), and a list that
        already has a consent on it gets none again. A thousand signups for one address
        queue one confirmation and store one consent per list.
        """
        if not request.lists:
            raise ValueError("a signup names at least one list")
        if request.method not in get_args(SignupMethod):
            raise ValueError(f"signup method {request.method!r}: not one of {', '.join(get_args(SignupMethod))}")
        moment = _utc(now)
        stamp = _iso(moment)
        network = _network(request.ip)
        key = request.email.strip().lower()
        try:
            with self.store.transaction() as cursor:
                if request.method != "cli":
                    self._count(cursor, network, moment)
                subscriber_id, person = self._subscriber(cursor, request, key, stamp)
                self.store.serialize(cursor, _SUBSCRIBER_LOCK | subscriber_id)
                if person not in ("active", "unsubscribed"):
                    return SignupOutcome("nothing")  # suppressed (or forgotten since: never mailed)
                list_ids = [self._list_id(cursor, name) for name in dict.fromkeys(request.lists)]
                memberships = {int(row[0]): str(row[1])
                               for row in cursor.execute(_MEMBERSHIPS, (subscriber_id,)).fetchall()}
                wanted = [list_id for list_id in list_ids
                          if not (person == "active" and memberships.get(list_id) == "active")]
                if not wanted:
                    return SignupOutcome("nothing")
                confirmation_id, joined = self._confirmation(cursor, subscriber_id, moment)
                already = set()
                if joined:
                    already = {int(row[0]) for row in cursor.execute(
                        "SELECT list_id FROM consents WHERE confirmation_id = ?", (confirmation_id,)).fetchall()}
                source = clean_source(request.source)
                for list_id in wanted:
                    if list_id not in memberships:
                        cursor.execute("INSERT INTO memberships (list_id, subscriber_id, status, created_at,"
                                       " updated_at) VALUES (?, ?, 'pending', ?, ?)",
                                       (list_id, subscriber_id, stamp, stamp))
                    elif memberships[list_id] == "pending":
                        # Fresh again: purge ends pending memberships by this time.
                        cursor.execute("UPDATE memberships SET updated_at = ? WHERE list_id = ? AND subscriber_id = ?"
                                       " AND status = 'pending'", (stamp, list_id, subscriber_id))
                    # An ended membership stays ended until the confirmation: a signup in someone
                    # else's name must not change what they chose (and purge never deletes it).
                    if list_id not in already:
                        cursor.execute(
                            "INSERT INTO consents (subscriber_id, list_id, method, source, ip_prefix, requested_at,"
                            " confirmation_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (subscriber_id, list_id, request.method, source, network, stamp, confirmation_id))
        except _Limited:
            return SignupOutcome("limited")
        return SignupOutcome("joined" if joined else "queued", confirmation_id)

    def _count(self, cursor: Cursor, network: str | None, moment: dt.datetime) -> None:
        """Count this signup in its network's and the global window; _Limited when one is past its limit."""
        window = int(moment.timestamp()) // _HOUR * _HOUR
        limits = [(f"net:{network}", self.settings.per_network_per_hour)] if network is not None else []
        limits.append(("all", self.settings.per_hour))
        for counter, limit in limits:
            if limit <= 0:
                continue  # no limit
            count = int(cursor.execute(_COUNT, (counter, window)).fetchone()[0])
            if count > limit:
                raise _Limited

    def _subscriber(self, cursor: Cursor, request: SignupRequest, key: str, stamp: str) -> tuple[int, str]:
        """(id, status) of the subscriber with address ``key``, made (with the request's name) if there is none."""
        row = cursor.execute("SELECT id, status FROM subscribers WHERE email_key = ?", (key,)).fetchone()
        if row is None:
            # ON CONFLICT: another process may be adding the same address right now (PostgreSQL).
            row = cursor.execute(
                "INSERT INTO subscribers (email, email_key, name, created_at, updated_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (email_key) DO NOTHING RETURNING id, status",
                (request.email.strip(), key, request.name.strip(), stamp, stamp)).fetchone()
            if row is None:
                row = cursor.execute("SELECT id, status FROM subscribers WHERE email_key = ?", (key,)).fetchone()
        return int(row[0]), str(row[1])

    @staticmethod
    def _list_id(cursor: Cursor, name: str) -> int:
        cursor.execute("INSERT INTO lists (name) VALUES (?) ON CONFLICT DO NOTHING", (name,))
        return int(cursor.execute("SELECT id FROM lists WHERE name = ?", (name,)).fetchone()[0])

    def _confirmation(self, cursor: Cursor, subscriber_id: int, moment: dt.datetime) -> tuple[int, bool]:
        """The confirmation this signup's consents go with: (its id, whether it was there already)."""
        stamp = _iso(moment)
        latest = cursor.execute(_LATEST, (subscriber_id,)).fetchone()
        recent = _iso(moment - dt.timedelta(hours=self.settings.confirm_every_hours))
        if (latest is not None and latest["confirmed_at"] is None and str(latest["created_at"]) > recent
                and str(latest["expires_at"]) >= stamp):
            return int(latest["id"]), True
        # The link works to the end of its last day (UTC), the day the email and the token name.
        last_day = (moment + dt.timedelta(days=self.settings.pending_days)).date()
        expires = _iso(dt.datetime.combine(last_day, dt.time(23, 59, 59), dt.UTC))
        row = cursor.execute(
            "INSERT INTO confirmations (subscriber_id, created_at, expires_at, status, next_attempt_at)"
            " VALUES (?, ?, ?, 'queued', ?) RETURNING id",
            (subscriber_id, stamp, expires, moment.timestamp())).fetchone()
        return int(row[0]), False

    # --- confirming ------------------------------------------------------------------------

    def confirmation(self, confirmation_id: int, *, now: dt.datetime | None = None) -> ConfirmationView | None:
        """What the confirm page shows about ``confirmation_id`` (changing nothing), or None when there is none."""
        stamp = _iso(_utc(now))
        with self.store.snapshot():
            rows = self.store.query("SELECT s.email, c.expires_at, c.confirmed_at FROM confirmations c"
                                    " JOIN subscribers s ON s.id = c.subscriber_id WHERE c.id = ?", (confirmation_id,))
            if not rows:
                return None
            lists = tuple(str(row[0]) for row in self.store.query(_LISTS_OF, (confirmation_id,)))
        row = rows[0]
        confirmed = row["confirmed_at"] is not None
        return ConfirmationView(str(row["email"]), lists, confirmed,
                                not confirmed and str(row["expires_at"]) < stamp)

    def confirm(self, confirmation_id: int, *, now: dt.datetime | None = None,
                welcome_lists: Collection[str] = ()) -> ConfirmResult:
        """Confirm ``confirmation_id`` (the confirm page's POST), idempotently, in one transaction.

        Its consents get ``confirmed_at``; each of its lists' memberships turns active when it
        is pending, or ended *before* the signup asked for it (a reader who left and signed up
        again); one ended since stays ended. A subscriber removed from everything is active
        again with these lists. The ``forgotten`` hash of the address goes (with
        ``forget_keys``). Each list that turned active and is in ``welcome_lists`` (its
        ``[lists.NAME] welcome`` is set) gets a ``welcomes`` row, queued once ever.
        """
        moment = _utc(now)
        stamp = _iso(moment)
        with self.store.transaction() as cursor:
            row = cursor.execute("SELECT subscriber_id FROM confirmations WHERE id = ?", (confirmation_id,)).fetchone()
            if row is None:
                return ConfirmResult("unknown")
            subscriber_id = int(row[0])
            self.store.serialize(cursor, _SUBSCRIBER_LOCK | subscriber_id)
            person = cursor.execute("SELECT email, status FROM subscribers WHERE id = ?", (subscriber_id,)).fetchone()
            email = str(person["email"])
            changed = cursor.execute("UPDATE confirmations SET confirmed_at = ? WHERE id = ? AND confirmed_at IS NULL"
                                     " AND expires_at >= ?", (stamp, confirmation_id, stamp)).rowcount
            if not changed:
                confirmed = cursor.execute("SELECT confirmed_at FROM confirmations WHERE id = ?",
                                           (confirmation_id,)).fetchone()[0]
                if confirmed is None:
                    return ConfirmResult("expired", email)
                return ConfirmResult("already", email, self._active_lists(cursor, confirmation_id, subscriber_id))
            cursor.execute("UPDATE consents SET confirmed_at = ? WHERE confirmation_id = ? AND confirmed_at IS NULL",
                           (stamp, confirmation_id))
            activated: list[tuple[int, str]] = []
            if person["status"] in ("active", "unsubscribed"):  # not a suppressed one (bounced since)
                for found in cursor.execute(
                        "SELECT c.list_id, l.name, max(c.requested_at) FROM consents c JOIN lists l ON l.id = c.list_id"
                        " WHERE c.confirmation_id = ? GROUP BY c.list_id, l.name", (confirmation_id,)).fetchall():
                    list_id, name, requested = int(found[0]), str(found[1]), str(found[2])
                    if cursor.execute(
                            "UPDATE memberships SET status = 'active', updated_at = ? WHERE subscriber_id = ?"
                            " AND list_id = ? AND (status = 'pending'"
                            " OR (status = 'unsubscribed' AND updated_at <= ?))",
                            (stamp, subscriber_id, list_id, requested)).rowcount:
                        activated.append((list_id, name))
                if activated:
                    cursor.execute("UPDATE subscribers SET status = 'active', updated_at = ?"
                                   " WHERE id = ? AND status = 'unsubscribed'", (stamp, subscriber_id))
            for list_id, name in activated:
                if name in welcome_lists:
                    cursor.execute("INSERT INTO welcomes (subscriber_id, list_id, created_at, status, next_attempt_at)"
                                   " VALUES (?, ?, ?, 'queued', ?) ON CONFLICT DO NOTHING",
                                   (subscriber_id, list_id, stamp, moment.timestamp()))
            if self.forget_keys:
                hashes = [forget_hash(email, key) for key in self.forget_keys]
                cursor.execute(f"DELETE FROM forgotten WHERE hash IN ({','.join('?' * len(hashes))})", hashes)
            lists = self._active_lists(cursor, confirmation_id, subscriber_id)
        return ConfirmResult("confirmed", email, lists)

    @staticmethod
    def _active_lists(cursor: Cursor, confirmation_id: int, subscriber_id: int) -> tuple[str, ...]:
        """The lists of a confirmation that its subscriber gets now."""
        return tuple(str(row[0]) for row in cursor.execute(
            "SELECT DISTINCT l.name FROM consents c JOIN lists l ON l.id = c.list_id"
            " JOIN memberships m ON m.list_id = c.list_id AND m.subscriber_id = ?"
            " JOIN subscribers s ON s.id = m.subscriber_id"
            " WHERE c.confirmation_id = ? AND m.status = 'active' AND s.status = 'active' ORDER BY l.name",
            (subscriber_id, confirmation_id)).fetchall())

    # --- the outbox ------------------------------------------------------------------------

    def claim_mail(self, *, ids: Sequence[int] | None = None, kinds: Collection[MailKind] = ("confirm", "welcome"),
                   limit: int = 100, now: dt.datetime | None = None, lease_seconds: float = 600) -> list[OutgoingMail]:
        """Claim queued emails that are due (or exactly the confirmations ``ids``, when due) for sending.

        Each claimed row is ``sending`` until :meth:`record_mail`, for ``lease_seconds``: a
        row whose lease passed (its sender crashed) is due again. Two processes never claim
        the same row at once. Rows that shouldn't go out any more are closed as ``failed``
        with the reason, not returned: a confirmation confirmed or expired meanwhile, a
        welcome to someone who left the list, anything to a suppressed or forgotten address.
        """
        if limit <= 0 or lease_seconds <= 0:
            raise ValueError("limit and lease_seconds are positive")
        moment = _utc(now)
        claimed: list[OutgoingMail] = []
        with self.store.transaction() as cursor:
            if "confirm" in kinds:
                claimed += self._claim_confirmations(cursor, ids, limit, moment, lease_seconds)
            if "welcome" in kinds and ids is None and len(claimed) < limit:
                claimed += self._claim_welcomes(cursor, limit - len(claimed), moment, lease_seconds)
        return claimed

    def _claim_confirmations(self, cursor: Cursor, ids: Sequence[int] | None, limit: int, moment: dt.datetime,
                             lease: float) -> list[OutgoingMail]:
        params: list[Any] = [moment.timestamp()]
        condition = ""
        if ids is not None:
            if not ids:
                return []
            operator, values = self.store.dialect.in_ids(ids)
            condition = f" AND c.id {operator}"
            params += values
        sql = _CONFIRM_DUE.format(ids=condition, lock=self.store.dialect.skip_locked("c"))
        stamp = _iso(moment)
        claimed: list[OutgoingMail] = []
        for row in cursor.execute(sql, (*params, limit)).fetchall():
            reason = ("confirmed before it was sent" if row["confirmed_at"] is not None
                      else "expired before it was sent" if str(row["expires_at"]) < stamp
                      else "the address is suppressed" if row["person"] != "active" and row["person"] != "unsubscribed"
                      else "")
            if reason:
                self._close(cursor, "confirmations", int(row["id"]), f"not sent: {reason}")
                continue
            self._lease(cursor, "confirmations", int(row["id"]), moment, lease)
            lists = tuple(str(found[0]) for found in cursor.execute(_LISTS_OF, (row["id"],)).fetchall())
            claimed.append(OutgoingMail("confirm", int(row["id"]), int(row["subscriber_id"]), str(row["email"]),
                                        str(row["name"]), lists, _parse(str(row["expires_at"])).date(),
                                        int(row["attempts"]) + 1, _parse(str(row["created_at"]))))
        return claimed

    def _claim_welcomes(self, cursor: Cursor, limit: int, moment: dt.datetime, lease: float) -> list[OutgoingMail]:
        sql = _WELCOME_DUE.format(lock=self.store.dialect.skip_locked("w"))
        claimed: list[OutgoingMail] = []
        for row in cursor.execute(sql, (moment.timestamp(), limit)).fetchall():
            if row["person"] != "active" or row["membership"] != "active":
                self._close(cursor, "welcomes", int(row["id"]), "not sent: no longer on the list")
                continue
            self._lease(cursor, "welcomes", int(row["id"]), moment, lease)
            claimed.append(OutgoingMail("welcome", int(row["id"]), int(row["subscriber_id"]), str(row["email"]),
                                        str(row["name"]), (str(row["list_name"]),), None, int(row["attempts"]) + 1,
                                        _parse(str(row["created_at"]))))
        return claimed

    @staticmethod
    def _lease(cursor: Cursor, table: str, row_id: int, moment: dt.datetime, lease: float) -> None:
        # While it is being sent, next_attempt_at is when the lease ends: then it is due again.
        cursor.execute(f"UPDATE {table} SET status = 'sending', claimed_at = ?, next_attempt_at = ?,"
                       " attempts = attempts + 1 WHERE id = ?",
                       (moment.timestamp(), moment.timestamp() + lease, row_id))

    @staticmethod
    def _close(cursor: Cursor, table: str, row_id: int, reason: str) -> None:
        cursor.execute(f"UPDATE {table} SET status = 'failed', last_error = ? WHERE id = ?", (reason, row_id))

    def record_mail(self, mail: OutgoingMail, outcome: Literal["sent", "deferred", "failed"], *,
                    message_id: str = "", detail: str = "", retry_at: dt.datetime | None = None,
                    now: dt.datetime | None = None) -> None:
        """Record how sending ``mail`` went: ``sent`` (with its Message-ID), ``deferred`` (queued
        again for ``retry_at``, default in five minutes) or ``failed`` (for good); ``detail`` is the
        server's reply. A row recorded ``sent`` stays sent, whatever a slower sender reports later."""
        moment = _utc(now)
        table = "confirmations" if mail.kind == "confirm" else "welcomes"
        detail = detail[:_ERROR_LIMIT]
        with self.store.transaction() as cursor:
            if outcome == "sent":
                cursor.execute(f"UPDATE {table} SET status = 'sent', sent_at = ?, message_id = ?, last_error = ?"
                               " WHERE id = ?", (_iso(moment), message_id, detail, mail.id))
            elif outcome == "deferred":
                retry = _utc(retry_at) if retry_at is not None else moment + _DEFAULT_RETRY
                cursor.execute(f"UPDATE {table} SET status = 'queued', next_attempt_at = ?, last_error = ?"
                               " WHERE id = ? AND status <> 'sent'", (retry.timestamp(), detail, mail.id))
            elif outcome == "failed":
                cursor.execute(f"UPDATE {table} SET status = 'failed', last_error = ?"
                               " WHERE id = ? AND status <> 'sent'", (detail, mail.id))
            else:
                raise ValueError(f"outcome {outcome!r}: sent, deferred or failed")

    # --- purging -----------------------------------------------------------------------------

    def purge(self, *, now: dt.datetime | None = None) -> PurgeCounts:
        """Drop the signups nobody confirmed, in one transaction; what went.

        The consents of confirmations past their expiry (``pending_days``) and those
        confirmations; pending memberships untouched for ``pending_days`` with no consent left;
        then the subscribers of those left with nothing at all (no membership, delivery,
        feedback, consent, confirmation or welcome); and counter windows older than a day.
        An ended membership is never deleted (it records that someone left).
        """
        moment = _utc(now)
        stamp = _iso(moment)
        cutoff = _iso(moment - dt.timedelta(days=self.settings.pending_days))
        consents = memberships = subscribers = confirmations = 0
        with self.store.transaction() as cursor:
            expired = [(int(row[0]), int(row[1])) for row in cursor.execute(_EXPIRED, (stamp,)).fetchall()]
            pending = [(int(row[0]), int(row[1])) for row in cursor.execute(_PENDING_OLD, (cutoff,)).fetchall()]
            people = sorted({person for _, person in expired} | {person for person, _ in pending})
            for subscriber_id in people:  # in order: two purges never wait for each other in a circle
                self.store.serialize(cursor, _SUBSCRIBER_LOCK | subscriber_id)
            for confirmation_id, _ in expired:
                consents += cursor.execute("DELETE FROM consents WHERE confirmation_id = ? AND confirmed_at IS NULL",
                                           (confirmation_id,)).rowcount
                # A consent confirmed through another link keeps its record, without the link.
                cursor.execute("UPDATE consents SET confirmation_id = NULL WHERE confirmation_id = ?",
                               (confirmation_id,))
                confirmations += cursor.execute("DELETE FROM confirmations WHERE id = ? AND confirmed_at IS NULL",
                                                (confirmation_id,)).rowcount
            for subscriber_id, list_id in pending:
                memberships += cursor.execute(
                    "DELETE FROM memberships WHERE subscriber_id = ? AND list_id = ? AND status = 'pending'"
                    " AND updated_at < ? AND NOT EXISTS (SELECT 1 FROM consents c"
                    " WHERE c.subscriber_id = memberships.subscriber_id AND c.list_id = memberships.list_id)",
                    (subscriber_id, list_id, cutoff)).rowcount
            for subscriber_id in people:
                subscribers += cursor.execute(
                    "DELETE FROM subscribers WHERE id = ? AND status IN ('active', 'unsubscribed')"
                    " AND NOT EXISTS (SELECT 1 FROM memberships m WHERE m.subscriber_id = subscribers.id)"
                    " AND NOT EXISTS (SELECT 1 FROM consents c WHERE c.subscriber_id = subscribers.id)"
                    " AND NOT EXISTS (SELECT 1 FROM confirmations c WHERE c.subscriber_id = subscribers.id)"
                    " AND NOT EXISTS (SELECT 1 FROM welcomes w WHERE w.subscriber_id = subscribers.id)"
                    " AND NOT EXISTS (SELECT 1 FROM feedback f WHERE f.subscriber_id = subscribers.id)"
                    # deliveries: one search of its primary key per issue (there is no index by subscriber)
                    " AND NOT EXISTS (SELECT 1 FROM issues i CROSS JOIN deliveries d"
                    "                 WHERE d.issue_id = i.id AND d.subscriber_id = subscribers.id)",
                    (subscriber_id,)).rowcount
            window = int(moment.timestamp()) // _HOUR * _HOUR - _COUNTER_KEEP
            counters = cursor.execute("DELETE FROM signup_counters WHERE window_start < ?", (window,)).rowcount
        return PurgeCounts(consents, memberships, subscribers, confirmations, counters)
