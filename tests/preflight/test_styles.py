"""The static cascade on its own: which rules match an element, which declaration wins, what is inherited.

The accessibility checks stand on this (tests/preflight/test_accessibility.py); here each
rule of the cascade is held by a small document of its own: selectors cssselect2 matches
(among them three the hand-written matcher never matched), cascade order, specificity,
``!important`` against inline styles, inheritance, and the media queries of the dark
scheme and of a phone.
"""

from __future__ import annotations

import pytest

from newsletter.preflight.css import matches, parse_selector_list
from newsletter.preflight.htmldom import parse_document
from newsletter.preflight.styles import StyledDocument


def styled(css: str, body: str, *, scheme: str = "light", width: int = 800) -> tuple[StyledDocument, dict[str, object]]:
    """The document ``<style>css</style>`` + ``body``, and its elements that have an id, by id."""
    document = parse_document(f"<html><head><style>{css}</style></head><body>{body}</body></html>")
    by_id = {element.get("id"): element for element in document.iter() if element.get("id")}
    return StyledDocument(document, scheme=scheme, width=width), by_id  # type: ignore[arg-type]


def colour(css: str, body: str, target: str = "t", **view: object) -> str:
    """The computed text colour of the element ``#target``."""
    document, by_id = styled(css, body, **view)  # type: ignore[arg-type]
    return str(document.style(by_id[target]).colour)  # type: ignore[arg-type]


# --- selectors ------------------------------------------------------------------------------


@pytest.mark.parametrize("selector, body", [
    (r".a\:b", '<p id="t" class="a:b">escaped colon in a class name (Tailwind writes them)</p>'),
    ("p:has(a)", '<p id="t">a paragraph <a href="https://example.com/">with a link</a></p>'),
    ('[data-x="abc" i]', '<p id="t" data-x="ABC">attribute compared without case</p>'),
])
def test_selectors_the_hand_written_matcher_missed(selector: str, body: str) -> None:
    document, by_id = styled("", body)
    assert any(matches(parsed, by_id["t"]) for parsed in parse_selector_list(selector))  # type: ignore[arg-type]
    assert colour(f"{selector} {{ color: #123456 }}", body) == "#123456"


@pytest.mark.parametrize("selector, expected", [
    ("div.card > p#t", True),
    ("div.card p", True),
    ("body > p", False),
    ("p + p", True),  # #t follows p#first
    ("h1 ~ p#t", True),
    ("h1 + p#t", False),
    ("p:first-child", False),
    ("p:last-child", True),
    ("p:nth-child(3)", True),
    ("p:nth-of-type(2)", True),
    ("p:not(.lead)", True),
    ("p:not(.x, #t)", False),
    (":is(h1, p).x", True),
    (":where(.card) .x", True),
    ('p[title^="He"][title$="lo"][title*="l"]', True),
    ('p[lang|="en"]', True),
    ('[class~="x"]', True),
    ("p:lang(en)", True),
    ("p:hover", False),  # a state the message never is in as it first appears
    ("p::before", False),  # a pseudo-element is no element
    ("p:made-up-pseudo", False),  # read (compat reports it), never matched
])
def test_selector_matching(selector: str, expected: bool) -> None:
    body = ('<div class="card"><h1 id="first-h">Title</h1><p id="first" class="lead">one</p>'
            '<p id="t" class="x" title="Hello" lang="en-GB">two</p></div>')
    document, by_id = styled("", body)
    assert any(matches(parsed, by_id["t"]) for parsed in parse_selector_list(selector)) is expected  # type: ignore[arg-type]


def test_a_selector_that_cannot_be_read_leaves_the_rest_of_its_list() -> None:
    # an unknown pseudo-element is read (compat reports it) and matches nothing; "p..x" is no selector
    assert [selector.text for selector in parse_selector_list("p, p::-made-up-thing, p..x, .x > .y")] == [
        "p", "p::-made-up-thing", ".x > .y",
    ]
    assert colour("p..x, p::-made-up-thing, #t { color: #222222 }", '<p id="t">x</p>') == "#222222"


