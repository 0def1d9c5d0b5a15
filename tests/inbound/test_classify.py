"""classify(): what each kind of returned message says, and that no input makes it raise.

The fixtures in tests/fixtures/inbound/ are written here from the published formats (RFC
3464, RFC 5965, RFC 3834, and the shapes Postfix, Exim, qmail, Exchange, Outlook.com, Gmail
and Yahoo send); none is copied from a third-party corpus. The large and pathological
inputs (a 10 MB attachment, deep nesting, 100,000 headers) are made in the tests.
"""

from __future__ import annotations

import base64
import os
import quopri
import re
import unicodedata
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from newsletter.inbound.classify import FIRST_READ, MAX_FINDINGS, Classification, Finding, classify

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "inbound"
FUZZ = settings(settings.get_profile("fuzz"), max_examples=150)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def verp(tag: str) -> str:
    return f"bounces+{tag}@news.example.com"


def mid(subscriber: int) -> str:
    return f"2026-12-briefing.{subscriber}@news.example.com"


# name: (kind, source, [(finding kind, recipient, status)], first return paths, original Message-IDs, tokens)
EXPECTED: dict[str, tuple[str, str, list[tuple[str, str | None, str | None]], list[str], list[str], list[str]]] = {
    "postfix-dsn-5.1.1.eml": ("hard_bounce", "dsn", [("hard_bounce", "nobody@example.org", "5.1.1")],
                              [verp("c-2n9c-pivjai472sf2f")], [mid(123456)], []),
    "postfix-dsn-4.2.2.eml": ("soft_bounce", "dsn", [("soft_bounce", "full@example.com", "4.2.2")],
                              [verp("c-2n9d-q3kx7hz2mwd4e")], [mid(123457)], []),
    "postfix-delay.eml": ("delayed", "dsn", [("delayed", "slow@example.com", "4.4.1")],
                          [verp("c-2n9e-7yq2mbx5kaw3r")], [mid(123458)], []),
    "exim-failed.eml": ("hard_bounce", "flufl:exim", [("hard_bounce", "gone@example.net", "5.1.1")],
                        [verp("c-2n9f-ab3kq7zw2mx5y")], [mid(123459)], []),
    "qmail-failure.eml": ("hard_bounce", "flufl:qmail", [("hard_bounce", "olduser@example.com", "5.1.1")],
                          [verp("c-2n9g-k2mzq5wx7ab4c")], [mid(123460)], []),
    "qmail-mailbox-full.eml": ("soft_bounce", "flufl:qmail", [("soft_bounce", "crowded@example.com", "4.2.2")],
                               [verp("c-2n9h-m4wq2zx7kb5ad")], [mid(123461)], []),
    "exchange-legacy.eml": ("hard_bounce", "flufl:exchange", [("hard_bounce", "leaver@corp.example.com", "5.1.1")],
                            [verp("c-2n9i-p7zq4mw2xk5ab")], [mid(123462)], []),
    "outlook-ndr.eml": ("hard_bounce", "dsn", [("hard_bounce", "missing@example.com", "5.1.10")],
                        [verp("c-2n9j-w5xq2mz7kp4ab")], [mid(123463)], []),
    "gmail-failure.eml": ("hard_bounce", "dsn", [("hard_bounce", "missing.person@example.org", "5.1.1")],
                          [verp("c-2n9k-z2mq7wx4kb5ac")], [mid(123464)], []),
    "yahoo-failure.eml": ("hard_bounce", "flufl:yahoo", [("hard_bounce", "closed@example.org", None)],
                          [verp("c-2n9l-q5wz2mx7ka4bd")], [mid(123465)], []),
    "postfix-old.eml": ("hard_bounce", "flufl:postfix", [("hard_bounce", "departed@example.org", None)],
                        [verp("c-2n9m-x7kq2mw5zb4ae")], [mid(123466)], []),
    "arf-abuse.eml": ("complaint", "arf", [("complaint", "annoyed@example.com", None)],
                      ["fbl@news.example.com", verp("c-2n9n-m2kq7wz5xa4bf")], [mid(123467)],
                      ["123467-3-Zy8xW7vU6tS5rQ4pO3nM2lK1jI"]),
    "arf-redacted.eml": ("complaint", "arf", [("complaint", None, None)],
                         ["fbl@news.example.com", verp("c-2n9o-k7zq2mx5wb4ag")], [mid(123468)],
                         ["123468-3-Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8Qr"]),
    "autoreply-auto-submitted.eml": ("auto_reply", "autoreply", [("auto_reply", "reader.one@example.org", None)],
                                     [verp("c-2n9p-z5wq7mx2kb4ah")], [mid(123469)], []),
    "out-of-office.eml": ("auto_reply", "autoreply", [("auto_reply", "reader.two@example.com", None)],
                          [verp("c-2n9q-w2mq5zx7ka4ai")], [], []),
    "unsubscribe.eml": ("unsubscribe", "mailto", [("unsubscribe", None, None)],
                        [verp("unsubscribe")], [], ["123456-3-Xk9aQ2mZ7bN4cV8dF1gH5jK0lP"]),
    "unsubscribe-reply.eml": ("unsubscribe", "mailto", [("unsubscribe", None, None)],
                              [verp("unsubscribe")], [], ["123457-3-Pq8wE3rT6yU1iO4pA7sD0fG2hJ"]),
    "utf16-dsn.eml": ("hard_bounce", "dsn", [("hard_bounce", "utf16@example.org", "5.1.1")],
                      [verp("c-2n9r-q7kx2mz5wa4aj")], [mid(123471)], []),
    "spam.eml": ("unknown", "none", [], ["bounces@news.example.com"], [], []),
    "no-mime.eml": ("unknown", "none", [], ["bounces@news.example.com"], [], []),
    "broken-headers.eml": ("unknown", "none", [], ["bounces@news.example.com"], [], []),
}


