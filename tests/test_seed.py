"""The seed briefing: every sentence and citation reaches both parts; golden files."""

from __future__ import annotations

import re

import pytest

from newsletter.compose.message import fill_html, fill_text
from newsletter.models import Issue, Recipient, RenderedIssue
from newsletter.render.plaintext import WIDTH
from tests.conftest import SEED_BRIEFING
from tests.harness.golden import check_golden, normalise_html
from tests.harness.htmltext import squash, visible_text

RECIPIENT = Recipient("reader@example.com", "Example Reader", "https://news.example.com/unsubscribe/example-token",
                      preferences_url="https://news.example.com/preferences/example-token")
_CITATION = re.compile(r"\[[^\]]+\]")


def _seed_pieces() -> tuple[list[str], list[str]]:
    """Sentences and citations of the original briefing text."""
    text = SEED_BRIEFING.read_text(encoding="utf-8")
    citations = _CITATION.findall(text)
    sentences: list[str] = []
    for line in text.splitlines():
        line = _CITATION.sub("", line).replace("•", "").strip()
        if line:
            sentences.extend(s for s in re.split(r"(?<=[.!?”])\s+(?=[A-Z“])", line) if s.strip())
    return [squash(s) for s in sentences], citations


SENTENCES, CITATIONS = _seed_pieces()


def test_the_seed_has_what_the_test_expects() -> None:
    assert len(CITATIONS) == 9
    assert "via Vox.com" in SENTENCES
    assert len(SENTENCES) > 25


@pytest.mark.parametrize("sentence", SENTENCES)
def test_every_sentence_is_in_html_and_text(sentence: str, seed_rendered: RenderedIssue) -> None:
    assert sentence in visible_text(fill_html(seed_rendered, RECIPIENT))
    text = fill_text(seed_rendered, RECIPIENT)
    unquoted = "\n".join(re.sub(r"^(> ?)+", "", line) for line in text.splitlines())  # "> " marks a quote
    assert sentence in squash(unquoted)


@pytest.mark.parametrize("citation", CITATIONS)
def test_every_citation_is_in_html_and_text(citation: str, seed_rendered: RenderedIssue) -> None:
    html = fill_html(seed_rendered, RECIPIENT)
    assert citation in visible_text(html)
    # set apart: inside the muted citation span
    assert re.search(r'class="nl-citation"[^>]*>' + re.escape(citation.replace("&", "&amp;")), html)
    # kept whole on one line of the text part
    assert any(citation in line for line in fill_text(seed_rendered, RECIPIENT).splitlines())


def test_seed_structure(seed_issue: Issue) -> None:
    assert seed_issue.subject.startswith("A big, beautiful handshake")
    intro, face_to_face = seed_issue.sections
    assert [type(block).__name__ for block in intro.blocks] == ["Paragraph"] * 3 + ["Quote"]
    (bullets,) = face_to_face.blocks
    assert len(bullets.items) == 11  # type: ignore[union-attr]
    assert sum(item.citation is not None for item in bullets.items) == 9  # type: ignore[union-attr]


def test_text_part_is_wrapped(seed_rendered: RenderedIssue) -> None:
    for line in fill_text(seed_rendered, RECIPIENT).splitlines():
        assert len(line) <= WIDTH or line.startswith("https://"), line


def test_golden_text(seed_rendered: RenderedIssue, update_golden: bool) -> None:
    check_golden("seed.txt", fill_text(seed_rendered, RECIPIENT), update_golden)


def test_golden_html(seed_rendered: RenderedIssue, update_golden: bool) -> None:
    check_golden("seed.html", normalise_html(fill_html(seed_rendered, RECIPIENT)), update_golden)
