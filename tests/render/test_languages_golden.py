"""A German and an Arabic briefing in the seed's shape: golden files, every citation whole, and ``check`` clean.

The golden files (``tests/golden/briefing-de.*``, ``briefing-ar.*``) are the HTML and the
text part as the seed's are kept (``pytest --update-golden`` rewrites them; review the diff).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from newsletter.cli.commands import main
from newsletter.compose.message import fill_html, fill_text
from newsletter.config import SenderSettings
from newsletter.issue.parse import load_issue
from newsletter.models import Recipient, RenderedIssue
from newsletter.render.bidi import RLM
from newsletter.render.engine import render_issue
from newsletter.render.plaintext import WIDTH
from tests.harness.golden import check_golden, normalise_html
from tests.harness.htmltext import visible_text

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "languages"
ISSUES = {"de": FIXTURES / "2017-07-07-trump-putin-de.md", "ar": FIXTURES / "2017-07-07-trump-putin-ar.md"}
RECIPIENT = Recipient("reader@example.com", "Example Reader", "https://news.example.com/unsubscribe/example-token",
                      preferences_url="https://news.example.com/preferences/example-token")
_CITATION = re.compile(r"\[([^\]]*/[^\]]*|NYT)\](?!\()|\[([^\]]*/[^\]]*)\]\(")


@pytest.fixture(scope="module", params=list(ISSUES))
def rendered(request: pytest.FixtureRequest) -> tuple[str, RenderedIssue]:
    language: str = request.param
    return language, render_issue(load_issue(ISSUES[language]), sender=SenderSettings())


def test_golden_html(rendered: tuple[str, RenderedIssue], update_golden: bool) -> None:
    language, issue = rendered
    check_golden(f"briefing-{language}.html", normalise_html(fill_html(issue, RECIPIENT)), update_golden)


def test_golden_text(rendered: tuple[str, RenderedIssue], update_golden: bool) -> None:
    language, issue = rendered
    check_golden(f"briefing-{language}.txt", fill_text(issue, RECIPIENT), update_golden)


def test_every_citation_is_set_apart_in_the_html_and_whole_in_the_text(rendered: tuple[str, RenderedIssue]) -> None:
    language, issue = rendered
    source = ISSUES[language].read_text(encoding="utf-8")
    citations = [f"[{match[1] or match[2]}]" for match in _CITATION.finditer(source)]
    assert len(citations) == 6
    html, text = fill_html(issue, RECIPIENT), fill_text(issue, RECIPIENT)
    isolated = ' dir="ltr"' if language == "ar" else ""
    for citation in citations:
        assert citation in visible_text(html)
        assert re.search(f'class="nl-citation"{isolated}[^>]*>(<a [^>]*>)?' + re.escape(citation), html), citation
        assert any(citation in line for line in text.splitlines()), citation
    for line in text.splitlines():  # a right-to-left mark is zero-width: it doesn't count as a column
        assert len(line.replace(RLM, "")) <= WIDTH or line.startswith("https://"), line


@pytest.mark.parametrize("language", list(ISSUES))
def test_check_finds_nothing(language: str) -> None:
    result = CliRunner().invoke(main, ["check", str(ISSUES[language])], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "1 file(s) checked, 0 finding(s)" in result.output, result.output


@pytest.mark.browser
def test_check_in_the_browser_finds_nothing_in_the_arabic_issue(tmp_path: Path) -> None:
    """The dark scheme's contrast, computed in Chromium, and the 375 px screenshot."""
    result = CliRunner().invoke(main, ["check", "--screenshots", str(tmp_path), str(ISSUES["ar"])],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "1 file(s) checked, 0 finding(s)" in result.output, result.output