def test_every_fixture_has_its_expectation() -> None:
    assert sorted(path.name for path in FIXTURES.glob("*.eml")) == sorted(EXPECTED)


def _summary(result: Classification) -> tuple[object, ...]:
    return (result.kind, result.source, [(f.kind, f.recipient, f.status) for f in result.findings],
            list(result.return_paths), list(result.original_message_ids), list(result.unsubscribe_tokens))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture(name: str) -> None:
    kind, source, findings, paths, ids, tokens = EXPECTED[name]
    result = classify(fixture(name))
    assert (result.kind, result.source) == (kind, source)
    assert [(f.kind, f.recipient, f.status) for f in result.findings] == findings
    assert list(result.return_paths[: len(paths)]) == paths
    assert list(result.original_message_ids) == ids
    assert list(result.unsubscribe_tokens) == tokens
    assert result.note == ""


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_with_crlf_line_ends_reads_the_same(name: str) -> None:
    # IMAP and mbox hand messages over with CRLF; Maildir files usually have LF.
    raw = fixture(name)
    assert _summary(classify(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))) == _summary(classify(raw))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_diagnostics_are_one_clean_line(name: str) -> None:
    for finding in classify(fixture(name)).findings:
        assert_clean(finding.diagnostic)


def assert_clean(text: str) -> None:
    assert len(text) <= 500
    assert not any(unicodedata.category(char) in ("Cc", "Cs") for char in text), repr(text)


def test_message_ids_and_return_paths_of_a_dsn() -> None:
    result = classify(fixture("postfix-dsn-5.1.1.eml"))
    assert result.message_id == "20261201091407.4NQ8Hk2Zx9z1xyz@relay.news.example.com"
    # Delivered-To, X-Original-To and To name the same address once; then the original's
    # Return-Path and Postfix's X-Postfix-Sender (also the same).
    assert result.return_paths == (verp("c-2n9c-pivjai472sf2f"),)
    assert result.findings[0].diagnostic == (
        "550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown in virtual mailbox table"
    )
    # A complaint about a bounce is not a complaint: the original's List-Unsubscribe tokens
    # are only read for complaints.
    assert result.unsubscribe_tokens == ()


def test_many_to_addresses_leave_room_for_the_originals_return_path() -> None:
    to = ", ".join(f"r{i}@example.org" for i in range(50))
    original = "Return-Path: <bounces+o-1-bbbbbbbbbbbbb@news.example.com>\nMessage-ID: <o@x>\n\nbody\n"
    result = classify(f"To: {to}\n".encode() + dsn(block("a@example.org", "failed", "5.1.1"), original=original))
    assert result.return_paths[:2] == ("r0@example.org", "r1@example.org")
    assert len(result.return_paths) == 9
    assert result.return_paths[-1] == "bounces+o-1-bbbbbbbbbbbbb@news.example.com"


def test_the_return_path_order_is_envelope_first() -> None:
    raw = (b"Delivered-To: bounces+a-b-cccccccccccccc@news.example.com\n"
           b"X-Original-To: bounces+x-y-zzzzzzzzzzzzz@news.example.com\n"
           b"Envelope-To: third@news.example.com\n"
           b"To: Someone <fourth@news.example.com>, fifth@news.example.com\n"
           + fixture("postfix-dsn-4.2.2.eml").split(b"\n", 2)[2])
    result = classify(raw)
    assert result.return_paths == (
        "bounces+a-b-cccccccccccccc@news.example.com", "bounces+x-y-zzzzzzzzzzzzz@news.example.com",
        "third@news.example.com", "fourth@news.example.com", "fifth@news.example.com",
        verp("c-2n9d-q3kx7hz2mwd4e"),
    )


def test_an_address_inside_an_encoded_display_name_is_no_candidate() -> None:
    # Decoded, the display name would read "<bounces+forged...>": addresses are read before decoding.
    raw = (b"To: =?utf-8?q?=3Cbounces+forged-1-aaaaaaaaaaaaa@news.example.com=3E?= <real@news.example.com>\n"
           b"Subject: hello\n\nhi\n")
    assert classify(raw).return_paths == ("real@news.example.com",)


