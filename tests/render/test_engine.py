"""Rendering properties: untrusted issue text never becomes markup; templates are found or named."""

from __future__ import annotations

import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from newsletter.compose.message import fill_html
from newsletter.config import SenderSettings
from newsletter.errors import IssueError, RenderError
from newsletter.issue.parse import parse_issue
from newsletter.models import Recipient, RenderedIssue
from newsletter.render.engine import available_templates, render_issue
from tests.harness.htmltext import parse

RECIPIENT = Recipient("a@example.org", "", "https://news.example.com/unsubscribe/t")


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    reader = _Tags()
    reader.feed(html)
    return reader.tags


BASELINE_TAGS = {tag for tag, _ in _tags(fill_html(render_issue(parse_issue(
    "---\nsubject: s\ndate: 2024-01-02\npreheader: p\ncredit: c\n---\n# H\n\n## S\n\n- a [b]\n", source="b.md"),
    sender=SenderSettings()), RECIPIENT))}
# What markup.py may add for Markdown constructs, beyond the template's own tags.
MARKDOWN_TAGS = {"p", "em", "strong", "code", "a", "img", "br", "blockquote", "ul", "ol", "li", "pre", "hr",
                 "h2", "h3", "h4", "h5", "h6", "span"}

_PIECES = st.sampled_from(list("<>&\"'=/ abcxyz\n`*[]()!:-#")) | st.sampled_from(
    ["<script>", "</p>", "<img src=x onerror=alert(1)>", "javascript:", "{{ x }}", "{% if %}", "]]>", "<!--",
     "[x](javascript:alert(1))", "![a](javascript:b)", "](", "\n\n- ", "\n> "]
)
hostile_text = st.lists(_PIECES, max_size=60).map("".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=hostile_text, subject=st.text(alphabet=st.sampled_from(list("<>&\"' ab/")), min_size=1, max_size=30))
def test_issue_text_never_becomes_markup(body: str, subject: str) -> None:
    if not subject.strip():
        subject = "s"
    text = f"---\nsubject: {subject!r}\ndate: 2024-01-02\n---\n{body}\n".replace("\\", "")
    try:
        issue = parse_issue(text, source="f.md")
    except IssueError:
        return
    html = fill_html(render_issue(issue, sender=SenderSettings()), RECIPIENT)
    for tag, attrs in _tags(html):
        assert tag in BASELINE_TAGS | MARKDOWN_TAGS, tag
        assert not any(name.startswith("on") for name in attrs), attrs
        for name in ("href", "src"):
            value = (attrs.get(name) or "").strip().lower()
            assert not value.startswith(("javascript:", "data:", "vbscript:")), value
    assert "<script" not in html.lower()


def test_unknown_template_names_the_line(tmp_path: Path) -> None:
    issue = parse_issue("---\nsubject: s\ndate: 2024-01-02\n\ntemplate: fancy\n---\nHi\n", source="i.md")
    with pytest.raises(IssueError, match=r"^i\.md:5: unknown template 'fancy' \(available: briefing\)$"):
        render_issue(issue, sender=SenderSettings())


def test_template_errors_are_render_errors(tmp_path: Path) -> None:
    (tmp_path / "briefing.mjml").write_text("<mjml><mj-body>{{ nope.missing }}</mj-body></mjml>")
    issue = parse_issue("---\nsubject: s\ndate: 2024-01-02\n---\nHi\n", source="i.md")
    with pytest.raises(RenderError, match="template error"):
        render_issue(issue, sender=SenderSettings(), templates_dir=tmp_path)
    assert available_templates(tmp_path) == ["briefing"]


def test_html_shape(seed_rendered: RenderedIssue) -> None:
    html = fill_html(seed_rendered, RECIPIENT)
    assert html.startswith("<!doctype html>")
    assert re.search(r'<html[^>]* lang="en"', html)
    assert 'name="color-scheme"' in html and "prefers-color-scheme: dark" in html
    assert "!important" in html.split("prefers-color-scheme", 1)[1][:400], "media queries keep !important"
    assert "fonts.googleapis" not in html and "<link" not in html
    reader = parse(html)
    assert all(link.startswith(("https://", "mailto:")) for link in reader.links)
    layout_tables = re.findall(r"<table[^>]*>", html)
    assert layout_tables and all('role="presentation"' in t for t in layout_tables)
    # the hidden preheader comes first in the body
    body = html.split("<body", 1)[1]
    assert body.index(seed_rendered.preheader) < body.index("nl-headline")
    assert "display:none" in body[: body.index(seed_rendered.preheader)]
    # the footer: view in browser, unsubscribe, postal address
    assert "https://news.example.com/issues/2017-07-07-trump-putin/" in reader.links
    assert RECIPIENT.unsubscribe_url in reader.links
    assert "1 Example Street, Springfield" in html
    # premailer inlined the classes' styles
    assert re.search(r'class="nl-citation"[^>]*style="[^"]*color:', html) or re.search(
        r'style="[^"]*color:[^"]*"[^>]*class="nl-citation"', html)


def test_premailer_is_imported_without_requests_and_requests_still_works() -> None:
    """render doesn't pay for requests at start-up, and doesn't break it for anyone else."""
    code = (
        "import sys, newsletter.render.engine\n"
        "assert 'requests' not in sys.modules, 'requests was imported'\n"
        "import requests\n"
        "assert callable(requests.get), 'the real requests is shadowed'\n"
        "print('ok')\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "ok"
