"""Data rights (issue 16 item 6): what the tool holds about one person, and forgetting them.

:meth:`DataRights.person` gathers everything stored about one address: the subscriber row,
memberships, deliveries with their outcomes, and what came back by mail (``subscribers show``;
its JSON is the export). :meth:`DataRights.forget` erases the person in one transaction: the
name and merge fields are emptied, the address is replaced by a placeholder unique to the
row (``forgotten-<id>@forgotten.invalid``; ``.invalid`` can never be delivered, RFC 2606) and
scrubbed from every text the ledger kept (an SMTP reply, a bounce's diagnostic), and the row
becomes ``forgotten``. The row stays so that each issue's deliveries and counts stay right.
Their confirmation and welcome emails (the signup outbox) are deleted, sent or not.

All that remains of the address is :func:`forget_hash`, an HMAC-SHA256 under
``NEWSLETTER_SECRET_KEY`` of the lower-cased address, in the ``forgotten`` table (looked up
by its primary key): an import skips such an address and counts it, ``subscribers add``
refuses it; only a new double opt-in may bring the person back. Without the key the hash
can't be tested against a guessed address, so a leaked database doesn't confirm who was on it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from newsletter.store.consent import SOURCE_LIMIT, Consents
from newsletter.store.dialect import Cursor
from newsletter.store.engine import Database

__all__ = [
    "DataRights",
    "FORGOTTEN_DOMAIN",
    "ForgetOutcome",
    "PersonRecord",
    "forget_hash",
    "forgotten_placeholder",
    "lookup_forgotten",
]

#: the domain of a forgotten subscriber's placeholder address (RFC 2606: never resolves)
FORGOTTEN_DOMAIN = "forgotten.invalid"

#: what :meth:`DataRights.forget` did
ForgetOutcome = Literal["forgotten", "already", "unknown"]

#: values one ``IN (…)`` list of a hash lookup holds
_LOOKUP_CHUNK = 500

# Statements named so that a test can EXPLAIN exactly these.
_SUBSCRIBER = "SELECT id, email, name, fields, status, created_at, updated_at FROM subscribers WHERE email_key = ?"
_MEMBERSHIPS = ("SELECT l.name, m.status, m.created_at, m.updated_at FROM memberships m"
                " JOIN lists l ON l.id = m.list_id WHERE m.subscriber_id = ? ORDER BY l.name")
# The deliveries' primary key is (issue_id, subscriber_id): one search of it per issue (issues
# are few; CROSS JOIN keeps SQLite from reading deliveries first), rather than an index on
# subscriber_id that every dispatch would have to keep up to date for a rare question.
_DELIVERIES = ("SELECT i.slug, d.issue_id, d.status, d.attempts, d.last_code, d.last_text, d.sent_at,"
               " d.message_id, d.feedback, d.feedback_status, d.feedback_text, d.created_at, d.updated_at"
               " FROM issues i CROSS JOIN deliveries d WHERE d.issue_id = i.id AND d.subscriber_id = ?"
               " ORDER BY i.id")
_FEEDBACK = ("SELECT f.id, i.slug, f.kind, f.status, f.diagnostic, f.at FROM feedback f"
             " JOIN issues i ON i.id = f.issue_id WHERE f.subscriber_id = ? ORDER BY f.at, f.id")
_FORGOTTEN = "SELECT hash, forgotten_at FROM forgotten WHERE hash IN ({marks})"


def forget_hash(address: str, key: bytes) -> str:
    """The keyed hash that is all a forgotten address leaves: hex HMAC-SHA256 of it, trimmed and lower-cased."""
    normal = address.strip().lower().encode("utf-8", "surrogateescape")
    return hmac.new(key, normal, hashlib.sha256).hexdigest()


def forgotten_placeholder(subscriber_id: int) -> str:
    """The address a forgotten subscriber's row keeps: unique per row, undeliverable, naming nobody."""
    return f"forgotten-{subscriber_id}@{FORGOTTEN_DOMAIN}"


def lookup_forgotten(cursor: Cursor, addresses: Sequence[str], keys: Sequence[bytes]) -> dict[str, str]:
    """Which of ``addresses`` (lower-cased) were forgotten, with when: one search of the primary key per hash.

    Every key of ``NEWSLETTER_SECRET_KEY`` is tried (the newest hashes a forget; older ones
    still recognise what was forgotten before a key rotation).
    """
    by_hash = {forget_hash(address, key): address.strip().lower() for address in addresses for key in keys}
    found: dict[str, str] = {}
    hashes = list(by_hash)
    for start in range(0, len(hashes), _LOOKUP_CHUNK):
        chunk = hashes[start:start + _LOOKUP_CHUNK]
        for row in cursor.execute(_FORGOTTEN.format(marks=",".join("?" * len(chunk))), tuple(chunk)).fetchall():
            found[by_hash[str(row[0])]] = str(row[1])
    return found