# --- DSNs built here: the rules one at a time -------------------------------------------

def dsn(*blocks: str, per_message: str = "Reporting-MTA: dns; relay.news.example.com\n",
        status_headers: str = "", original: str = "") -> bytes:
    parts = [
        "--b\nContent-Type: text/plain\n\nThe mail system\n",
        f"--b\nContent-Type: message/delivery-status{status_headers}\n\n{per_message}\n" + "\n".join(blocks),
    ]
    if original:
        parts.append(f"--b\nContent-Type: message/rfc822\n\n{original}")
    return ("From: MAILER-DAEMON@relay.news.example.com\nTo: bounces+c-1-aaaaaaaaaaaaa@news.example.com\n"
            "Subject: Undelivered Mail Returned to Sender\nMIME-Version: 1.0\n"
            "Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n"
            + "\n".join(parts) + "\n--b--\n").encode()


def block(recipient: str, action: str, status: str | None = None, extra: str = "") -> str:
    text = f"Final-Recipient: rfc822; {recipient}\nAction: {action}\n"
    return text + (f"Status: {status}\n" if status else "") + extra


def kinds(result: Classification) -> list[tuple[str, str | None, str | None]]:
    return [(f.kind, f.recipient, f.status) for f in result.findings]


def test_one_report_with_several_recipients() -> None:
    result = classify(dsn(
        block("a@example.org", "failed", "5.1.1"),
        block("b@example.org", "delivered", "2.0.0"),
        block("c@example.org", "delayed", "4.4.7"),
        block("d@example.org", "failed", "4.2.2"),
        block("e@example.org", "relayed", "2.0.0"),
        block("f@example.org", "expanded", "2.0.0"),
    ))
    assert result.kind == "hard_bounce"  # the worst finding
    assert kinds(result) == [("hard_bounce", "a@example.org", "5.1.1"), ("delayed", "c@example.org", "4.4.7"),
                             ("soft_bounce", "d@example.org", "4.2.2")]


def test_a_report_of_deliveries_only_says_nothing_and_is_not_sent_to_the_heuristics() -> None:
    result = classify(dsn(block("b@example.org", "delivered", "2.0.0")))
    assert (result.kind, result.source, result.findings) == ("unknown", "dsn", ())


@pytest.mark.parametrize(("action", "status", "diagnostic", "expected"), [
    ("failed", None, "", "soft_bounce"),  # no status: only a 5.x.x ends a subscription at once
    ("failed", None, "Diagnostic-Code: smtp; 550 5.2.1 mailbox disabled\n", "hard_bounce"),
    ("Failed (permanent)", "5.1.1", "", "hard_bounce"),
    ("error", "5.1.1", "", "hard_bounce"),  # OpenSMTPD's word
    ("delayed", "4.4.1", "", "delayed"),
    ("", "5.1.1", "", "hard_bounce"),  # no Action, but the status says it failed
    ("", "4.4.1", "", None),
    ("failed", "5.1.1 (user unknown)", "", "hard_bounce"),
])
def test_action_and_status(action: str, status: str | None, diagnostic: str, expected: str | None) -> None:
    text = "Final-Recipient: rfc822; a@example.org\n" + (f"Action: {action}\n" if action else "")
    text += (f"Status: {status}\n" if status else "") + diagnostic
    result = classify(dsn(text))
    assert [f.kind for f in result.findings] == ([expected] if expected else [])


def test_original_recipient_wins_and_final_recipient_is_kept() -> None:
    result = classify(dsn("Original-Recipient: rfc822;Reader@Example.org\nFinal-Recipient: rfc822; <mbox-7@store.example.org>\n"
                          "Action: failed\nStatus: 5.1.1\n"))
    assert result.findings == (Finding("hard_bounce", "reader@example.org", "5.1.1", "", "mbox-7@store.example.org"),)


def test_a_recipient_that_is_no_address_is_none() -> None:
    result = classify(dsn("Final-Recipient: x400; /G=A/S=B/\nAction: failed\nStatus: 5.1.1\n",
                          "Final-Recipient: rfc822; not an address\nAction: failed\nStatus: 5.1.1\n"))
    assert [f.recipient for f in result.findings] == [None, None]


def test_a_diagnostic_is_one_line_without_controls_and_cut() -> None:
    noisy = "smtp; 550 5.1.1 bad\x1b[31m red \x07 \u202e evil" + " x" * 400 + "\r\n continued"
    result = classify(dsn(block("a@example.org", "failed", "5.1.1", f"Diagnostic-Code: {noisy}\n")))
    diagnostic = result.findings[0].diagnostic
    assert diagnostic.startswith("550 5.1.1 bad [31m red evil x x")
    assert_clean(diagnostic)
    assert "\u202e" not in diagnostic and 495 <= len(diagnostic) <= 500  # a cut on a space drops it


