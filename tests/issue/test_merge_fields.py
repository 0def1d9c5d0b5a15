"""Merge fields: ``{{ field }}`` and ``{{ field | fallback }}`` in an issue, filled per subscriber, always escaped."""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage

import pytest

from newsletter.compose.message import compile_message, fill_html, fill_text, personalise
from newsletter.config import SenderSettings
from newsletter.errors import ComposeError
from newsletter.issue.parse import parse_issue
from newsletter.models import Code, Emphasis, MergeField, Recipient, Text
from newsletter.render.engine import render_issue
from tests.harness.htmltext import visible_text

FRONT = "---\nsubject: Merge test\ndate: 2024-01-02\n---\n"
BODY = (
    "# Good morning, {{ name | reader }}\n\n"
    "The weather in {{ city | your city }} is *{{ mood }}* today. `{{ literal }}` and {{ not-a-field }} stay.\n"
)
URL = "https://news.example.com/unsubscribe/1-1-abcdefghijklmnopqrstuvwxyz"


def rendered():  # type: ignore[no-untyped-def]
    return render_issue(parse_issue(FRONT + BODY, source="merge.md"), sender=SenderSettings())


def test_tags_are_parsed_outside_code_only() -> None:
    issue = parse_issue(FRONT + BODY, source="merge.md")
    assert issue.headline == (Text("Good morning, "), MergeField("name", "reader"))
    content = issue.sections[0].blocks[0].content  # type: ignore[union-attr]
    assert MergeField("city", "your city") in content
    assert Emphasis((MergeField("mood", ""),)) in content
    assert Code("{{ literal }}") in content
    assert any(isinstance(node, Text) and "{{ not-a-field }}" in node.text for node in content)


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=policy.default.clone(raise_on_defect=True))
    assert isinstance(message, EmailMessage)
    return message


def test_values_and_fallbacks_in_both_parts() -> None:
    result = rendered()
    template = compile_message(result, sender=SenderSettings())
    known = Recipient("ann@example.org", "Ann", URL, fields={"city": "Leeds", "mood": "sunny"})
    unknown = Recipient("bob@example.org", "", URL)
    for recipient, name, city, mood in ((known, "Ann", "Leeds", "sunny"), (unknown, "reader", "your city", "")):
        message = parse(personalise(template, recipient, message_id="a.1@news.example.com",
                                    date="Tue, 02 Jan 2024 06:00:00 +0000"))
        html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
        text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        seen = visible_text(html)
        assert f"Good morning, {name}" in seen and f"weather in {city} is {mood}" in " ".join(seen.split())
        assert f"Good morning, {name}" in text and f"weather in {city}" in text
        assert html.replace("\r\n", "\n") == fill_html(result, recipient)
        assert text.replace("\r\n", "\n") == fill_text(result, recipient)
        assert "{{ literal }}" in text and "{{ not-a-field }}" in text
        assert "__nl" not in html and "__nl" not in text


def test_values_are_escaped_in_html_and_stay_one_line() -> None:
    result = rendered()
    evil = Recipient("eve@example.org", "<script>alert(1)</script>", URL,
                     fields={"city": '"><img src=x onerror=alert(1)>', "mood": "a\r\nBcc: x@example.org"})
    message = parse(personalise(compile_message(result, sender=SenderSettings()), evil,
                                message_id="a.2@news.example.com", date="Tue, 02 Jan 2024 06:00:00 +0000"))
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "<script>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert message["Bcc"] is None
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "a Bcc: x@example.org" in " ".join(text.split())


def test_an_unknown_slot_is_refused() -> None:
    result = rendered()
    broken = result.__class__(**{**result.__dict__, "merge_fields": ()})
    with pytest.raises(ComposeError, match="unknown recipient field"):
        compile_message(broken, sender=SenderSettings())
