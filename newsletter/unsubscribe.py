"""Unsubscribe and re-subscribe by token: what ``newsletter serve`` does to the database.

A token (:mod:`newsletter.tokens`) names one subscriber on one list. Unsubscribing ends
that membership only (other lists stay as they are); the ledger re-checks memberships at send
time, so a dispatch that is already running skips them from then on. Both operations are
idempotent: doing one twice changes nothing the second time.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from newsletter.store import Store
from newsletter.tokens import TokenSigner

__all__ = [
    "Membership",
    "find_membership",
    "resubscribe",
    "unsubscribe",
]


@dataclass(frozen=True)
class Membership:
    """Who a valid token is about: the subscriber, the list, and whether they are on it now."""

    subscriber_id: int
    list_id: int
    email: str
    list_name: str
    active: bool


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def find_membership(database: str | Path, signer: TokenSigner, token: str) -> Membership | None:
    """The membership ``token`` names, or None when the token is forged, altered or unknown."""
    verified = signer.verify(token)
    if verified is None:
        return None
    with Store.open(database) as store:
        rows = store.query(
            "SELECT s.email, l.name, m.status, s.status AS person FROM memberships m"
            " JOIN subscribers s ON s.id = m.subscriber_id JOIN lists l ON l.id = m.list_id"
            " WHERE m.subscriber_id = ? AND m.list_id = ?",
            (verified.subscriber_id, verified.list_id),
        )
    if not rows:
        return None
    row = rows[0]
    return Membership(verified.subscriber_id, verified.list_id, str(row["email"]), str(row["name"]),
                      row["status"] == "active" and row["person"] == "active")


def unsubscribe(database: str | Path, membership: Membership) -> bool:
    """End ``membership``; True when it was active until now."""
    with Store.open(database) as store, store.transaction() as cursor:
        changed = cursor.execute(
            "UPDATE memberships SET status = 'unsubscribed', updated_at = ?"
            " WHERE subscriber_id = ? AND list_id = ? AND status = 'active'",
            (_now(), membership.subscriber_id, membership.list_id),
        ).rowcount
    return bool(changed > 0)


def resubscribe(database: str | Path, membership: Membership) -> bool:
    """Put ``membership`` back; True when it changed. A bounced address stays bounced.

    Someone who left every list (``newsletter subscribers unsubscribe EMAIL``) and now asks
    to come back to this one is active again; an address that bounced is not, since mail to
    it can't arrive.
    """
    now = _now()
    with Store.open(database) as store, store.transaction() as cursor:
        person = cursor.execute(
            "UPDATE subscribers SET status = 'active', updated_at = ? WHERE id = ? AND status = 'unsubscribed'",
            (now, membership.subscriber_id),
        ).rowcount
        joined = cursor.execute(
            "UPDATE memberships SET status = 'active', updated_at = ?"
            " WHERE subscriber_id = ? AND list_id = ? AND status = 'unsubscribed'",
            (now, membership.subscriber_id, membership.list_id),
        ).rowcount
    return bool(person + joined > 0)