def test_the_original_message_id_from_message_rfc822_and_gmails_field() -> None:
    original = "Return-Path: <bounces+o-1-bbbbbbbbbbbbb@news.example.com>\nMessage-ID: <orig.1@news.example.com>\n\nbody\n"
    result = classify(dsn(block("a@example.org", "failed", "5.1.1"),
                          per_message="Reporting-MTA: dns; x\nX-Postfix-Sender: rfc822; bounces+p-1-ccccccccccccc@news.example.com\n",
                          original=original))
    assert result.original_message_ids == ("orig.1@news.example.com",)
    assert result.return_paths == ("bounces+c-1-aaaaaaaaaaaaa@news.example.com",
                                   "bounces+o-1-bbbbbbbbbbbbb@news.example.com",
                                   "bounces+p-1-ccccccccccccc@news.example.com")


def test_gmails_x_original_message_id_when_the_original_is_not_returned() -> None:
    raw = fixture("gmail-failure.eml")
    raw = raw[: raw.index(b"--000000000000a1b2c3060a1b2c3d\nContent-Type: text/rfc822-headers")] + b"--000000000000a1b2c3060a1b2c3d--\n"
    result = classify(raw)
    assert (result.kind, result.original_message_ids) == ("hard_bounce", (mid(123464),))


def test_a_delivery_status_part_in_base64() -> None:
    fields = "Reporting-MTA: dns; x\n\nFinal-Recipient: rfc822; b64@example.org\nAction: failed\nStatus: 5.1.1\n"
    encoded = base64.encodebytes(fields.encode()).decode()
    raw = dsn(per_message="", status_headers="\nContent-Transfer-Encoding: base64").replace(
        b"\n\n\n--b--", b"\n\n" + encoded.encode() + b"\n--b--")
    assert kinds(classify(raw)) == [("hard_bounce", "b64@example.org", "5.1.1")]


def test_a_global_delivery_status_part_rfc_6533() -> None:
    raw = dsn(block("ünïcode@example.org", "failed", "5.1.1")).replace(
        b"message/delivery-status", b"message/global-delivery-status")
    result = classify(raw)
    assert result.kind == "hard_bounce" and result.source == "dsn"


# --- complaints -----------------------------------------------------------------------

@pytest.mark.parametrize(("feedback_type", "kind", "source"), [
    ("abuse", "complaint", "arf"), ("fraud", "complaint", "arf"), ("Abuse; comment", "complaint", "arf"),
    ("not-spam", "unknown", "arf:not-spam"), ("auth-failure", "unknown", "arf:auth-failure"),
])
def test_feedback_types(feedback_type: str, kind: str, source: str) -> None:
    raw = fixture("arf-abuse.eml").replace(b"Feedback-Type: abuse", f"Feedback-Type: {feedback_type}".encode())
    result = classify(raw)
    assert (result.kind, result.source) == (kind, source)
    # Whatever the type, what names the delivery is still there for the caller.
    assert result.original_message_ids == (mid(123467),)


def test_a_complaint_without_original_rcpt_to_names_the_originals_to() -> None:
    raw = fixture("arf-abuse.eml").replace(b"Original-Rcpt-To: <Annoyed@example.com>\n", b"")
    assert kinds(classify(raw)) == [("complaint", "annoyed@example.com", None)]


# --- non-standard bounces: the gate before flufl.bounce ----------------------------------

def test_a_readers_message_shaped_like_a_qmail_bounce_is_not_one() -> None:
    raw = (b"From: Reader <reader@example.org>\nTo: editors@news.example.com\nSubject: Hello\n\n"
           b"Hi. This is the reader from last week.\n\n<friend@example.org>:\nwould like the newsletter too.\n")
    assert classify(raw).kind == "unknown"
    # The same text from a mail daemon is a bounce.
    daemon = raw.replace(b"Reader <reader@example.org>", b"MAILER-DAEMON@mail.example.org")
    assert kinds(classify(daemon)) == [("hard_bounce", "friend@example.org", None)]


def test_a_bounce_nobody_can_read_is_unknown_for_a_human_even_if_auto_submitted() -> None:
    raw = (b"From: Mail Delivery System <MAILER-DAEMON@mail.example.org>\nAuto-Submitted: auto-replied\n"
           b"Subject: Mail delivery failed\n\nSomething went wrong, in words no detector knows.\n")
    result = classify(raw)
    assert (result.kind, result.source) == ("unknown", "none")
    assert result.note == "looks like a bounce, but names no recipient the detectors could find"


def test_a_bounce_quoting_our_list_unsubscribe_header_is_no_unsubscribe() -> None:
    raw = (b"From: MAILER-DAEMON@mail.example.org\nSubject: Returned mail\n\nCould not deliver.\n\n"
           b"--- Original message follows\nList-Unsubscribe: <https://news.example.com/unsubscribe/" + TOKEN.encode()
           + b">,\n <mailto:bounces+unsubscribe@news.example.com?subject=unsubscribe%20" + TOKEN.encode() + b">\n")
    result = classify(raw)
    assert (result.kind, result.unsubscribe_tokens) == ("unknown", ())


