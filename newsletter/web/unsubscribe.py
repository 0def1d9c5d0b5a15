"""Unsubscribe and re-subscribe by token: what ``newsletter serve`` does to the database.

A token (:mod:`newsletter.tokens`) names one subscriber on one list. Unsubscribing ends
that membership only (other lists stay as they are); the ledger re-checks memberships at send
time, so a dispatch that is already running skips them from then on. Re-subscribing brings
back exactly that membership (never the subscriber's other lists), and nothing for an
address that bounced. Both operations are idempotent: doing one twice changes nothing the
second time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from newsletter.store.subscribers import Rejoined, Store
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
    #: the address bounced (or complained): it gets no list, and re-subscribing can't change that
    suppressed: bool = False
    #: suppressed because its reader reported our mail as spam, not because mail to it came back
    complained: bool = False
    #: the person was erased at their request (``subscribers forget``): nothing of them is shown
    forgotten: bool = False


def find_membership(database: str | Path, signer: TokenSigner, token: str) -> Membership | None:
    """The membership ``token`` names, or None when the token is forged, altered or unknown."""
    verified = signer.verify(token)
    if verified is None:
        return None
    with Store.open(database) as store:
        found = store.membership_state(verified.subscriber_id, verified.list_id)
    if found is None:
        return None
    return Membership(verified.subscriber_id, verified.list_id, found.email, found.list_name, found.receives,
                      found.suppressed, found.person == "complained", found.person == "forgotten")


def unsubscribe(database: str | Path, membership: Membership) -> bool:
    """End ``membership``; True when it was active until now."""
    with Store.open(database) as store:
        return store.leave_list(membership.subscriber_id, membership.list_id)


def resubscribe(database: str | Path, membership: Membership) -> Rejoined:
    """Put ``membership`` (that one list only) back; what happened (see :meth:`Store.rejoin`)."""
    with Store.open(database) as store:
        return store.rejoin(membership.subscriber_id, membership.list_id)
