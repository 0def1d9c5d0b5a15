"""Consent records (issue 16 item 3): who agreed to which list, how, from where, and when (:class:`Consents`).

Each consent event is one row of ``consents``: the subscriber and the list, the method
(``form``, ``api``, ``import``, ``cli``), its source (the form's page, or the text an
operator gave ``subscribers import --consent "how"``; at most :data:`SOURCE_LIMIT`
characters), the requester's network, when it was requested and, once the reader
confirmed (double opt-in), when that was.

The network is never the address: :func:`truncate_ip` keeps an IPv4 address's first 24
bits and an IPv6 address's first 48 (``203.0.113.0/24``, ``2001:db8:1::/48``), which tells
a provider's or a country's network, as mailbox providers and regulators ask, without
naming a household. :meth:`Consents.record` truncates whatever it is given, so a full
address is never written.

A signup's membership is ``pending`` until :meth:`Consents.confirm`; dispatch selects
``active`` memberships only, so nobody pending is ever mailed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import asdict, dataclass
from typing import Any, Literal

from newsletter.errors import SubscriberError
from newsletter.store.engine import Database

__all__ = [
    "CONSENT_METHODS",
    "ConsentClaim",
    "ConsentOutcome",
    "ConsentRecord",
    "Consents",
    "SOURCE_LIMIT",
    "clean_source",
    "consent_claim",
    "truncate_ip",
]

#: how a consent was given: a signup form, the JSON API, an import, the command line
CONSENT_METHODS = ("form", "api", "import", "cli")
#: characters a consent's source holds at most (the schema's CHECK says the same)
SOURCE_LIMIT = 500
#: bits of an address that a consent keeps
_IPV4_PREFIX = 24
_IPV6_PREFIX = 48

#: what :meth:`Consents.confirm` did
ConsentOutcome = Literal["confirmed", "already", "unknown"]

# Statements named so that a test can EXPLAIN exactly these.
_INSERT = ("INSERT INTO consents (subscriber_id, list_id, method, source, ip_prefix, requested_at)"
           " VALUES (?, ?, ?, ?, ?, ?) RETURNING id")
_OF_SUBSCRIBER = ("SELECT c.id, l.name, c.method, c.source, c.ip_prefix, c.requested_at, c.confirmed_at"
                  " FROM consents c JOIN lists l ON l.id = c.list_id WHERE c.subscriber_id = ?"
                  " ORDER BY c.requested_at, c.id")


def truncate_ip(address: str) -> str:
    """The network a consent keeps of ``address``: IPv4 to /24, IPv6 to /48, as ``network/prefix``.

    An IPv4-mapped IPv6 address (``::ffff:203.0.113.7``, what a dual-stack socket reports)
    counts as the IPv4 address it carries. ValueError when ``address`` isn't an IP address.
    """
    parsed = ipaddress.ip_address(address.strip())
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    # By the integer: a zone (fe80::1%eth0) names an interface of ours, nothing to keep.
    if isinstance(parsed, ipaddress.IPv4Address):
        return str(ipaddress.IPv4Network((int(parsed), _IPV4_PREFIX), strict=False))
    return str(ipaddress.IPv6Network((int(parsed), _IPV6_PREFIX), strict=False))


def clean_source(source: str) -> str:
    """A consent's source as stored: without control and format characters (a terminal escape, a
    direction override: a form's page is untrusted text that ``subscribers show`` prints),
    trimmed, and cut to :data:`SOURCE_LIMIT` characters (a bounded record is still a record)."""
    return "".join(char for char in source if char.isprintable()).strip()[:SOURCE_LIMIT]


@dataclass(frozen=True)
class ConsentClaim:
    """How the memberships an import or ``subscribers add`` creates were agreed to (``--consent "how"``)."""

    method: str
    source: str


def consent_claim(method: str, source: str) -> ConsentClaim:
    """A checked :class:`ConsentClaim`; SubscriberError (one line) for an unknown method or a bad source.

    The source is one line of printable text, not empty, at most :data:`SOURCE_LIMIT` characters.
    """
    if method not in CONSENT_METHODS:
        raise SubscriberError(f"consent method {method!r}: use one of {', '.join(CONSENT_METHODS)}")
    text = source.strip()
    if not text:
        raise SubscriberError("--consent: say how the consent was given (for example \"paper form at the fair\")")
    if len(text) > SOURCE_LIMIT:
        raise SubscriberError(f"--consent: {len(text)} characters; at most {SOURCE_LIMIT}")
    if not text.isprintable():
        raise SubscriberError("--consent: one line of text, no control characters")
    return ConsentClaim(method, text)


@dataclass(frozen=True)
class ConsentRecord:
    """One consent event as stored."""

    id: int
    list: str
    method: str
    source: str
    ip_prefix: str | None
    requested_at: str
    confirmed_at: str | None

    def as_json(self) -> dict[str, Any]:
        """The record as a JSON object."""
        return asdict(self)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class Consents:
    """The consent records over an open database: record, confirm, read one subscriber's."""

    def __init__(self, store: Database) -> None:
        self.store = store

    def record(self, subscriber_id: int, list_id: int, *, method: str, source: str = "",
               ip: str | None = None, at: str | None = None) -> int:
        """Record one consent event (requested ``at``, default now) for an existing membership; its id.

        The membership comes first (:meth:`add_pending` for a signup): a consent row
        references it, so recording one for a membership that isn't there is a StoreError.

        ``ip`` is the requester's address, kept only as :func:`truncate_ip`'s network
        (ValueError when it isn't an address); ``source`` loses control and format characters
        (a terminal escape, a direction override: a form's page is untrusted text that
        ``subscribers show`` prints) and is cut to :data:`SOURCE_LIMIT` characters (a bounded
        record is still a record).
        """
        if method not in CONSENT_METHODS:
            raise ValueError(f"consent method {method!r}: not one of {', '.join(CONSENT_METHODS)}")
        prefix = None if ip is None else truncate_ip(ip)
        with self.store.transaction() as cursor:
            row = cursor.execute(_INSERT, (subscriber_id, list_id, method, clean_source(source), prefix,
                                           at or _now())).fetchone()
        return int(row[0])

    def add_pending(self, subscriber_id: int, list_id: int) -> bool:
        """Make a ``pending`` membership (a signup awaiting confirmation); False when there is one already.

        An existing membership keeps its status: only :meth:`confirm` turns pending into active.
        """
        now = _now()
        with self.store.transaction() as cursor:
            changed = cursor.execute(
                "INSERT INTO memberships (list_id, subscriber_id, status, created_at, updated_at)"
                " VALUES (?, ?, 'pending', ?, ?) ON CONFLICT DO NOTHING",
                (list_id, subscriber_id, now, now),
            ).rowcount
        return bool(changed > 0)

    def confirm(self, consent_id: int, *, at: str | None = None) -> ConsentOutcome:
        """Mark consent ``consent_id`` confirmed (``at``, default now), and make its membership active if pending.

        Idempotent: ``"confirmed"`` the first time, ``"already"`` after (the first time is
        kept), ``"unknown"`` when there is no such consent. A membership that ended
        (unsubscribed) meanwhile stays ended: a confirmation never overrides a later unsubscribe.
        """
        now = at or _now()
        with self.store.transaction() as cursor:
            row = cursor.execute("SELECT subscriber_id, list_id, confirmed_at FROM consents WHERE id = ?",
                                 (consent_id,)).fetchone()
            if row is None:
                return "unknown"
            if row["confirmed_at"] is not None:
                return "already"
            changed = cursor.execute("UPDATE consents SET confirmed_at = ? WHERE id = ? AND confirmed_at IS NULL",
                                     (now, consent_id)).rowcount
            if not changed:  # PostgreSQL: another worker confirmed it since our read
                return "already"
            cursor.execute("UPDATE memberships SET status = 'active', updated_at = ?"
                           " WHERE subscriber_id = ? AND list_id = ? AND status = 'pending'",
                           (now, row["subscriber_id"], row["list_id"]))
        return "confirmed"

    def of_subscriber(self, subscriber_id: int) -> list[ConsentRecord]:
        """Every consent event of one subscriber, oldest first (the index on (subscriber_id, list_id))."""
        return [ConsentRecord(int(row[0]), str(row[1]), str(row[2]), str(row[3]), row[4], str(row[5]), row[6])
                for row in self.store.query(_OF_SUBSCRIBER, (subscriber_id,))]