def test_an_unsubscribe_from_a_postmaster_address_is_still_one() -> None:
    raw = message(f"unsubscribe {TOKEN}").replace(b"Reader <reader@example.org>", b"postmaster@example.org")
    assert classify(raw).kind == "unsubscribe"


@pytest.mark.parametrize(("charset", "encoding"), [
    ("iso-8859-1", "8bit"), ("utf-8", "8bit"), ("utf-8", "base64"), ("utf-8", "quoted-printable"), ("utf-16", "base64"),
])
def test_a_bounce_text_in_its_declared_charset(charset: str, encoding: str) -> None:
    # flufl's detectors read most payloads undecoded: they get base64, quoted-printable and UTF-16 text decoded.
    text = "Hi. This is the qmail-send program at mail.example.org.\n\n<x@example.org>:\nEmpfänger unbekannt: 550 5.1.1\n"
    body = {"8bit": bytes, "base64": base64.encodebytes, "quoted-printable": quopri.encodestring}[encoding](text.encode(charset))
    raw = (f"From: MAILER-DAEMON@mail.example.org\nSubject: failure notice\nMIME-Version: 1.0\n"
           f"Content-Type: text/plain; charset={charset}\nContent-Transfer-Encoding: {encoding}\n\n").encode() + body
    result = classify(raw)
    assert kinds(result) == [("hard_bounce", "x@example.org", "5.1.1")]
    assert result.findings[0].diagnostic == "<x@example.org>: Empfänger unbekannt: 550 5.1.1"


def test_a_warning_flufl_reads_as_temporary_is_a_delay() -> None:
    raw = (b"From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>\nTo: bounces+x@news.example.com\n"
           b"Subject: Delivery Status Notification (Delay)\n\n"
           b"This is an automatically generated Delivery Status Notification\n\n"
           b"THIS IS A WARNING MESSAGE ONLY.\n\n"
           b"Delivery to the following recipient has been delayed:\n\n     late@example.org\n\n"
           b"Message will be retried for 2 more day(s)\n")
    result = classify(raw)
    assert (result.kind, result.source) == ("delayed", "flufl:simplewarning")
    assert kinds(result) == [("delayed", "late@example.org", None)]


# --- unsubscribes and auto-replies -----------------------------------------------------

TOKEN = "42-7-Xk9aQ2mZ7bN4cV8dF1gH5jK0lP"


def message(subject: str, body: str = "Hello.", headers: str = "", content_type: str = "text/plain") -> bytes:
    return (f"From: Reader <reader@example.org>\nTo: bounces+unsubscribe@news.example.com\nSubject: {subject}\n"
            f"Message-ID: <m1@example.org>\n{headers}MIME-Version: 1.0\nContent-Type: {content_type}; charset=utf-8\n\n"
            f"{body}\n").encode()


@pytest.mark.parametrize("raw", [
    message(f"unsubscribe {TOKEN}"),
    message(f"UNSUBSCRIBE {TOKEN}"),
    message(f"Re: unsubscribe {TOKEN}"),
    message(f"unsubscribe%20{TOKEN}"),  # a client that left the mailto's subject encoded
    message(f"=?utf-8?q?unsubscribe_{TOKEN}?="),
    message("Please", f"unsubscribe {TOKEN}\n"),
    message("Please", f"Take me off.\n\n> Subject: Re: unsubscribe {TOKEN}\n"),
    message("Please", f"<p>unsubscribe <b>{TOKEN}</b></p>", content_type="text/html"),
], ids=["subject", "upper", "re", "percent", "encoded-word", "body", "quoted", "html"])
def test_mail_unsubscribe(raw: bytes) -> None:
    result = classify(raw)
    assert (result.kind, result.source, result.unsubscribe_tokens) == ("unsubscribe", "mailto", (TOKEN,))


@pytest.mark.parametrize("subject", [
    "unsubscribe", "unsubscribe 0-7-Xk9aQ2mZ7bN4cV8dF1gH5jK0lP", "unsubscribe 42-7-short",
    f"unsubscribe {TOKEN}x", "resubscribe me please",
])
def test_not_an_unsubscribe_token(subject: str) -> None:
    assert classify(message(subject)).kind == "unknown"


def test_a_token_only_in_a_link_is_no_request() -> None:
    # The newsletter's own footer link, quoted in a reply: the reader didn't ask to leave.
    raw = message("Re: The December briefing", f"Great issue!\n\n> https://news.example.com/unsubscribe/{TOKEN}\n")
    assert classify(raw).kind == "unknown"


