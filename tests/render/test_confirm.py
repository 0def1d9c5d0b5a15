"""The confirmation email's rendering: what it says, escaped, accessible, and not an issue template."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest

from newsletter.config import ListSettings, SenderSettings
from newsletter.errors import IssueError, RenderError
from newsletter.issue.parse import parse_issue
from newsletter.models import Issue
from newsletter.preflight.accessibility import check_accessibility
from newsletter.preflight.content import check_rendered
from newsletter.render.confirm import CONFIRM_BUTTON, RenderedNotice, render_confirmation
from newsletter.render.engine import available_templates, default_templates_dir, render_issue
from newsletter.render.plaintext import WIDTH
from tests.harness.htmltext import parse, squash, visible_text

URL = "https://news.example.com/confirm/12-abc_DEF"
EXPIRES = dt.date(2025, 3, 3)
BRIEFING = ListSettings("briefing", "The Daily Briefing", "The day's news in five minutes, every weekday morning.")
WEEKLY = ListSettings("weekly", "The Weekly")


def confirm(*lists: ListSettings, email: str = "ann@example.org", sender: SenderSettings | None = None,
            templates_dir: Path | None = None) -> RenderedNotice:
    return render_confirmation(email=email, lists=lists or (BRIEFING,), confirm_url=URL, expires=EXPIRES,
                               sender=sender or SenderSettings(), templates_dir=templates_dir)


def test_it_says_who_what_until_when_and_how_to_say_no() -> None:
    notice = confirm(BRIEFING, WEEKLY)
    for part in (visible_text(notice.html), squash(notice.text)):
        assert "ann@example.org" in part
        assert "The Daily Briefing" in part and "every weekday morning" in part and "The Weekly" in part
        assert "This link works until Monday, March 3, 2025." in part
        assert "If you didn't ask, ignore this email: you won't hear from us again." in part
        assert "1 Example Street, Springfield" in part
        assert CONFIRM_BUTTON in part and URL in part
    assert notice.subject == "Confirm your subscription to The Briefing"  # several lists: the sender's name
    assert confirm(BRIEFING).subject == "Confirm your subscription to The Daily Briefing"
    assert notice.preheader in notice.html


def test_one_button_and_every_link_goes_to_the_confirm_page() -> None:
    html = confirm().html
    page = parse(html)
    assert sorted(set(page.links)) == [URL], page.links
    assert html.count(f">{CONFIRM_BUTTON}</a>") == 1
    assert "List-Unsubscribe" not in html and "/unsubscribe/" not in html  # nothing to leave: not on a list yet


def test_text_part_reads_on_its_own() -> None:
    text = confirm(ListSettings("long", "A title " * 20, "A description that goes on " * 10)).text
    assert all(len(line) <= WIDTH for line in text.splitlines() if line != URL)
    assert text.endswith("\n") and "\r" not in text
    assert "<" not in text and "&amp;" not in text


def test_every_value_is_escaped() -> None:
    hostile = ListSettings("x", '<script>alert(1)</script> "Title"', "<img src=x onerror=alert(2)> & more")
    html = confirm(hostile, sender=SenderSettings(postal_address="<b>1 Street</b>", from_name="A <i>Name</i>")).html
    assert "<script>" not in html and "<img" not in html and "<b>1" not in html and "<i>Name" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(2)&gt; &amp; more" in html
    text = confirm(hostile).text
    assert '<script>alert(1)</script> "Title"' in text  # the text part shows it as written


def test_accessible_and_within_the_content_checks() -> None:
    notice = confirm(BRIEFING, WEEKLY)
    assert check_accessibility(notice.html, notice.text) == []
    findings = [finding for finding in check_rendered("confirm", notice.html, notice.text)
                if finding.severity != "info"]
    assert findings == []


def test_a_confirm_template_of_ones_own_is_used_and_a_folder_without_one_falls_back(tmp_path: Path) -> None:
    assert "Nothing is sent to this address" in confirm(templates_dir=tmp_path).html  # no confirm.mjml there
    own = (default_templates_dir() / "confirm.mjml").read_text(encoding="utf-8")
    (tmp_path / "confirm.mjml").write_text(own.replace("Nothing is sent to this address", "Our own words"),
                                           encoding="utf-8")
    assert "Our own words" in confirm(templates_dir=tmp_path).html
    (tmp_path / "confirm.mjml").write_text("<mjml>{% if %}</mjml>\n", encoding="utf-8")
    with pytest.raises(RenderError, match=r"confirm\.mjml:1: template error"):
        confirm(templates_dir=tmp_path)


def test_no_lists_is_a_mistake() -> None:
    with pytest.raises(ValueError):
        render_confirmation(email="a@example.org", lists=(), confirm_url=URL, expires=EXPIRES, sender=SenderSettings())


def test_the_confirm_template_is_not_an_issue_template(tmp_path: Path) -> None:
    assert available_templates() == ["briefing"]
    issue = parse_issue("---\nsubject: s\ndate: 2024-01-02\ntemplate: confirm\n---\nHi\n", source="i.md")
    with pytest.raises(IssueError, match=r"^i\.md:4: unknown template 'confirm' \(available: briefing\)$"):
        render_issue(issue, sender=SenderSettings())
    shutil.copy(default_templates_dir() / "confirm.mjml", tmp_path / "confirm.mjml")
    assert available_templates(tmp_path) == []


def test_an_issue_the_archive_does_not_have_gets_no_view_in_browser_link(seed_issue: Issue) -> None:
    archived = render_issue(seed_issue, sender=SenderSettings())
    welcome = render_issue(seed_issue, sender=SenderSettings(), archived=False)
    for rendered in (archived, welcome):
        assert "Unsubscribe" in rendered.html and "Unsubscribe with one click:" in rendered.text
    assert archived.view_url in archived.html and archived.view_url in archived.text
    assert welcome.view_url == ""
    assert "/issues/" not in welcome.html and "/issues/" not in welcome.text
    assert "View this issue in your browser" not in welcome.html + welcome.text
