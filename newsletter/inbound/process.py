"""What one message that came back does: classify it, find whom it is about, act in the store.

The delivery a report names is found, in this order, from:

1. a signed return path (VERP, :class:`~newsletter.tokens.ReturnPaths`): the address the
   report was delivered to, or the ``Return-Path`` of the original it quotes. Only the
   holder of the secret key can make one, so it is trusted alone. An address at the bounce
   mailbox whose signature doesn't verify is a forgery, and the report changes nothing;
2. the unsubscribe token of the original (a complaint quotes the original's
   ``List-Unsubscribe``) or of a mail unsubscribe's subject: signed too;
3. the original's ``Message-ID`` (``<slug>.<subscriber id>@<domain>``, fixed when the issue
   was opened) **and** the recipient the report names (``Final-Recipient`` /
   ``Original-Recipient``, ARF's ``Original-Rcpt-To``), which must be that delivery's address.
   This serves relays that replace the envelope sender with their own.

Never from a ``To:`` header alone. Each finding is recorded once: its fingerprint is the
report's own Message-ID (or a hash of its bytes) with the recipient and kind, so processing
the same message twice changes nothing.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from newsletter.inbound.classify import Classification, Finding, classify
from newsletter.store.feedback import Feedback
from newsletter.store.subscribers import Store
from newsletter.tokens import ReturnPaths, TokenSigner

__all__ = [
    "Handled",
    "InboundTally",
    "Resolver",
    "handle_message",
]

Verdict = Literal["processed", "unhandled", "retry"]
#: the kinds whose findings change a subscriber (the others are counted only)
_ACTED_ON = ("hard_bounce", "soft_bounce", "complaint", "unsubscribe")


@dataclass(frozen=True)
class Handled:
    """What one message was and did: its verdict for the mailbox, its kind, what changed."""

    verdict: Verdict
    kind: str
    #: what the store said for each finding acted on ("bounced", "soft", "duplicate", ...)
    changes: tuple[str, ...] = ()
    #: why nothing was done ("forged return path", "no delivery matches", ...), or ""
    note: str = ""


@dataclass
class InboundTally:
    """Running counts for a whole ``inbound`` run: messages by kind and changes by outcome."""

    messages: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    changes: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)

    def add(self, handled: Handled) -> None:
        """Count one message's result."""
        self.messages += 1
        self.kinds[handled.kind] += 1
        self.changes.update(handled.changes)
        if handled.note:
            self.notes[handled.note] += 1

    def as_dict(self) -> dict[str, object]:
        """The counts as plain JSON values."""
        return {"messages": self.messages, "kinds": dict(self.kinds), "changes": dict(self.changes),
                "notes": dict(self.notes)}


@dataclass(frozen=True)
class _Target:
    """Whom a report is about: a delivery (issue known) or a membership (from a token)."""

    subscriber_id: int
    issue_id: int | None = None
    list_id: int | None = None


class Resolver:
    """Finds the delivery a classified report names (see the module docstring for the order)."""

    def __init__(self, store: Store, feedback: Feedback, *, return_paths: ReturnPaths | None,
                 tokens: TokenSigner) -> None:
        self.store = store
        self.feedback = feedback
        self.return_paths = return_paths
        self.tokens = tokens

    def signed(self, report: Classification) -> _Target | None | Literal["forged"]:
        """The delivery a signed return path names; "forged" when one at our bounce mailbox fails to verify."""
        if self.return_paths is None:
            return None
        forged = False
        for address in report.return_paths:
            tag = self.return_paths.tag(address)
            if tag is None or tag == "" or tag == "unsubscribe":
                continue  # not our bounce mailbox, or not a delivery's return path
            signed = self.return_paths.read(address)
            if signed is None:
                forged = True
                continue
            return _Target(signed.subscriber_id, issue_id=signed.issue_id)
        return "forged" if forged else None

    def by_token(self, report: Classification) -> _Target | None:
        """The membership a signed unsubscribe token in the report names (and its delivery, when quoted)."""
        for token in report.unsubscribe_tokens:
            verified = self.tokens.verify(token)
            if verified is None:
                continue
            issue_id = None
            for message_id in report.original_message_ids:
                found = self.feedback.delivery_by_message_id(message_id)
                if found is not None and found[1] == verified.subscriber_id:
                    issue_id = found[0]  # the token vouches for the subscriber; the ID names the issue
                    break
            return _Target(verified.subscriber_id, issue_id=issue_id, list_id=verified.list_id)
        return None

    def by_message_id(self, report: Classification, finding: Finding) -> _Target | None:
        """The delivery whose Message-ID the report quotes, if the report names that delivery's address."""
        named = {address.lower() for address in (finding.recipient, finding.final_recipient) if address}
        if not named:
            return None
        for message_id in report.original_message_ids:
            found = self.feedback.delivery_by_message_id(message_id)
            if found is not None and found[2].lower() in named:
                return _Target(found[1], issue_id=found[0])
        return None


def _fingerprint(raw: bytes, report: Classification, finding: Finding, target: _Target) -> str:
    """The same finding of the same message gives the same fingerprint, whatever run reads it."""
    origin = report.message_id or hashlib.sha256(raw).hexdigest()
    text = f"{origin}\x00{finding.kind}\x00{target.subscriber_id}\x00{target.issue_id or 0}"
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def handle_message(raw: bytes, resolver: Resolver, *, now: float | None = None) -> Handled:
    """Classify ``raw`` and act on it; the verdict says where the mailbox should file it.

    ``processed``: understood (acted on, counted, or recognised as forged or about nobody we
    know); ``unhandled``: not understood, for a human. A database error propagates (the
    caller leaves the message where it is, to try again).
    """
    report = classify(raw)
    if report.kind == "unknown":
        return Handled("unhandled", "unknown")
    if report.kind not in _ACTED_ON:
        return Handled("processed", report.kind)  # an auto-reply or a delay: counted, nothing changes
    signed = resolver.signed(report)
    if signed == "forged":
        return Handled("processed", report.kind, note="forged return path: ignored")
    changes: list[str] = []
    findings = [finding for finding in report.findings if finding.kind in _ACTED_ON] or [
        Finding(report.kind, None, None, "")]
    for finding in findings:
        target = signed or (resolver.by_token(report) if finding.kind in ("complaint", "unsubscribe") else None) \
            or resolver.by_message_id(report, finding)
        if target is None:
            continue
        changes.append(_act(raw, report, finding, target, resolver, now))
    if not changes:
        return Handled("processed", report.kind, note="no delivery or subscriber matches")
    return Handled("processed", report.kind, tuple(changes))


def _act(raw: bytes, report: Classification, finding: Finding, target: _Target, resolver: Resolver,
         now: float | None) -> str:
    """Record one finding about ``target`` and apply the policy; what changed."""
    if target.issue_id is None:
        # Named by a token only (a mail unsubscribe, or a complaint whose original isn't
        # ours to find): that list's membership ends, exactly as the web page's POST does.
        if target.list_id is None:
            return "unknown"
        left = resolver.store.leave_list(target.subscriber_id, target.list_id)
        return "unsubscribed" if left else "unchanged"
    fingerprint = _fingerprint(raw, report, finding, target)
    if finding.kind == "unsubscribe" and target.list_id is not None:
        resolver.store.leave_list(target.subscriber_id, target.list_id)
    return resolver.feedback.record_feedback(issue_id=target.issue_id, subscriber_id=target.subscriber_id,
                                             kind=finding.kind, status=finding.status,
                                             diagnostic=finding.diagnostic, fingerprint=fingerprint, at=now)