@pytest.mark.parametrize(("subject", "headers"), [
    ("Out of Office: The December briefing", ""),
    ("Automatic reply: The December briefing", ""),
    ("Abwesenheitsnotiz: The December briefing", ""),
    ("=?utf-8?q?R=C3=A9ponse_automatique=3A_The_December_briefing?=", ""),
    ("I am on vacation", ""),
    ("Re: The December briefing", "Auto-Submitted: auto-generated\n"),
    ("Re: The December briefing", "X-Autoreply: yes\n"),
    ("Re: The December briefing", "X-Autorespond: Re: The December briefing\n"),
    ("Re: The December briefing", "Precedence: auto_reply\n"),
])
def test_auto_replies(subject: str, headers: str) -> None:
    result = classify(message(subject, headers=headers))
    assert (result.kind, result.source) == ("auto_reply", "autoreply")
    assert kinds(result) == [("auto_reply", "reader@example.org", None)]


def test_raw_utf8_in_a_subject_and_an_undeclared_body() -> None:
    # 8-bit bytes nobody encoded (RFC 6532 allows them in headers): read as UTF-8.
    raw = ("From: reader@example.org\nSubject: Abwesenheitsnotiz: Grüße\n\n"
           f"Grüße, unsubscribe {TOKEN}\n").encode()
    result = classify(raw)
    assert (result.kind, result.unsubscribe_tokens) == ("unsubscribe", (TOKEN,))
    result = classify(raw.replace(b"unsubscribe", b"bye"))
    assert result.findings[0].diagnostic == "subject says 'abwesenheit'"


def test_auto_submitted_no_is_a_person() -> None:
    assert classify(message("Re: The December briefing", headers="Auto-Submitted: no\n")).kind == "unknown"


def test_an_auto_reply_from_the_null_sender_is_not_sent_to_the_bounce_detectors() -> None:
    raw = message("Automatic reply: x", "Delivery has failed\n[someone@example.org]\n", headers="Return-Path: <>\n")
    assert classify(raw).kind == "auto_reply"


# --- bounded cost and odd input --------------------------------------------------------

def big_attachment(size: int = 10 * 1024 * 1024) -> str:
    data = base64.encodebytes(os.urandom(size)).decode()
    return f"--x\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n{data}"


def test_a_dsn_whose_original_carries_10_mb() -> None:
    original = ("Return-Path: <bounces+c-1-aaaaaaaaaaaaa@news.example.com>\nMessage-ID: <big@news.example.com>\n"
                "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=x\n\n--x\nContent-Type: text/plain\n\nhi\n"
                + big_attachment() + "--x--\n")
    result = classify(dsn(block("a@example.org", "failed", "5.1.1"), original=original))
    assert kinds(result) == [("hard_bounce", "a@example.org", "5.1.1")]
    assert result.original_message_ids == ("big@news.example.com",)


def test_a_bounce_like_message_with_a_10_mb_attachment_and_a_10_mb_text() -> None:
    text = "Hi. This is the qmail-send program at mail.example.com.\n\n<x@example.org>:\nsaid 550 no\n\n" + "line\n" * 2_000_000
    raw = ("From: MAILER-DAEMON@mail.example.com\nSubject: failure notice\nMIME-Version: 1.0\n"
           "Content-Type: multipart/mixed; boundary=x\n\n--x\nContent-Type: text/plain\n\n" + text
           + big_attachment() + "--x--\n").encode()
    result = classify(raw)
    assert kinds(result) == [("hard_bounce", "x@example.org", None)]


def test_a_bounce_of_a_thousand_text_parts_still_reads_the_first() -> None:
    # One boundary can separate any number of parts: flufl gets the first few hundred, with a budget of text.
    filler = base64.encodebytes(os.urandom(10_000)).decode()
    first = "--b\nContent-Type: text/plain\n\nHi. This is the qmail-send program at x.\n\n<x@example.org>:\nno such user\n\n"
    raw = ("From: MAILER-DAEMON@mail.example.com\nSubject: failure notice\nContent-Type: multipart/mixed; boundary=b\n\n"
           + first + "".join(f"--b\nContent-Type: text/plain\n\n{filler}" for _ in range(1000)) + "--b--\n").encode()
    assert kinds(classify(raw)) == [("hard_bounce", "x@example.org", None)]


@pytest.mark.parametrize(("human", "original_headers"), [
    (100, 10), (20_000, 10), (100, 2_000), (15_000, 10), (15_900, 10), (16_000, 10), (16_100, 10),
], ids=["report-first", "long-text-first", "long-original-headers", "cut-in-original", "cut-near-status-1",
        "cut-near-status-2", "cut-near-status-3"])
