"""Right to left without a browser: the markup an rtl issue gets, isolation of mixed directions, the text part.

The browser tests (test_rtl_browser.py) measure the layout; these pin the pieces it rests on,
and that an ltr issue gets none of them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import unicodedata

import lxml.html
import pytest

from newsletter.config import ListSettings, SenderSettings
from newsletter.issue.parse import parse_issue
from newsletter.models import Citation, Code, CodeBlock, Link, Paragraph, Text
from newsletter.render.bidi import RLM, isolation, outlook_direction, right_to_left_lines, text_direction
from newsletter.render.confirm import render_confirmation
from newsletter.render.engine import render_issue
from newsletter.render.markup import block_html, citation_html, inline_html

SENDER = SenderSettings()


def issue_text(language: str, body: str, subject: str = "Hello") -> str:
    return f"---\nsubject: \"{subject}\"\ndate: 2017-07-07\nlanguage: {language}\n---\n\n{body}\n"


@pytest.mark.parametrize(("text", "expected"), [
    ("Washington Post / Abby Phillip", "ltr"), ("صحيفة", "rtl"), ("עיתון", "rtl"), ("2017 / 150", ""),
    ("[1] — NYT", "ltr"), ("  ، Reuters", "ltr"), ("", ""),
])
def test_the_first_strong_character_gives_the_direction(text: str, expected: str) -> None:
    assert text_direction(text) == expected


def test_isolation_only_where_the_direction_differs() -> None:
    assert isolation("Washington Post", "rtl") == ' dir="ltr"'
    assert isolation("Washington Post", "ltr") == ""
    assert isolation("الجزيرة", "ltr") == ' dir="rtl"'
    assert isolation("الجزيرة", "rtl") == ""
    assert isolation("2017", "rtl") == ""  # digits alone: nothing to isolate
    assert isolation("x = 1 + 2", "rtl", default="ltr") == ' dir="ltr"'
    assert isolation("1 + 2", "rtl", default="ltr") == ' dir="ltr"'  # code is ltr whatever it holds


def test_a_latin_citation_in_an_rtl_bullet_is_isolated_on_its_span() -> None:
    html = citation_html(Citation("Washington Post / Abby Phillip", "https://wapo.example/x"), direction="rtl")
    assert html == (' <span class="nl-citation" dir="ltr"><a class="nl-citation-link" href="https://wapo.example/x">'
                    "[Washington Post / Abby Phillip]</a></span>")
    assert citation_html(Citation("الجزيرة", ""), direction="rtl") == ' <span class="nl-citation">[الجزيرة]</span>'
    # an English issue's citation is what it always was; an Arabic source in it is isolated the other way
    assert citation_html(Citation("NYT", ""), direction="ltr") == ' <span class="nl-citation">[NYT]</span>'
    assert citation_html(Citation("الجزيرة", ""), direction="ltr") == \
        ' <span class="nl-citation" dir="rtl">[الجزيرة]</span>'


def test_links_and_code_going_the_other_way_are_isolated() -> None:
    link = Link("https://example.com/a/", (Text("https://example.com/a/"),))
    # never dir on the <a> itself (Outlook for Windows mishandles it): on a span inside
    assert inline_html([Text("اقرأ "), link], direction="rtl") == (
        'اقرأ <a class="nl-link" href="https://example.com/a/"><span dir="ltr">https://example.com/a/</span></a>')
    assert inline_html([link], direction="ltr") == \
        '<a class="nl-link" href="https://example.com/a/">https://example.com/a/</a>'
    arabic = Link("https://example.com/", (Text("الموقع"),))
    assert inline_html([arabic], direction="rtl") == '<a class="nl-link" href="https://example.com/">الموقع</a>'
    assert inline_html([Code("x += 1")], direction="rtl") == '<code class="nl-code" dir="ltr">x += 1</code>'
    assert inline_html([Code("x += 1")], direction="ltr") == '<code class="nl-code">x += 1</code>'
    assert block_html(CodeBlock("for x in y:\n    1 + 2"), direction="rtl").startswith('<pre class="nl-pre" dir="ltr">')
    assert block_html(Paragraph((Text("نص"),), None), direction="rtl") == '<p class="nl-p">نص</p>'


def test_outlook_tables_get_the_direction_and_nothing_else_does() -> None:
    html = ('<!--[if mso | IE]><table border="0" role="presentation"><tr><td><![endif]-->'
            '<table role="presentation"><tr><td>x</td></tr></table>'
            '<!--[if mso | IE]></td></tr></table><table dir="ltr"><![endif]-->')
    assert outlook_direction(html, "ltr") == html
    assert outlook_direction(html, "rtl") == (
        '<!--[if mso | IE]><table dir="rtl" border="0" role="presentation"><tr><td><![endif]-->'
        '<table role="presentation"><tr><td>x</td></tr></table>'
        '<!--[if mso | IE]></td></tr></table><table dir="ltr"><![endif]-->')


ARABIC_SUBJECT = "ترامب وبوتين وجهاً لوجه، وتكثّف الجهود"  # a tanwin (U+064B) and a shadda (U+0651): combining marks


def test_a_subject_with_combining_marks_reaches_the_aria_label_whole() -> None:
    # mjml-python copies <mj-title> into the wrapper's aria-label and writes attribute values as Rust
    # debug-prints a string: a combining mark came out as the six characters \u{64b}.
    assert any(unicodedata.combining(char) for char in ARABIC_SUBJECT)
    rendered = render_issue(parse_issue(issue_text("ar", "# عنوان\n\nنص.", ARABIC_SUBJECT), source="x.md"),
                            sender=SENDER)
    assert "\\u{" not in rendered.html
    document = lxml.html.document_fromstring(rendered.html)
    (wrapper,) = document.xpath("//div[@role='article']")
    assert wrapper.get("aria-label") == ARABIC_SUBJECT
    assert document.findtext(".//title") == ARABIC_SUBJECT


def test_an_rtl_issue_is_laid_out_right_to_left_in_the_html() -> None:
    rendered = render_issue(parse_issue(issue_text("he", "# כותרת\n\n> ציטוט\n\n## חלק\n\n- פריט [NYT]"),
                                        source="x.md"), sender=SENDER)
    html = rendered.html
    assert 'align="left"' not in html and "direction:ltr" not in html
    # MJML's column keeps text-align:left, which nothing inherits: every mj-text sets its own alignment
    assert html.count("text-align:left") == html.count("text-align:left;direction:rtl;display:inline-block")
    assert 'align="right" style' in html and "text-align:right;color:#1f1f23" in html
    assert re.search(r'<blockquote class="nl-quote" style="[^"]*padding:2px 16px 2px 0; border-right:4px solid', html)
    assert re.search(r'<ul class="nl-list" style="[^"]*padding:0 22px 0 0[;"]', html)
    assert re.search(r'<li class="nl-li" style="[^"]*padding-right:2px; direction:rtl; text-align:right"', html)
    assert '<span class="nl-citation" dir="ltr"' in html
    assert html.count('<table dir="rtl"') == html.count("<!--[if mso | IE]>\n<table") + html.count(
        "<!--[if mso | IE]><table")


def test_the_text_part_of_an_rtl_issue_reads_right_to_left() -> None:
    body = ("# عنوان العدد\n\nفقرة أولى.\n\n> اقتباس قصير.\n\n## القسم\n\n"
            "- Google أعلنت اليوم عن نتائجها. [Washington Post / Abby Phillip and David Filipov]\n"
            "- بند ثانٍ فيه [رابط](https://example.com/a/) ورقم 150.\n\n"
            "```\nx = 1\n```\n")
    rendered = render_issue(parse_issue(issue_text("ar", body), source="x.md"), sender=SENDER)
    lines = rendered.text.splitlines()
    placeholders = re.compile(r"__nl[0-9a-f]{16}_\w+__")
    for line in lines:
        if not line.strip() or line == "-- " or line == "    x = 1" or placeholders.fullmatch(line) \
                or re.fullmatch(r"(\[\d+\] )?https?://\S+", line):
            assert RLM not in line, line
            continue
        # every other line's first strong character is right to left
        assert text_direction(line) == "rtl", line
    assert lines[0] == f"{RLM}THE BRIEFING | الجمعة، 7 يوليو 2017"
    assert f"* {RLM}Google أعلنت اليوم" in rendered.text
    assert "[1] https://example.com/a/" in lines  # a URL stays left to right: a mark would flip its final /


def test_a_line_that_wraps_onto_a_latin_citation_gets_a_mark_after_the_indent() -> None:
    assert right_to_left_lines(["* نص عربي طويل", "  [Washington Post / Abby Phillip]", "> “Quote”", "=====",
                                "-- ", "", "https://x/"], keep={6}) == [
        "* نص عربي طويل", f"  {RLM}[Washington Post / Abby Phillip]", f"> {RLM}“Quote”", f"{RLM}=====", "-- ", "",
        "https://x/"]


def test_an_english_issue_gets_no_marks_and_no_dir() -> None:
    rendered = render_issue(parse_issue(issue_text("en", "# Title\n\n- Item [NYT]\n\n`code`"), source="x.md"),
                            sender=SENDER)
    assert RLM not in rendered.text
    assert 'dir="rtl"' not in rendered.html and "nl-citation\" dir" not in rendered.html


def test_the_confirmation_email_of_an_rtl_sender_reads_right_to_left() -> None:
    sender = dataclasses.replace(SENDER, language="ar")
    url = "https://news.example.com/confirm/" + "A1b2-_" * 4
    notice = render_confirmation(email="a@example.org", lists=[ListSettings(name="briefing", title="Briefing")],
                                 confirm_url=url, expires=dt.date(2017, 7, 7), sender=sender)
    for line in notice.text.splitlines():
        if line in ("", "-- ", url):
            assert RLM not in line
        else:
            assert text_direction(line) == "rtl", line
    assert f'<span dir="ltr">{url}</span>' in notice.html
    assert '<td align="right" vertical-align="middle" class="nl-button"' in notice.html  # the button on the right
    english = render_confirmation(email="a@example.org", lists=[ListSettings(name="briefing", title="Briefing")],
                                  confirm_url=url, expires=dt.date(2017, 7, 7), sender=SENDER)
    assert RLM not in english.text and "<span dir" not in english.html and 'dir="rtl"' not in english.html
