"""The two standard reports: delivery status notifications (RFC 3464) and feedback reports (RFC 5965).

Both are ``multipart/report`` messages whose machine-readable part is blocks of header
fields; :mod:`newsletter.inbound.mime` reads the blocks, this module reads the fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message

from newsletter.inbound.mime import Headers, clean_address, clean_message_id, field_blocks, safe_line

__all__ = [
    "DeliveryStatus",
    "FeedbackReport",
    "RecipientStatus",
    "enhanced_status",
    "read_delivery_status",
    "read_feedback_report",
]

# RFC 3463: class.subject.detail; a version number or an IP address must not pass for one.
_STATUS_RE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_TYPE_PREFIX_RE = re.compile(r"^\s*[A-Za-z][A-Za-z0-9-]{0,30}\s*;\s*")


def enhanced_status(text: str) -> str | None:
    """The first RFC 3463 status code ("5.1.1") in ``text``, None if there is none."""
    match = _STATUS_RE.search(text)
    if match is None:
        return None
    return f"{match[1]}.{int(match[2])}.{int(match[3])}"


@dataclass(frozen=True)
class RecipientStatus:
    """One per-recipient block of a DSN (RFC 3464 section 2.3)."""

    action: str  # lower case, comments dropped: "failed", "delayed", "delivered", ...
    original_recipient: str | None
    final_recipient: str | None
    status: str | None
    diagnostic: str


@dataclass(frozen=True)
class FeedbackReport:
    """The fields of an RFC 5965 feedback report that name who complained, and about what."""

    feedback_type: str  # lower case: "abuse", "fraud", "not-spam", ...
    recipients: tuple[str, ...]  # Original-Rcpt-To, then Removal-Recipient (lower case)
    original_mail_from: str | None
    description: str  # one line: the type, and who reported it


@dataclass(frozen=True)
class DeliveryStatus:
    """A message/delivery-status part: its per-recipient blocks, and what its per-message block says of the original."""

    recipients: tuple[RecipientStatus, ...]
    #: Postfix's ``X-Postfix-Sender``: the original's envelope sender (our return path)
    sender: str | None
    #: Gmail's ``X-Original-Message-ID``: the original's Message-ID, without "<>"
    original_message_id: str | None


def read_delivery_status(part: Message) -> DeliveryStatus:
    """The fields of a message/delivery-status (or RFC 6533 message/global-delivery-status) part."""
    recipients = []
    sender = original_message_id = None
    for block in field_blocks(part):
        if "final-recipient" not in block and "original-recipient" not in block and "action" not in block:
            # The per-message block (or one that names no recipient).
            sender = sender or clean_address(block.get("x-postfix-sender"))
            original_message_id = original_message_id or clean_message_id(block.get("x-original-message-id"))
            continue
        action = block.get("action").strip().lower()
        action = re.split(r"[\s(;]", action, maxsplit=1)[0] if action else ""
        diagnostic = _TYPE_PREFIX_RE.sub("", block.get("diagnostic-code"), count=1)
        status = enhanced_status(block.get("status")) or enhanced_status(diagnostic)
        recipients.append(RecipientStatus(
            action=action,
            original_recipient=clean_address(block.get("original-recipient")),
            final_recipient=clean_address(block.get("final-recipient")),
            status=status,
            diagnostic=safe_line(diagnostic),
        ))
    return DeliveryStatus(tuple(recipients), sender, original_message_id)


def read_feedback_report(part: Message) -> FeedbackReport | None:
    """The fields of a message/feedback-report part; None if it has no Feedback-Type."""
    blocks = field_blocks(part)
    if not blocks:
        return None
    fields: Headers = blocks[0]
    feedback_type = fields.get("feedback-type").strip().lower()
    if not feedback_type:
        return None
    feedback_type = re.split(r"[\s;(]", feedback_type, maxsplit=1)[0]
    recipients: list[str] = []
    for name in ("original-rcpt-to", "removal-recipient"):
        for value in fields.get_all(name):
            address = clean_address(value)
            if address is not None and address not in recipients:
                recipients.append(address)
    reporter = fields.get("user-agent") or fields.get("reporting-mta")
    description = f"feedback report: {feedback_type}" + (f" from {reporter}" if reporter else "")
    return FeedbackReport(
        feedback_type=feedback_type,
        recipients=tuple(recipients),
        original_mail_from=clean_address(fields.get("original-mail-from")),
        description=safe_line(description),
    )