def test_a_large_report_reads_the_same_from_its_first_part_or_in_full(human: int, original_headers: int) -> None:
    # Read from the first FIRST_READ bytes when those hold the original's headers, in full otherwise.
    text = "The mail system said more than usual.\n" * (human // 38)
    padding = "".join(f"X-Padding-{i}: {'p' * 40}\n" for i in range(original_headers))
    original = (f"Return-Path: <bounces+o-1-bbbbbbbbbbbbb@news.example.com>\n{padding}Message-ID: <orig.2@news.example.com>\n"
                "List-Unsubscribe: <https://news.example.com/unsubscribe/" + TOKEN + ">\n\n" + "newsletter body line\n" * 5_000)
    raw = dsn(block("a@example.org", "failed", "5.1.1"), original=original).replace(b"The mail system", text.encode())
    assert len(raw) > 2 * FIRST_READ
    result = classify(raw)
    assert kinds(result) == [("hard_bounce", "a@example.org", "5.1.1")]
    assert result.original_message_ids == ("orig.2@news.example.com",)
    assert result.return_paths[-1] == "bounces+o-1-bbbbbbbbbbbbb@news.example.com"
    complaint = classify(fixture("arf-abuse.eml").replace(b"Hello, this is the December briefing.", b"body\n" * 20_000)
                         .replace(b"This is an email abuse report", text.encode()))
    assert (complaint.kind, complaint.original_message_ids, complaint.unsubscribe_tokens) == (
        "complaint", (mid(123467),), ("123467-3-Zy8xW7vU6tS5rQ4pO3nM2lK1jI",))


def test_a_message_of_10_mb_without_mime() -> None:
    raw = b"From: someone@example.org\nSubject: big\n\n" + b"x" * (10 * 1024 * 1024)
    assert classify(raw).kind == "unknown"


@pytest.mark.parametrize("depth", [40, 5000])
def test_deeply_nested_multiparts(depth: int) -> None:
    head = "From: MAILER-DAEMON@example.org\nSubject: failure notice\nContent-Type: multipart/mixed; boundary=b0\n\n"
    body = "".join(f"--b{i}\nContent-Type: multipart/mixed; boundary=b{i + 1}\n\n" for i in range(depth))
    body += f"--b{depth}\nContent-Type: text/plain\n\nhi\n" + "".join(f"--b{i}--\n" for i in range(depth, -1, -1))
    result = classify((head + body).encode())
    assert result.kind == "unknown"
    if depth > 1000:
        assert "headers only" in result.note


def test_a_report_naming_thousands_of_recipients_keeps_the_first_hundred() -> None:
    result = classify(dsn(*(block(f"r{i}@example.org", "failed", "5.1.1") for i in range(150))))
    assert len(result.findings) == MAX_FINDINGS
    assert result.findings[0].recipient == "r0@example.org"
    assert result.note == "more than 100 recipients: the first 100 kept"


def test_a_hundred_thousand_headers() -> None:
    raw = b"Received: from x by y\n" * 100_000 + fixture("postfix-dsn-5.1.1.eml")
    assert kinds(classify(raw)) == [("hard_bounce", "nobody@example.org", "5.1.1")]


@pytest.mark.parametrize("raw", [
    b"", b"\n", b"\x00\xff" * 100, b"From:", b"Content-Type: multipart/report; boundary=\n\n--\n",
    b"Content-Type: message/delivery-status\nContent-Transfer-Encoding: base64\n\n!!!!\n",
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n--b\n"
    b"Content-Type: message/delivery-status; charset=utf-16\n\n\xff\xfe\x00\x00A\x00:\x00\n--b--\n",
    b"Content-Type: text/plain; charset=no-such-charset\n\nunsubscribe 1-1-aaaaaaaaaaaaaaaaaaaaaaaaaa\n",
    b"Content-Type: text/plain; charset=utf-16\nContent-Transfer-Encoding: base64\n\n/w==\n",
    b"Subject: =?utf-8?b?" + b"A" * 100_000 + b"?=\n\n",
    b"To: " + b"<a@b>," * 50_000 + b"\n\n",
    b"Content-Type: text/html\n\n" + b"<style" * 50_000,  # a lazy regex to "</style>" would be quadratic
    b"From: MAILER-DAEMON@example.org\nX-Failed-Recipients: a@example.org\n" * 20_000 + b"\n",
])
def test_odd_input_is_unknown_not_an_exception(raw: bytes) -> None:
    result = classify(raw)
    assert result.source != "error", result.note


@pytest.mark.parametrize("value", [None, 10**9, "text"])
def test_something_not_bytes_is_an_error_result_not_an_exception(value: object) -> None:
    result = classify(value)  # type: ignore[arg-type]
    assert (result.kind, result.source) == ("unknown", "error")
    assert result.note.startswith("could not be read: TypeError: a message is bytes, not ")


def test_an_mbox_from_line_first_is_read_past() -> None:
    # What a pipe from the MTA or an mbox may hand over: the envelope's "From " line first.
    raw = b"From MAILER-DAEMON  Tue Dec  1 09:14:07 2026\n" + fixture("postfix-dsn-5.1.1.eml")
    assert _summary(classify(raw)) == _summary(classify(fixture("postfix-dsn-5.1.1.eml")))


def test_bytes_like_values_are_read() -> None:
    raw = fixture("postfix-dsn-5.1.1.eml")
    assert _summary(classify(bytearray(raw))) == _summary(classify(memoryview(raw))) == _summary(classify(raw))


# --- fuzz: never an exception, whatever the bytes ----------------------------------------

_SAMPLES = [fixture(name) for name in sorted(EXPECTED)]


def _check(result: Classification) -> None:
    # "error" is the last resort of classify(): an exception inside is a bug to fix, even if it never escapes.
    assert result.source != "error", result.note
    assert result.kind in ("hard_bounce", "soft_bounce", "complaint", "unsubscribe", "auto_reply", "delayed", "unknown")
    for finding in result.findings:
        assert_clean(finding.diagnostic)
        assert finding.recipient is None or re.fullmatch(r"[^\s<>]+@[^\s<>]+", finding.recipient)
    for address in result.return_paths:
        assert re.fullmatch(r"[^\s<>]+@[^\s<>]+", address)
    assert_clean(result.note)


@FUZZ
@given(st.binary(max_size=4000))
@example(b"Content-Type: multipart/report; report-type=feedback-report; boundary=b\n\n--b\n"
         b"Content-Type: message/feedback-report\n\n\n--b--\n")
def test_arbitrary_bytes(raw: bytes) -> None:
    _check(classify(raw))


@FUZZ
@given(st.sampled_from(_SAMPLES), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 40), st.binary(max_size=40)),
                                            min_size=1, max_size=6))