@dataclass(frozen=True)
class PersonRecord:
    """Everything the tool holds about one person (``subscribers show``); :meth:`as_json` is the export."""

    subscriber: dict[str, Any]
    memberships: list[dict[str, Any]]
    deliveries: list[dict[str, Any]]
    feedback: list[dict[str, Any]]
    #: consent events (issue 16 item 3): list, method, source, network, requested and confirmed
    consent: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        """The record as a JSON object (keys: subscriber, memberships, consent, deliveries, feedback)."""
        return asdict(self)

    def lines(self) -> Iterator[str]:
        """The record as text, one section after another."""
        person = self.subscriber
        yield f"address:  {person['email']}"
        yield f"name:     {person['name']}"
        yield f"status:   {person['status']}"
        yield f"created:  {person['created_at']}"
        yield f"updated:  {person['updated_at']}"
        yield "fields:" + ("" if person["fields"] else "   (none)")
        for key, value in sorted(person["fields"].items()):
            yield f"  {key}: {value}"
        yield "memberships:" + ("" if self.memberships else " (none)")
        for item in self.memberships:
            yield f"  {item['list']}\t{item['status']}\tsince {item['created_at']}\tchanged {item['updated_at']}"
        yield "consent:" + ("" if self.consent else " (none recorded)")
        for item in self.consent:
            confirmed = f"confirmed {item['confirmed_at']}" if item["confirmed_at"] else "not confirmed"
            network = f"\tfrom {item['ip_prefix']}" if item["ip_prefix"] else ""
            yield (f"  {item['list']}\t{item['method']}\trequested {item['requested_at']}\t{confirmed}"
                   f"{network}\t{item['source']}").rstrip()
        yield "deliveries:" + ("" if self.deliveries else " (none)")
        for item in self.deliveries:
            reply = "" if item["last_code"] is None else f"\t{item['last_code']} {item['last_text'] or ''}".rstrip()
            sent = f"\tsent {item['sent_at']}" if item["sent_at"] else ""
            yield (f"  {item['issue']}\t{item['status']}\t{item['attempts']} attempt(s){sent}"
                   f"\t{item['message_id']}{reply}")
        yield "came back by mail:" + ("" if self.feedback else " (nothing)")
        for item in self.feedback:
            yield f"  {item['at']}\t{item['issue']}\t{item['kind']}\t{item['status'] or '-'}\t{item['diagnostic']}"


def _when(unix: float | None) -> str | None:
    return None if unix is None else dt.datetime.fromtimestamp(float(unix), dt.UTC).isoformat(timespec="seconds")


def _scrub(text: str | None, secrets: Sequence[str], placeholder: str) -> str | None:
    """``text`` with each of ``secrets`` (case-insensitively) replaced by ``placeholder``."""
    if not text:
        return text
    for secret in secrets:
        text = re.sub(re.escape(secret), placeholder, text, flags=re.IGNORECASE)
    return text


