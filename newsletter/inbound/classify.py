"""What a message that came back says: a bounce, a complaint, an unsubscribe, an auto-reply, or nothing.

``classify(raw)`` is pure (no I/O, no store, no configuration) and never raises: the worst
any input gets is ``unknown``. In order, the first that applies decides:

1. an RFC 5965 feedback report (ARF): ``complaint`` for Feedback-Type abuse, fraud, virus
   or other (not-spam and auth-failure reports are no complaint: ``unknown``);
2. an RFC 3464 delivery status notification: per recipient, Action failed with a 5.x.x
   Status is ``hard_bounce``, with 4.x.x (the MTA gave up on a temporary failure)
   ``soft_bounce``, Action delayed ``delayed``; delivered, relayed and expanded say nothing;
3. a message that looks like a bounce (a mail daemon's From, X-Failed-Recipients, a
   bounce's subject, the null return path) goes to Mailman's ``flufl.bounce`` detectors
   (Exim, qmail, old Exchange, Yahoo, Postfix's pre-DSN form, ...): what they call
   permanent is ``hard_bounce`` unless the text beside the address gives a 4.x.x or 4xx
   code (``soft_bounce``); what they call temporary (delay warnings) is ``delayed``;
4. "unsubscribe <token>" in the subject or the first lines of the body (RFC 2369, RFC 8058
   section 3.2): ``unsubscribe``;
5. a message that looked like a bounce but in which no detector found a recipient:
   ``unknown``, with a note (for a human, even when it says Auto-Submitted, as Exim's do);
6. RFC 3834 ``Auto-Submitted``, ``X-Autoreply`` and its kin, ``Precedence: auto_reply``,
   or an out-of-office subject: ``auto_reply``.

Nothing here decides whom a report is about: :attr:`Classification.return_paths` lists
the candidate (signed) return paths and :attr:`Classification.original_message_ids` the
original's Message-IDs, for the caller to check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message
from typing import Literal

from newsletter.inbound.heuristics import (
    FluflResult,
    auto_reply_reason,
    explanation,
    inline_original,
    looks_like_bounce,
    run_flufl,
    tokens_in_list_unsubscribe,
    unsubscribe_tokens,
)
from newsletter.inbound.mime import (
    EMBEDDED_TYPES,
    Headers,
    Part,
    addresses,
    clean_address,
    clean_message_id,
    embedded_headers,
    iter_parts,
    parse,
    safe_line,
    text_body,
)
from newsletter.inbound.reports import read_delivery_status, read_feedback_report

__all__ = ["COMPLAINT_TYPES", "Classification", "FIRST_READ", "Finding", "Kind", "MAX_FINDINGS", "classify"]

Kind = Literal["hard_bounce", "soft_bounce", "complaint", "unsubscribe", "auto_reply", "delayed", "unknown"]

#: the RFC 5965 / RFC 6650 feedback types that are a reader's complaint
COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus", "other"})

# The message's kind is its worst finding's.
_RANK: dict[str, int] = {
    "complaint": 6, "hard_bounce": 5, "soft_bounce": 4, "unsubscribe": 3, "delayed": 2, "auto_reply": 1, "unknown": 0,
}
_ENVELOPE_HEADERS = ("delivered-to", "x-original-to", "envelope-to", "to")
_MAX_CANDIDATES = 16
#: how much of a large message is read first (see classify)
FIRST_READ = 16384
#: each message goes to one recipient (its return path says which), so a report names one;
#: a report naming thousands is read for its first ones
MAX_FINDINGS = 100
_REDACTED_RE = re.compile(r"[x*#_.-]+", re.IGNORECASE)


@dataclass(frozen=True)
class Finding:
    """One recipient's outcome in one report."""

    kind: Kind
    #: the address the report names (Original-Recipient if given, else Final-Recipient, or
    #: the complaint's Original-Rcpt-To), lower case, no "rfc822;"; None if it names none
    recipient: str | None
    #: the RFC 3463 status ("5.1.1") when known
    status: str | None
    #: the server's words: one line, at most 500 characters, no control characters ("" if none)
    diagnostic: str
    #: a DSN's Final-Recipient when it differs from ``recipient`` (an alias the MTA expanded)
    final_recipient: str | None = None


@dataclass(frozen=True)
class Classification:
    """What one incoming message says (see the module's docstring for the rules)."""

    kind: Kind
    findings: tuple[Finding, ...]
    #: candidate return paths, most trusted first: the message's own envelope recipient
    #: headers (Delivered-To, X-Original-To, Envelope-To, then To), then the return path of
    #: the original it carries (its Return-Path, Postfix's X-Postfix-Sender, ARF's Original-Mail-From)
    return_paths: tuple[str, ...]
    #: the Message-IDs of the original message it reports on, without "<>" (from the original
    #: it carries, Gmail's X-Original-Message-ID, or an auto-reply's In-Reply-To)
    original_message_ids: tuple[str, ...]
    #: unsubscribe tokens: "unsubscribe <token>" (mail unsubscribe), or those in a complained-of
    #: message's List-Unsubscribe
    unsubscribe_tokens: tuple[str, ...]
    #: this message's own Message-ID, without "<>" (for idempotency)
    message_id: str | None
    #: what decided: "arf", "dsn", "flufl:<detector>", "mailto", "autoreply", "none", "error"
    source: str
    #: why less than the whole message was read, or what went wrong (one line; "" if nothing)
    note: str = ""


