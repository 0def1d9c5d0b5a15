"""An issue's language: front matter or ``[sender] language``, through to HTML lang/dir, dates and headers."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import strict
from pathlib import Path

import pytest
from click.testing import CliRunner

from newsletter.cli.commands import main
from newsletter.compose.message import compile_message, personalise
from newsletter.compose.notice import compose_notice
from newsletter.config import ListSettings, SenderSettings, load_settings
from newsletter.errors import ConfigError, IssueError
from newsletter.issue.parse import parse_issue
from newsletter.models import Recipient
from newsletter.render.confirm import render_confirmation
from newsletter.render.engine import render_issue

SENDER = SenderSettings()
RECIPIENT = Recipient("a@example.org", "", "https://news.example.com/unsubscribe/t")
DATE = "Fri, 07 Jul 2017 10:00:00 +0000"


def issue_text(language: str = "", body: str = "A paragraph.") -> str:
    line = f"language: {language}\n" if language else ""
    return f"---\nsubject: Hello\ndate: 2017-07-07\n{line}---\n\n# Headline\n\n{body}\n"


def html_tag(html: str) -> str:
    found = re.search(r"<html[^>]*>", html)
    assert found is not None
    return found[0]


def headers(data: bytes) -> EmailMessage:
    message = BytesParser(policy=strict).parsebytes(data)
    assert isinstance(message, EmailMessage) and not message.defects
    return message


def test_an_english_issue_is_as_before() -> None:
    rendered = render_issue(parse_issue(issue_text(), source="x.md"), sender=SENDER)
    assert (rendered.language, rendered.direction) == ("en", "ltr")
    assert 'lang="en"' in html_tag(rendered.html) and 'dir="ltr"' in html_tag(rendered.html)
    assert "Friday, July 7, 2017" in rendered.html and "| Friday, July 7, 2017" in rendered.text


def test_the_front_matter_names_the_language_and_its_date() -> None:
    issue = parse_issue(issue_text("de"), source="x.md")
    assert issue.language == "de"
    rendered = render_issue(issue, sender=SENDER)
    assert 'lang="de"' in html_tag(rendered.html) and 'dir="ltr"' in html_tag(rendered.html)
    assert "Freitag, 7. Juli 2017" in rendered.html
    assert rendered.text.splitlines()[0] == "THE BRIEFING | Freitag, 7. Juli 2017"


@pytest.mark.parametrize(("tag", "date"), [("ar", "الجمعة، 7 يوليو 2017"), ("he", "יום שישי, 7 ביולי 2017"),
                                           ("fa", "جمعه 7 ژوئیه 2017")])
def test_a_right_to_left_issue_is_marked_so(tag: str, date: str) -> None:
    rendered = render_issue(parse_issue(issue_text(tag, "نص"), source="x.md"), sender=SENDER)
    assert (rendered.language, rendered.direction) == (tag, "rtl")
    assert f'lang="{tag}"' in html_tag(rendered.html) and 'dir="rtl"' in html_tag(rendered.html)
    assert date in rendered.html and date in rendered.text


def test_the_sender_language_is_the_default_and_the_issue_wins() -> None:
    german = dataclasses.replace(SENDER, language="de")
    assert render_issue(parse_issue(issue_text(), source="x.md"), sender=german).language == "de"
    assert render_issue(parse_issue(issue_text("pt-br"), source="x.md"), sender=german).language == "pt-BR"


def test_the_date_format_is_configurable() -> None:
    sender = dataclasses.replace(SENDER, date_format="d MMMM y")
    rendered = render_issue(parse_issue(issue_text("fr"), source="x.md"), sender=sender)
    assert "7 juillet 2017" in rendered.html and "vendredi" not in rendered.html
    assert rendered.text.splitlines()[0].endswith("| 7 juillet 2017")


@pytest.mark.parametrize(("tag", "message"), [
    ("de_DE", "issue.md:4: language: 'de_DE' is not a BCP 47 tag (write it with hyphens: de-DE)"),
    ("klingon", "issue.md:4: language: 'klingon' is not a BCP 47 language tag (klingon is tlh)"),  # CLDR knows it
    ("en gb", "issue.md:4: language: 'en gb' is not a BCP 47 language tag (write en (English))"),
    ("iw", "issue.md:4: language: 'iw' is an old code for Hebrew (write he)"),
])
def test_a_bad_language_is_a_file_line_error_with_a_fix(tag: str, message: str) -> None:
    with pytest.raises(IssueError) as caught:
        parse_issue(issue_text(tag), source="issue.md")
    assert str(caught.value).startswith(message)


def test_check_reports_a_bad_language_in_one_line_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "issue.md"
    path.write_text(issue_text("de_DE"), encoding="utf-8")
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 2
    assert f"{path}:4: language: 'de_DE' is not a BCP 47 tag (write it with hyphens: de-DE)" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("table", "value", "expected"), [
    ("language", '"deutsch"', "[sender] language: 'deutsch' is not a BCP 47 language tag (deutsch is de)"),
    ("language", '"de_AT"', "[sender] language: 'de_AT' is not a BCP 47 tag (write it with hyphens: de-AT)"),
    ("date_format", '"HH:mm"', "[sender] date_format: date format 'HH:mm' is not a CLDR date pattern"),
])
def test_a_bad_sender_language_or_date_format_names_its_key(tmp_path: Path, table: str, value: str,
                                                             expected: str) -> None:
    config = tmp_path / "newsletter.toml"
    config.write_text(f"[sender]\n{table} = {value}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_the_sender_language_is_read_in_its_conventional_case(tmp_path: Path) -> None:
    config = tmp_path / "newsletter.toml"
    config.write_text('[sender]\nlanguage = "PT-br"\ndate_format = "long"\n', encoding="utf-8")
    settings = load_settings(config)
    assert (settings.sender.language, settings.sender.date_format) == ("pt-BR", "long")


def test_an_issue_carries_content_language() -> None:
    rendered = render_issue(parse_issue(issue_text("he"), source="x.md"), sender=SENDER)
    data = personalise(compile_message(rendered, sender=SENDER), RECIPIENT, message_id="m1@news.example.com",
                       date=DATE)
    assert headers(data)["Content-Language"] == "he"
    english = render_issue(parse_issue(issue_text(), source="x.md"), sender=SENDER)
    data = personalise(compile_message(english, sender=SENDER), RECIPIENT, message_id="m2@news.example.com", date=DATE)
    assert headers(data)["Content-Language"] == "en"


def test_a_confirmation_email_is_in_the_sender_language() -> None:
    sender = dataclasses.replace(SENDER, language="ar")
    notice = render_confirmation(email="a@example.org", lists=[ListSettings(name="briefing", title="Briefing")],
                                 confirm_url="https://news.example.com/confirm/t", expires=dt.date(2017, 7, 7),
                                 sender=sender)
    assert 'lang="ar"' in html_tag(notice.html) and 'dir="rtl"' in html_tag(notice.html)
    assert "الجمعة، 7 يوليو 2017" in notice.text
    data = compose_notice(notice, email="a@example.org", sender=sender, message_id="c1@news.example.com", date=DATE)
    assert headers(data)["Content-Language"] == "ar"


def test_a_no_break_space_the_writer_typed_stays_one_in_the_text_part() -> None:
    """French puts one before ':' and '?'; the text part kept citations whole with the same character
    and then turned every one of them into a plain space."""
    body = "Le sommet a-t-il changé quelque chose\u00a0? Réponse\u00a0: non. [Le Monde / Jean Dupont]"
    rendered = render_issue(parse_issue(issue_text("fr", body), source="x.md"), sender=SENDER)
    line = next(line for line in rendered.text.splitlines() if line.startswith("Le sommet"))
    assert "chose\u00a0? Réponse\u00a0: non." in line
    assert "[Le Monde / Jean Dupont]" in rendered.text.splitlines()  # whole, with plain spaces, on a line