class DataRights:
    """What the tool holds about one person, and forgetting them, over an open database."""

    def __init__(self, store: Database) -> None:
        self.store = store

    def person(self, address: str) -> PersonRecord | None:
        """Everything held about ``address`` (matched case-insensitively), or None when it isn't a subscriber."""
        with self.store.snapshot():
            rows = self.store.query(_SUBSCRIBER, (address.strip().lower(),))
            if not rows:
                return None
            row = rows[0]
            subscriber_id = int(row["id"])
            subscriber = {"id": subscriber_id, "email": str(row["email"]), "name": str(row["name"]),
                          "fields": json.loads(row["fields"]), "status": str(row["status"]),
                          "created_at": str(row["created_at"]), "updated_at": str(row["updated_at"])}
            memberships = [{"list": str(m[0]), "status": str(m[1]), "created_at": str(m[2]),
                            "updated_at": str(m[3])} for m in self.store.query(_MEMBERSHIPS, (subscriber_id,))]
            deliveries = [{"issue": str(d["slug"]), "status": str(d["status"]), "attempts": int(d["attempts"]),
                           "last_code": None if d["last_code"] is None else int(d["last_code"]),
                           "last_text": d["last_text"], "sent_at": d["sent_at"], "message_id": str(d["message_id"]),
                           "feedback": d["feedback"], "feedback_status": d["feedback_status"],
                           "feedback_text": d["feedback_text"], "created_at": str(d["created_at"]),
                           "updated_at": str(d["updated_at"])}
                          for d in self.store.query(_DELIVERIES, (subscriber_id,))]
            feedback = [{"issue": str(f["slug"]), "kind": str(f["kind"]), "status": f["status"],
                         "diagnostic": str(f["diagnostic"]), "at": _when(f["at"])}
                        for f in self.store.query(_FEEDBACK, (subscriber_id,))]
            consent = [record.as_json() for record in Consents(self.store).of_subscriber(subscriber_id)]
        return PersonRecord(subscriber, memberships, deliveries, feedback, consent=consent)

    def was_forgotten(self, address: str, keys: Sequence[bytes]) -> str | None:
        """When ``address`` was forgotten (its hash under one of ``keys`` is kept), or None."""
        if not keys:
            return None
        with self.store.transaction() as cursor:
            return lookup_forgotten(cursor, [address], keys).get(address.strip().lower())

    def forget(self, address: str, keys: Sequence[bytes]) -> ForgetOutcome:
        """Erase ``address``'s person, all in one transaction; what happened.

        ``"forgotten"``: done now. ``"already"``: only its hash was left already (nothing
        changes: forgetting twice is harmless). ``"unknown"``: neither a subscriber nor forgotten.
        ``keys`` are ``NEWSLETTER_SECRET_KEY``'s (the first one hashes); at least one is needed.
        """
        if not keys:
            raise ValueError("forgetting needs a secret key to hash the address with")
        key = address.strip().lower()
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        with self.store.transaction() as cursor:
            row = cursor.execute("SELECT id, email, name FROM subscribers WHERE email_key = ?", (key,)).fetchone()
            if row is None:
                return "already" if lookup_forgotten(cursor, [key], keys) else "unknown"
            subscriber_id = int(row["id"])
            placeholder = forgotten_placeholder(subscriber_id)
            # What might show the person in a text the ledger kept: the address as given, as
            # stored, and the name (a short name is left alone: it would mangle the text and
            # names nobody).
            secrets = sorted({key, str(row["email"])} | ({str(row["name"])} if len(str(row["name"])) >= 3 else set()),
                             key=len, reverse=True)
            cursor.execute("INSERT INTO forgotten (hash, forgotten_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                           (forget_hash(key, keys[0]), now))
            cursor.execute("UPDATE subscribers SET email = ?, email_key = ?, name = '', fields = '{}',"
                           " status = 'forgotten', updated_at = ? WHERE id = ?",
                           (placeholder, placeholder, now, subscriber_id))
            for found in cursor.execute(_DELIVERIES, (subscriber_id,)).fetchall():
                last_text = _scrub(found["last_text"], secrets, placeholder)
                feedback_text = _scrub(found["feedback_text"], secrets, placeholder)
                if (last_text, feedback_text) != (found["last_text"], found["feedback_text"]):
                    cursor.execute("UPDATE deliveries SET last_text = ?, feedback_text = ?"
                                   " WHERE issue_id = ? AND subscriber_id = ?",
                                   (last_text, feedback_text, found["issue_id"], subscriber_id))
            for found in cursor.execute(_FEEDBACK, (subscriber_id,)).fetchall():
                diagnostic = _scrub(found["diagnostic"], secrets, placeholder)
                if diagnostic != found["diagnostic"]:
                    cursor.execute("UPDATE feedback SET diagnostic = ? WHERE id = ?", (diagnostic, found["id"]))
            # The consent events stay (when, how, which list), without the requester's network
            # (item 6: "consent IPs") and with the person scrubbed from their source text.
            for found in cursor.execute("SELECT id, source FROM consents WHERE subscriber_id = ?",
                                        (subscriber_id,)).fetchall():
                source = _scrub(found["source"], secrets, placeholder) or ""
                cursor.execute("UPDATE consents SET ip_prefix = NULL, source = ? WHERE id = ?",
                               (source[:SOURCE_LIMIT], found["id"]))
            # The outbox of signups (issue 16): each confirmation and welcome email's row, whose
            # SMTP reply may quote the address. Nothing in them is needed once the person is gone
            # (the consent rows keep when and how they confirmed), and a queued one must not go out.
            cursor.execute("UPDATE consents SET confirmation_id = NULL WHERE subscriber_id = ?"
                           " AND confirmation_id IS NOT NULL", (subscriber_id,))
            cursor.execute("DELETE FROM confirmations WHERE subscriber_id = ?", (subscriber_id,))
            cursor.execute("DELETE FROM welcomes WHERE subscriber_id = ?", (subscriber_id,))
            # Memberships stay as they were (no address in them): ending them now would count
            # as an unsubscribe in the latest issue's figures. The status keeps them from any list.
        return "forgotten"