def classify(raw: bytes) -> Classification:
    """What the message ``raw`` (as stored, headers and body) says; ``unknown`` at worst, never an exception."""
    try:
        if not isinstance(raw, (bytes, bytearray, memoryview)):  # bytes(10**9) would be a gigabyte of zeros
            raise TypeError(f"a message is bytes, not {type(raw).__name__}")
        data = bytes(raw)
        if len(data) > 2 * FIRST_READ:
            # A report puts what matters first (its text, the status part, the original's
            # headers) and the original's body last: a DSN that returns a 100 KB newsletter
            # is read from its first 16 KB in a tenth of the time. Only a reading that got as
            # far as the original's headers counts; anything less is read again in full.
            cut = data.rfind(b"\n", 0, FIRST_READ) + 1 or FIRST_READ
            first, complete = _classify(data[:cut])
            if complete:
                return first
        return _classify(data)[0]
    except Exception as exc:  # noqa: BLE001 - the promise: no input makes this raise
        return Classification("unknown", (), (), (), (), None, "error",
                              safe_line(f"could not be read: {type(exc).__name__}: {exc}"))


class _Collected:
    """What the walk over the parts found."""

    def __init__(self) -> None:
        self.delivery_status: list[Message] = []
        self.feedback: list[Message] = []
        self.originals: list[Headers] = []


def _walk(message: Message, parts: list[Part]) -> _Collected:
    found = _Collected()
    for part, _depth, embedded, kind in parts:
        if embedded:
            continue  # the original's own parts: a bounce quoting a bounce is still one bounce
        if kind in ("message/delivery-status", "message/global-delivery-status"):
            found.delivery_status.append(part)
        elif kind == "message/feedback-report":
            found.feedback.append(part)
        elif kind in EMBEDDED_TYPES and part is not message:
            headers = embedded_headers(part)
            if headers is not None:
                found.originals.append(headers)
    return found


def _add(target: list[str], values: list[str] | tuple[str, ...], limit: int = _MAX_CANDIDATES) -> None:
    for value in values:
        if value and value not in target and len(target) < limit:
            target.append(value)


def _present(*values: str | None) -> list[str]:
    return [value for value in values if value]


class _Result:
    """What every kind of message has (its Message-ID, the candidate return paths, ...), to finish with one verdict."""

    def __init__(self, message_id: str | None, note: str) -> None:
        self.message_id = message_id
        self.note = note
        self.return_paths: list[str] = []
        self.original_ids: list[str] = []
        #: whether the original's Message-ID was read from the original itself (attached or quoted)
        self.saw_original = False

    def add_note(self, note: str) -> None:
        self.note = f"{self.note}; {note}" if self.note else note

    def done(self, kind: Kind, findings: list[Finding], source: str, tokens: list[str] | None = None) -> Classification:
        if len(findings) > MAX_FINDINGS:
            self.add_note(f"more than {MAX_FINDINGS} recipients: the first {MAX_FINDINGS} kept")
            findings = findings[:MAX_FINDINGS]
        return Classification(kind, tuple(findings), tuple(self.return_paths), tuple(self.original_ids),
                              tuple(tokens or ()), self.message_id, source, self.note)


def _classify(raw: bytes) -> tuple[Classification, bool]:
    """The classification, and whether it is complete: a verdict, with the original's headers if it is a report."""
    result, out = _verdict(raw)
    if result.kind in ("unsubscribe", "auto_reply"):
        return result, True
    complete = result.kind != "unknown" and out.saw_original
    return result, complete and (result.kind != "complaint" or bool(result.unsubscribe_tokens))


