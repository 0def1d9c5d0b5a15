"""What comes back by mail, as the store keeps it: bounces, complaints and unsubscribes (:class:`Feedback`).

The inbound stage classifies a returned message and finds its delivery (the signed VERP
address, or the original Message-ID through :meth:`Feedback.delivery_by_message_id`); this
repository records each finding on that delivery and applies the policy:

* a **hard bounce** (a permanent failure, 5.x.x) makes the subscriber ``bounced`` at once,
  as a permanent failure during dispatch does: they get no list any more, their
  memberships stay as they were (so an operator who clears the status gives them back);
* a **soft bounce** (a temporary failure the relay gave up on, 4.x.x) counts; ``soft_limit``
  of them within ``soft_window_days`` make the subscriber ``bounced``. A soft bounce counts
  at most once a UTC day and at most once an issue (its first day): a burst of reports
  for one message, or an issue's report arriving twice a day apart, is one bounce, as
  Mailman's bounce score counts at most one a day. The window is days: with 3 in 30, soft
  bounces on days 1, 2 and 30 make it (days 1..30), on days 1, 2 and 31 they don't;
* a **complaint** (an abuse report through a feedback loop) ends every membership and
  makes the subscriber ``complained``: never mailed again, never re-activated by an
  import, and their own "subscribe again" can't bring them back (only an operator);
* an **unsubscribe** by mail ends the membership of that issue's list (the web POST's
  effect; calling :meth:`~newsletter.store.subscribers.Store.leave_list` too is harmless).

Each event's ``fingerprint`` (the report's Message-ID and recipient, say) is unique: the
same report processed twice is recorded once and changes nothing the second time.

:meth:`Feedback.issue_feedback` counts them per issue for ``newsletter status``.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, Literal

from newsletter.store.engine import Database

__all__ = [
    "COMPLAINT_WARNING",
    "FEEDBACK_KINDS",
    "Feedback",
    "FeedbackOutcome",
    "HARD_BOUNCE_WARNING",
    "RATED",
    "SOFT_LIMIT",
    "SOFT_WINDOW_DAYS",
    "feedback_rates",
    "feedback_warnings",
]

#: what :meth:`Feedback.record_feedback` records
FEEDBACK_KINDS = ("hard_bounce", "soft_bounce", "complaint", "unsubscribe")
#: soft bounces (on distinct days and issues) that make a subscriber ``bounced``: ``[bounces] soft_limit``
SOFT_LIMIT = 3
#: within this many days: ``[bounces] soft_window_days``
SOFT_WINDOW_DAYS = 30

#: what :meth:`Feedback.record_feedback` did
FeedbackOutcome = Literal["bounced", "soft", "complained", "unsubscribed", "duplicate", "unchanged", "unknown"]

#: which finding a delivery row keeps when several come back for it: the worst
_RANK = {"soft_bounce": 1, "hard_bounce": 2, "complaint": 3}
#: the advisory lock keys (PostgreSQL) that serialize one subscriber's feedback: "nlfb" << 32 | id
_SUBSCRIBER_LOCK = 0x6E6C_6662 << 32
_DAY = 86_400

# The statements of record_feedback, named so that the benchmark explains exactly these.
_BY_MESSAGE_ID = ("SELECT d.issue_id, d.subscriber_id, s.email FROM issues i"
                  " JOIN deliveries d ON d.issue_id = i.id AND d.subscriber_id = ?"
                  " JOIN subscribers s ON s.id = d.subscriber_id WHERE i.slug = ? AND d.message_id = ?")
_DELIVERY = ("SELECT s.status, i.list_id FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id"
             " JOIN issues i ON i.id = d.issue_id WHERE d.issue_id = ? AND d.subscriber_id = ?")
_INSERT = ("INSERT INTO feedback (issue_id, subscriber_id, kind, status, diagnostic, at, day, fingerprint)"
           " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (fingerprint) DO NOTHING RETURNING id")
_NOTE = ("UPDATE deliveries SET feedback = ?, feedback_status = ?, feedback_text = ?, feedback_at = ?"
         " WHERE issue_id = ? AND subscriber_id = ? AND (feedback IS NULL OR"
         " CASE feedback WHEN 'complaint' THEN 3 WHEN 'hard_bounce' THEN 2 ELSE 1 END <= ?)")
_LEAVE_LIST = ("UPDATE memberships SET status = 'unsubscribed', updated_at = ?"
               " WHERE subscriber_id = ? AND list_id = ? AND status = 'active'")
_LEAVE_ALL = ("UPDATE memberships SET status = 'unsubscribed', updated_at = ?"
              " WHERE subscriber_id = ? AND status = 'active'")
# A forgotten subscriber stays forgotten (issue 16: their row must not look like anyone's again).
_COMPLAINED = ("UPDATE subscribers SET status = 'complained', updated_at = ?"
               " WHERE id = ? AND status NOT IN ('complained', 'forgotten')")
_BOUNCED = ("UPDATE subscribers SET status = 'bounced', updated_at = ?"
            " WHERE id = ? AND status IN ('active', 'unsubscribed')")
#: each issue's first soft-bounce day near a day, for one subscriber
_SOFT_DAYS = ("SELECT min(day) FROM feedback WHERE subscriber_id = ? AND kind = 'soft_bounce'"
              " GROUP BY issue_id HAVING min(day) > ? AND min(day) < ?")


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class Feedback:
    """Bounces, complaints and mail unsubscribes over an open database, with the soft-bounce policy."""

    def __init__(self, store: Database, *, soft_limit: int = SOFT_LIMIT,
                 soft_window_days: int = SOFT_WINDOW_DAYS) -> None:
        if soft_limit < 1 or soft_window_days < 1:
            raise ValueError("soft_limit and soft_window_days must be at least 1")
        self.store = store
        self.soft_limit = soft_limit
        self.soft_window_days = soft_window_days

    # --- finding the delivery ---------------------------------------------------------

    def delivery_by_message_id(self, message_id: str) -> tuple[int, int, str] | None:
        """(issue id, subscriber id, address) of the delivery whose Message-ID is ``message_id``; None if none.

        ``<>`` and spaces around it are ignored. The ledger makes every Message-ID
        ``<slug>.<subscriber id>@<domain>`` (:meth:`~newsletter.store.ledger.Ledger.open_issue`),
        so the lookup is the issue's slug (unique index) and the delivery's primary key,
        then the whole Message-ID compared: two index searches at any size, and no index on
        message_id for every dispatch to keep up to date.
        """
        text = message_id.strip().strip("<>").strip()
        local, at, _ = text.rpartition("@")
        slug, dot, number = local.rpartition(".")
        if not (at and dot and slug and number.isascii() and number.isdigit() and len(number) <= 18):
            return None
        rows = self.store.query(_BY_MESSAGE_ID, (int(number), slug, text))
        if not rows:
            return None
        return int(rows[0][0]), int(rows[0][1]), str(rows[0][2])

    # --- recording ---------------------------------------------------------------------

    def record_feedback(self, *, issue_id: int, subscriber_id: int, kind: str, status: str | None,
                        diagnostic: str, fingerprint: str, at: float | None = None) -> FeedbackOutcome:
        """Record one finding on its delivery and apply the policy, in one transaction; what changed.

        ``kind`` is one of :data:`FEEDBACK_KINDS`; ``status`` the RFC 3463 code when known;
        ``at`` when it happened (unix time; default now). Returns ``"bounced"`` (a hard
        bounce, or the soft limit reached), ``"soft"`` (counted, not yet bounced),
        ``"complained"``, ``"unsubscribed"`` (the issue's list no longer sends to them),
        ``"unchanged"`` (recorded, but the subscriber was bounced or complained already),
        ``"duplicate"`` (``fingerprint`` seen before: nothing recorded or changed) or
        ``"unknown"`` (the ledger has no such delivery: nothing recorded).
        """
        if kind not in FEEDBACK_KINDS:
            raise ValueError(f"unknown feedback kind {kind!r} (known: {', '.join(FEEDBACK_KINDS)})")
        moment = time.time() if at is None else float(at)
        day = int(moment // _DAY)
        now = _stamp()
        with self.store.transaction() as cursor:
            # PostgreSQL: one subscriber's reports one at a time, or two soft bounces processed
            # side by side would each count the other's absence. (SQLite: one writer anyway.)
            self.store.serialize(cursor, _SUBSCRIBER_LOCK | subscriber_id)
            row = cursor.execute(_DELIVERY, (issue_id, subscriber_id)).fetchone()
            if row is None:
                return "unknown"
            person, list_id = str(row[0]), row[1]
            if person == "forgotten":
                # A late report about someone forgotten still counts in its issue's figures, but
                # its text (which may quote their address) is not kept.
                diagnostic = ""
            inserted = cursor.execute(
                _INSERT, (issue_id, subscriber_id, kind, status, diagnostic, moment, day, fingerprint)).fetchone()
            if inserted is None:
                return "duplicate"
            if kind in _RANK:
                # The delivery keeps the worst finding so far (complaint > hard > soft), the latest of equals.
                cursor.execute(_NOTE, (kind, status, diagnostic, moment, issue_id, subscriber_id, _RANK[kind]))
            if kind == "unsubscribe":
                cursor.execute(_LEAVE_LIST, (now, subscriber_id, list_id))
                return "unsubscribed"
            if kind == "complaint":
                ended = cursor.execute(_LEAVE_ALL, (now, subscriber_id)).rowcount
                marked = cursor.execute(_COMPLAINED, (now, subscriber_id)).rowcount
                return "complained" if ended > 0 or marked > 0 else "unchanged"
            if person not in ("active", "unsubscribed"):
                return "unchanged"  # bounced or complained already: nothing stronger to do
            if kind == "soft_bounce" and not self._soft_limit_reached(cursor, subscriber_id, day):
                return "soft"
            cursor.execute(_BOUNCED, (now, subscriber_id))
            return "bounced"

    def _soft_limit_reached(self, cursor: Any, subscriber_id: int, day: int) -> bool:
        """Whether some window of ``soft_window_days`` days holding ``day`` holds ``soft_limit`` soft bounces.

        Each issue counts once, on the first day it soft-bounced, and each day once. Every window
        holding ``day`` is looked at (not only the one ending on it): a report processed late
        still completes a window that later ones began.
        """
        window = self.soft_window_days
        days = sorted({int(row[0]) for row in cursor.execute(
            _SOFT_DAYS, (subscriber_id, day - window, day + window)).fetchall()})
        return any(sum(1 for other in days if end - window < other <= end) >= self.soft_limit
                   for end in days if day <= end < day + window)

    def record_statements(self, issue_id: int, subscriber_id: int,
                          message_id: str) -> dict[str, tuple[str, tuple[Any, ...]]]:
        """The statements :meth:`delivery_by_message_id` and :meth:`record_feedback` run, with parameters
        for one delivery: what the benchmark explains (an INSERT's plan says nothing, so it isn't here)."""
        local = message_id.rpartition("@")[0]
        now, day = _stamp(), int(time.time() // _DAY)
        list_id = self.store.query("SELECT list_id FROM issues WHERE id = ?", (issue_id,))[0][0]
        return {
            "delivery_by_message_id": (_BY_MESSAGE_ID, (subscriber_id, local.rpartition(".")[0], message_id)),
            "record_feedback: the delivery": (_DELIVERY, (issue_id, subscriber_id)),
            "record_feedback: the finding on the delivery row": (
                _NOTE, ("hard_bounce", "5.1.1", "", 0.0, issue_id, subscriber_id, 2)),
            "record_feedback: soft bounces near the day": (
                _SOFT_DAYS, (subscriber_id, day - self.soft_window_days, day + self.soft_window_days)),
            "record_feedback: bounced": (_BOUNCED, (now, subscriber_id)),
            "record_feedback: complained": (_COMPLAINED, (now, subscriber_id)),
            "record_feedback: a complaint ends every membership": (_LEAVE_ALL, (now, subscriber_id)),
            "record_feedback: an unsubscribe ends the issue's list": (_LEAVE_LIST, (now, subscriber_id, list_id)),
        }

    # --- reading ---------------------------------------------------------------------------

    def issue_statements(self, issue_id: int) -> dict[str, tuple[str, tuple[Any, ...]]]:
        """The statements :meth:`issue_feedback` runs (for their plans), with their parameters."""
        issue = self.store.query("SELECT list_id, first_sent_at FROM issues WHERE id = ?", (issue_id,))
        list_id, first_sent = (issue[0][0], issue[0][1]) if issue else (None, None)
        following = self.store.query(
            "SELECT min(first_sent_at) FROM issues WHERE list_id = ? AND first_sent_at > ?",
            (list_id, first_sent or ""),
        )
        until = (following[0][0] if following else None) or "9999"
        return {
            "sent": ("SELECT count(*) FROM deliveries WHERE issue_id = ? AND status = 'sent'", (issue_id,)),
            "by kind": ("SELECT kind, count(DISTINCT subscriber_id) FROM feedback WHERE issue_id = ? GROUP BY kind",
                        (issue_id,)),
            # Who left the issue's list after this issue reached them and before the list's next
            # issue was first sent (the last issue they got before leaving: a web unsubscribe
            # link doesn't say which issue it was in), those who complained about it aside
            # (they count as complaints), with the mail unsubscribes recorded for it.
            "unsubscribes": (
                "SELECT count(*) FROM (SELECT m.subscriber_id FROM memberships m"
                " JOIN deliveries d ON d.issue_id = ? AND d.subscriber_id = m.subscriber_id"
                " WHERE m.list_id = ? AND m.status = 'unsubscribed' AND m.updated_at >= ? AND m.updated_at < ?"
                " AND d.status = 'sent' AND d.sent_at <= m.updated_at"
                " AND NOT EXISTS (SELECT 1 FROM feedback f WHERE f.issue_id = d.issue_id AND f.kind = 'complaint'"
                "                 AND f.subscriber_id = m.subscriber_id)"
                " UNION SELECT subscriber_id FROM feedback WHERE issue_id = ? AND kind = 'unsubscribe') AS u",
                (issue_id, list_id, first_sent or "9999", until, issue_id),
            ),
        }

    def issue_feedback(self, issue_id: int, *, sent: int | None = None) -> dict[str, int]:
        """What came back for one issue: ``sent``, ``hard_bounces``, ``soft_bounces``, ``complaints``, ``unsubscribes``.

        ``sent``, when the caller has counted it already (``newsletter status`` has the
        ledger's counts per state), saves reading the issue's deliveries a second time.

        Each counts subscribers, once however many reports came for them. Unsubscribes are
        the memberships of the issue's list that ended after the issue was sent to them and
        before the list's next issue went out (the last issue they got), plus the mail
        unsubscribes recorded for this issue; those who complained about it count as
        complaints only.
        """
        found = self.issue_statements(issue_id)
        counts = {"sent": 0, "hard_bounces": 0, "soft_bounces": 0, "complaints": 0, "unsubscribes": 0}
        if sent is None:
            sql, params = found["sent"]
            sent = int(self.store.query(sql, params)[0][0])
        counts["sent"] = sent
        sql, params = found["by kind"]
        names = {"hard_bounce": "hard_bounces", "soft_bounce": "soft_bounces", "complaint": "complaints"}
        for kind, number in self.store.query(sql, params):
            if kind in names:
                counts[names[kind]] = int(number)
        sql, params = found["unsubscribes"]
        counts["unsubscribes"] = int(self.store.query(sql, params)[0][0])
        return counts


#: complaints per message sent at which ``status`` warns: Gmail's and Yahoo's bulk-sender rules
#: (2024) ask for a spam-report rate under 0.1 % and act at 0.3 %
COMPLAINT_WARNING = 0.001
#: hard bounces per message sent at which ``status`` warns: the usual ceiling for a list kept
#: clean (Amazon SES recommends under 2 % and reviews an account at 5 %)
HARD_BOUNCE_WARNING = 0.02
#: the counts of :meth:`Feedback.issue_feedback` that have a rate (of ``sent``)
RATED = ("hard_bounces", "soft_bounces", "complaints", "unsubscribes")


def feedback_rates(counts: dict[str, int]) -> dict[str, float]:
    """Each of :data:`RATED` as a fraction of ``counts["sent"]`` (0 when nothing was sent)."""
    sent = counts.get("sent", 0)
    return {name: (counts.get(name, 0) / sent if sent else 0.0) for name in RATED}


def feedback_warnings(counts: dict[str, int]) -> list[str]:
    """One line per threshold an issue's feedback reaches: complaints 0.1 %, hard bounces 2 % of sent."""
    rates = feedback_rates(counts)
    warnings = []
    if counts.get("sent", 0) and rates["complaints"] >= COMPLAINT_WARNING:
        warnings.append(
            f"complaints are {rates['complaints']:.2%} of sent, at or over 0.1 %: Gmail's and Yahoo's bulk-sender"
            " rules want under 0.1 % and act at 0.3 %; find out why readers mark it as spam before the next issue")
    if counts.get("sent", 0) and rates["hard_bounces"] >= HARD_BOUNCE_WARNING:
        warnings.append(
            f"hard bounces are {rates['hard_bounces']:.2%} of sent, at or over 2 % (the usual ceiling for a list"
            " kept clean; relays such as Amazon SES review an account at 5 %): the list holds dead addresses;"
            " check where they came from")
    return warnings