def test_mutated_fixtures(raw: bytes, edits: list[tuple[int, int, bytes]]) -> None:
    data = bytearray(raw)
    for at, cut, insert in edits:
        at %= len(data) + 1
        data[at:at + cut] = insert
    _check(classify(bytes(data)))


_CONTENT_TYPES = ["text/plain", "text/html", "message/delivery-status", "message/global-delivery-status",
                  "message/feedback-report", "message/rfc822", "text/rfc822-headers", "multipart/mixed",
                  "application/octet-stream", "multipart/report; report-type=delivery-status"]
_LINES = st.sampled_from([
    "Final-Recipient: rfc822; a@example.org", "Original-Recipient: utf-8; ü@example.org", "Action: failed",
    "Action: delayed", "Status: 5.1.1", "Status: 4.2.2", "Diagnostic-Code: smtp; 550 5.1.1 no", "Feedback-Type: abuse",
    "Original-Rcpt-To: <b@example.org>", "Message-ID: <m@x>", "Return-Path: <bounces+a-b-c@news.example.com>",
    "List-Unsubscribe: <https://x/unsubscribe/1-2-aaaaaaaaaaaaaaaaaaaaaaaaaa>", f"unsubscribe {TOKEN}",
    "Hi. This is the qmail-send program at x.", "<a@example.org>:", "--b", "--b--", "", " continued", "=?utf-8?q?x?=",
    "Content-Type: message/rfc822", "Content-Transfer-Encoding: base64", "//5BAA==", "\xff\xfe", "X-Failed-Recipients: a@x",
])


@st.composite
def mime_messages(draw: st.DrawFn) -> bytes:
    """Messages with the parts classify() looks for, in random shapes, encodings and charsets."""
    head = draw(st.lists(st.sampled_from([
        "From: MAILER-DAEMON@example.org", "From: reader@example.org", "Auto-Submitted: auto-replied",
        "Subject: Undelivered Mail", f"Subject: unsubscribe {TOKEN}", "Return-Path: <>", "To: bounces+x@news.example.com",
        "Delivered-To: bounces+a-b-c@news.example.com", "Message-ID: <s@x>", "MIME-Version: 1.0",
    ]), max_size=6))
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        content_type = draw(st.sampled_from(_CONTENT_TYPES))
        charset = draw(st.sampled_from(["", "; charset=utf-8", "; charset=utf-16", "; charset=bogus", "; charset=latin-1"]))
        encoding = draw(st.sampled_from(["", "base64", "quoted-printable", "8bit"]))
        body = "\n".join(draw(st.lists(_LINES, max_size=12)))
        if encoding == "base64":
            body = base64.encodebytes(body.encode("utf-16" if "16" in charset else "utf-8")).decode()
        parts.append(f"--b\nContent-Type: {content_type}{charset}\n"
                     + (f"Content-Transfer-Encoding: {encoding}\n" if encoding else "") + f"\n{body}\n")
    top = draw(st.sampled_from(["multipart/report; report-type=delivery-status", "multipart/report; report-type=feedback-report",
                                "multipart/mixed", "text/plain"]))
    text = "\n".join(head) + f"\nContent-Type: {top}; boundary=b\n\n" + "".join(parts) + draw(st.sampled_from(["--b--\n", ""]))
    return text.encode("utf-8", "surrogateescape")


@FUZZ
@given(mime_messages())
def test_structured_messages(raw: bytes) -> None:
    _check(classify(raw))
    _check(classify(raw.replace(b"\n", b"\r\n")))
