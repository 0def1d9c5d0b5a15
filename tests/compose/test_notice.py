"""The confirmation email as bytes: an issue's headers but no List-*, Auto-Submitted, wire-ready, DKIM-signed."""

from __future__ import annotations

import dataclasses
import datetime as dt
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest

from newsletter.compose.dkim import DkimSigner, generate_key, load_signer
from newsletter.compose.notice import compose_notice
from newsletter.config import ListSettings, SenderSettings
from newsletter.errors import ComposeError
from newsletter.render.confirm import RenderedNotice, render_confirmation
from tests.compose.test_dkim import DATE, DOMAIN, SELECTOR, Key, header_names, signature_tags, verifies

STRICT = policy.default.clone(raise_on_defect=True)
URL = "https://news.example.com/confirm/12-abc_DEF"
SENDER = SenderSettings(reply_to="Editors <editors@news.example.com>")


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Key:
    path = tmp_path_factory.mktemp("dkim") / "dkim.pem"
    return Key(path, generate_key(path))


@pytest.fixture(scope="module")
def signer(key: Key) -> DkimSigner:
    return load_signer(key.path, selector=SELECTOR, domain=DOMAIN)


@pytest.fixture(scope="module")
def notice() -> RenderedNotice:
    return render_confirmation(email="ann@example.org", lists=[ListSettings("briefing", "The Daily Briefing", "News.")],
                               confirm_url=URL, expires=dt.date(2025, 3, 3), sender=SENDER)


def message(notice: RenderedNotice, **overrides: object) -> bytes:
    values: dict[str, object] = {"email": "ann@example.org", "sender": SENDER, "message_id": "confirm.1.ab@news.example.com",
                                 "date": DATE}
    values.update(overrides)
    return compose_notice(notice, **values)  # type: ignore[arg-type]


def parsed(data: bytes) -> EmailMessage:
    result = BytesParser(policy=STRICT).parsebytes(data)
    assert isinstance(result, EmailMessage)
    assert not result.defects
    return result


def test_the_headers_of_an_issue_without_the_list_ones(notice: RenderedNotice) -> None:
    data = message(notice)
    assert header_names(data) == [b"from", b"to", b"subject", b"date", b"message-id", b"reply-to", b"auto-submitted",
                                  b"mime-version", b"content-language", b"content-type"]
    mail = parsed(data)
    assert mail["From"] == "The Briefing <briefing@news.example.com>"
    assert mail["To"] == "ann@example.org"
    assert mail["Reply-To"] == "Editors <editors@news.example.com>"
    assert mail["Subject"] == "Confirm your subscription to The Daily Briefing"
    assert mail["Message-ID"] == "<confirm.1.ab@news.example.com>" and mail["Date"] == DATE
    assert mail["Auto-Submitted"] == "auto-generated"
    for name in ("List-Id", "List-Unsubscribe", "List-Unsubscribe-Post", "Precedence"):
        assert mail[name] is None, name


def test_both_parts_come_back_as_rendered(notice: RenderedNotice) -> None:
    mail = parsed(message(notice))
    assert mail.get_content_type() == "multipart/alternative"
    text, html = mail.iter_parts()
    assert text.get_content_type() == "text/plain" and html.get_content_type() == "text/html"
    assert text.get_content().replace("\r\n", "\n") == notice.text  # type: ignore[attr-defined]
    assert html.get_content().replace("\r\n", "\n") == notice.html  # type: ignore[attr-defined]


def test_wire_ready(notice: RenderedNotice) -> None:
    data = message(notice, name="Ann Reader")
    lines = data.split(b"\r\n")
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in lines) <= 78
    assert not any(line.startswith(b".") for line in lines)  # no dot-stuffing needed
    assert data.isascii()


def test_a_name_is_one_safe_line_and_a_bad_address_or_id_is_refused(notice: RenderedNotice) -> None:
    mail = parsed(message(notice, name="Ann\r\nBcc: victim@example.org\u202e"))
    assert mail["Bcc"] is None and mail["To"].addresses[0].addr_spec == "ann@example.org"
    for email in ("ann@example.org\r\nBcc: x@example.org", "no-at-sign", "a b@example.org"):
        with pytest.raises(ComposeError):
            message(notice, email=email)
    for message_id in ("a b@example.org", "<x@example.org>", "x@example.org\r\nBcc: y@example.org"):
        with pytest.raises(ComposeError, match="Message-ID"):
            message(notice, message_id=message_id)
    with pytest.raises(ComposeError, match="Date"):
        message(notice, date="Fri, 07 Jul 2017\r\nBcc: y@example.org")


def test_without_reply_to_there_is_none(notice: RenderedNotice) -> None:
    mail = parsed(message(notice, sender=dataclasses.replace(SENDER, reply_to="")))
    assert mail["Reply-To"] is None


def test_dkim_signs_it_auto_submitted_included(notice: RenderedNotice, signer: DkimSigner, key: Key) -> None:
    signed = signer.sign(message(notice))
    assert verifies(signed, key.record)
    names = [name.strip() for name in signature_tags(signed)[b"h"].split(b":")]
    assert names.count(b"auto-submitted") == 2, names  # signed, and once more: a copy can't be added
    assert names.count(b"list-unsubscribe") == 1  # signed as absent: one can't be added either
    assert not verifies(signed.replace(b"Auto-Submitted: auto-generated\r\n", b""), key.record)
    assert not verifies(signed.replace(b"\r\n\r\n", b"\r\nAuto-Submitted: no\r\n\r\n", 1), key.record)
    assert not verifies(signed.replace(b"\r\n\r\n", b"\r\nList-Unsubscribe: <https://evil.example>\r\n\r\n", 1),
                        key.record)