def _verdict(raw: bytes) -> tuple[Classification, _Result]:
    message, note = parse(raw)
    headers = Headers(message)
    out = _Result(clean_message_id(headers.get("message-id")), note)
    for name in _ENVELOPE_HEADERS:
        for value in headers.get_all(name, encoded_words=False):
            # Half the room at most: a To: of fifty addresses leaves the original's Return-Path a place.
            _add(out.return_paths, addresses(value), _MAX_CANDIDATES // 2)
    walk = list(iter_parts(message))
    parts = _walk(message, walk)
    for original in parts.originals:
        out.saw_original = out.saw_original or bool(original.get("message-id"))
        _add(out.original_ids, _present(clean_message_id(original.get("message-id"))))
        _add(out.return_paths, _present(clean_address(original.get("return-path"))))

    if parts.feedback:
        return _complaint(parts, out), out
    if parts.delivery_status:
        findings, seen = _dsn(parts.delivery_status, out)
        if seen:
            return out.done(_worst(findings), findings, "dsn"), out
    auto_reason = auto_reply_reason(headers)
    body = text_body(walk)
    bounce_like = looks_like_bounce(headers, auto_reply=auto_reason is not None)
    if bounce_like:
        inline_ids, inline_paths = inline_original(body)
        found = run_flufl(message)  # last use of ``message``: this empties its attachments
        if found is not None:
            out.saw_original = out.saw_original or bool(inline_ids)
            _add(out.original_ids, inline_ids)
            _add(out.return_paths, inline_paths)
            findings = _flufl_findings(found, body)
            return out.done(_worst(findings), findings, f"flufl:{found.detector}"), out
    tokens = unsubscribe_tokens(headers.get("subject"), body)
    if tokens:
        return out.done("unsubscribe", [Finding("unsubscribe", None, None, "unsubscribe request by mail")],
                        "mailto", tokens), out
    if bounce_like:
        # Not an auto-reply (an Exim bounce says Auto-Submitted too): a bounce nobody could
        # read goes to a human.
        out.add_note("looks like a bounce, but names no recipient the detectors could find")
        return out.done("unknown", [], "none"), out
    if auto_reason is not None:
        _add(out.original_ids, _present(clean_message_id(headers.get("in-reply-to"))))
        sender = addresses("".join(headers.get_all("from", encoded_words=False)[:1]))
        finding = Finding("auto_reply", sender[0] if sender else None, None, safe_line(auto_reason))
        return out.done("auto_reply", [finding], "autoreply"), out
    return out.done("unknown", [], "none"), out


def _worst(findings: list[Finding]) -> Kind:
    kind: Kind = "unknown"
    for finding in findings:
        if _RANK[finding.kind] > _RANK[kind]:
            kind = finding.kind
    return kind


def _dsn(parts: list[Message], out: _Result) -> tuple[list[Finding], bool]:
    findings: list[Finding] = []
    seen = False
    for part in parts:
        report = read_delivery_status(part)
        _add(out.return_paths, _present(report.sender))
        _add(out.original_ids, _present(report.original_message_id))
        for block in report.recipients:
            seen = True
            recipient = block.original_recipient or block.final_recipient
            final = block.final_recipient if block.final_recipient != recipient else None
            kind: Kind | None
            if block.action.startswith(("fail", "error")):  # "error": OpenSMTPD's word for it
                # Without a status a failure counts as soft: only a 5.x.x ends a subscription at once.
                kind = "hard_bounce" if block.status and block.status.startswith("5") else "soft_bounce"
            elif block.action.startswith("delay"):
                kind = "delayed"
            elif block.action in ("delivered", "relayed", "expanded"):
                kind = None
            else:
                # No Action, or one RFC 3464 doesn't know: a 5.x.x still says the address failed.
                kind = "hard_bounce" if block.status and block.status.startswith("5") else None
            if kind is not None:
                findings.append(Finding(kind, recipient, block.status, block.diagnostic, final))
    return findings, seen


def _flufl_findings(found: FluflResult, body: str) -> list[Finding]:
    findings: list[Finding] = []
    for address in found.permanent[: MAX_FINDINGS + 1]:  # one more tells done() there were more
        status, code_class, diagnostic = explanation(body, address)
        # An MTA that gave up on a temporary failure (4.2.2 mailbox full): soft, as in a DSN.
        temporary = (status or "").startswith("4") or (status is None and code_class == "4")
        findings.append(Finding("soft_bounce" if temporary else "hard_bounce", address, status, diagnostic))
    permanent = set(found.permanent)
    for address in found.temporary[: MAX_FINDINGS + 1]:
        # flufl's temporary failures are delay warnings (its DSN and warning detectors' only use of them).
        if address not in permanent:
            status, _code_class, diagnostic = explanation(body, address)
            findings.append(Finding("delayed", address, status, diagnostic))
    return findings


def _redacted(address: str) -> bool:
    # RFC 6590 lets a reporter hide the local part ("xxxxxxx@example.org", "redacted@...").
    local = address.rpartition("@")[0]
    return not local or "redacted" in local or _REDACTED_RE.fullmatch(local) is not None


def _complaint(parts: _Collected, out: _Result) -> Classification:
    report = read_feedback_report(parts.feedback[0])
    if report is None:
        return out.done("unknown", [], "arf")
    _add(out.return_paths, _present(report.original_mail_from))
    tokens: list[str] = []
    for original in parts.originals:
        _add(tokens, tokens_in_list_unsubscribe(original.get("list-unsubscribe")))
    if report.feedback_type not in COMPLAINT_TYPES:
        return out.done("unknown", [], f"arf:{safe_line(report.feedback_type, 40)}", tokens)
    recipients: list[str | None] = [address for address in report.recipients if not _redacted(address)]
    if not recipients:
        # The complained-of message's To: only its first address (the others were copies).
        for original in parts.originals:
            to_field = "".join(original.get_all("to", encoded_words=False)[:1])
            to = [address for address in addresses(to_field) if not _redacted(address)]
            if to:
                recipients.append(to[0])
                break
    findings = [Finding("complaint", address, None, report.description) for address in recipients or [None]]
    return out.done("complaint", findings, "arf", tokens)