@pytest.mark.parametrize("selector, specificity", [
    ("*", (0, 0, 0)),
    ("p", (0, 0, 1)),
    ("div > p + span", (0, 0, 3)),
    (".a.b", (0, 2, 0)),
    ('[data-x="abc" i]', (0, 1, 0)),
    ("#a .b p:hover", (1, 2, 1)),
    ("p:not(.a, #b)", (1, 0, 1)),  # :not(), :is() and :has() count their most specific argument
    (":is(#a, p) span", (1, 0, 1)),
    ("p:has(> a.b)", (0, 1, 2)),
    (":where(#a .b) p", (0, 0, 1)),  # :where() counts nothing
    ("p::before", (0, 0, 2)),
    ("p:first-line", (0, 0, 2)),  # the CSS 2 spelling of a pseudo-element
])
def test_specificity(selector: str, specificity: tuple[int, int, int]) -> None:
    [parsed] = parse_selector_list(selector)
    assert parsed.specificity == specificity


# --- the cascade ------------------------------------------------------------------------------


def test_later_rule_wins_at_equal_specificity() -> None:
    css = ".a { color: #111111 } .b { color: #222222 } .a { color: #333333 }"
    assert colour(css, '<p id="t" class="b a">x</p>') == "#333333"


def test_specificity_beats_order() -> None:
    css = "#t { color: #111111 } p.a.b { color: #222222 } p.a { color: #333333 } p { color: #444444 }"
    assert colour(css, '<p id="t" class="a b">x</p>') == "#111111"
    assert colour(css.replace("#t ", "div "), '<p id="t" class="a b">x</p>') == "#222222"
    # a grouped rule counts with its most specific matching selector
    assert colour("p.a { color: #111111 } p, #t { color: #222222 }", '<p id="t" class="a">x</p>') == "#222222"


def test_important_against_inline_styles() -> None:
    body = '<p id="t" class="a" style="color:#555555">x</p>'
    assert colour("#t.a { color: #111111 }", body) == "#555555"  # inline beats any selector
    assert colour(".a { color: #111111 !important }", body) == "#111111"  # !important beats inline
    important_inline = '<p id="t" class="a" style="color:#555555 !important">x</p>'
    assert colour("#t.a { color: #111111 !important }", important_inline) == "#555555"  # both important: inline


def test_inheritance_of_colour_font_size_and_visibility() -> None:
    css = ".box { color: #224466; font-size: 20px } .hidden { visibility: hidden } .shown { visibility: visible }"
    body = ('<div class="box"><p id="t">inherits</p><p id="em" style="font-size: 0.5em">half</p>'
            '<a id="link" href="https://example.com/">link</a></div>'
            '<div class="hidden"><p id="h">hidden</p><p id="v" class="shown">shown again</p></div>'
            '<div style="display:none"><p id="n" class="shown">display none is not undone</p></div>')
    document, by_id = styled(css, body)
    style = document.style
    assert str(style(by_id["t"]).colour) == "#224466"  # type: ignore[arg-type]
    assert style(by_id["t"]).font_size == 20 and style(by_id["em"]).font_size == 10  # type: ignore[arg-type]
    assert str(style(by_id["link"]).colour) == "#0000ee"  # a link has the browser's colour, not its parent's
    assert style(by_id["h"]).hidden and not style(by_id["v"]).hidden  # type: ignore[arg-type]
    assert style(by_id["n"]).hidden  # type: ignore[arg-type]


def test_background_shorthand_and_backdrop() -> None:
    css = ".card { background: url(paper.png) #eeeeee no-repeat } .tint { background-color: rgba(0, 0, 0, 0.5) }"
    body = ('<div class="card"><p id="t">on the card</p></div>'
            '<div style="background:#ffffff"><div class="tint"><p id="half">half black over white</p></div></div>')
    document, by_id = styled(css, body)
    behind, image = document.backdrop(by_id["t"])  # type: ignore[arg-type]
    assert str(behind) == "#eeeeee" and image
    behind, image = document.backdrop(by_id["half"])  # type: ignore[arg-type]
    assert str(behind) == "#808080" and not image


@pytest.mark.parametrize("scheme, width, expected", [
    ("light", 800, "#111111"),
    ("dark", 800, "#eeeeee"),
    ("light", 375, "#222222"),
    ("dark", 375, "#333333"),
])
def test_media_queries_of_the_dark_scheme_and_of_a_phone(scheme: str, width: int, expected: str) -> None:
    css = """
      .t { color: #111111 }
      @media (prefers-color-scheme: dark) { .t { color: #eeeeee } }
      @media only screen and (max-width: 480px) { .t { color: #222222 } }
      @media (prefers-color-scheme: dark) and (max-width: 480px) { .t { color: #333333 } }
      @media print { .t { color: #444444 } }
    """
    assert colour(css, '<p id="t" class="t">x</p>', scheme=scheme, width=width) == expected
