"""The readers under the checks: the HTML tree (lxml) with Outlook's conditional comments, the CSS
(tinycss2) and what its selectors use (cssselect2), and colour values (tinycss2)."""

from __future__ import annotations

import pytest

from newsletter.preflight.colour import parse_colour
from newsletter.preflight.css import Compound, parse_declarations, parse_selector_list, parse_stylesheet
from newsletter.preflight.htmldom import describe, own_text, parse_document, text_content

# --- HTML -------------------------------------------------------------------------------------

EMAIL = """<!doctype html>
<html lang="en"><head>
<!--[if mso]><style>.x { width: 600px }</style><table role="presentation"><tr><td><![endif]-->
<!-- a note -->
</head><body>
<!--[if !mso]><!--><div id="others" class="a b c">Not <b>for</b> Outlook<!-- hidden note --> at all</div><!--<![endif]-->
<p id="all">Everyone</p>
<!--[if mso]></td></tr></table><![endif]-->
</body></html>"""


def test_conditional_comments_are_kept_apart_and_hide_what_they_hide() -> None:
    document = parse_document(EMAIL)
    assert [(block.condition, block.html[:7]) for block in document.conditional] == [("mso", "<style>"), ("mso", "</td></")]
    assert document.revealed == ["!mso"] and document.comments == 2
    others, bold, everyone = (element for element in document.iter() if element.tag in ("div", "b", "p"))
    assert document.hidden_from_mso(others) and document.hidden_from_mso(bold)
    assert not document.hidden_from_mso(everyone)
    fragment = parse_document(document.conditional[0].html, fragment=True)
    assert [element.tag for element in fragment.iter()] == ["style", "table", "tr", "td"]


def test_element_helpers() -> None:
    document = parse_document(EMAIL)
    others = next(element for element in document.iter() if element.get("id") == "others")
    assert describe(others) == "div#others.a.b"
    assert own_text(others) == "Not  Outlook at all" and text_content(others) == "Not for Outlook at all"
    assert document.doctype == "doctype html"  # as written, for messages


def test_elements_libxml2_implies_are_not_the_emails() -> None:
    fragment = parse_document("<!-- <body> in a comment is none --><p>Just a paragraph</p>")
    assert [element.tag for element in fragment.iter()] == ["p"]
    assert fragment.body is not None and fragment.doctype is None
    assert [element.tag for element in parse_document(EMAIL).iter()][:3] == ["html", "head", "body"]
    assert [element.tag for element in parse_document("").iter()] == []


# --- CSS --------------------------------------------------------------------------------------


def test_stylesheet_rules_conditions_at_rules_and_nesting() -> None:
    sheet = parse_stylesheet("""
      @import url("x.css");
      p { color: red !important; margin : 0 auto ; ; broken; width: }
      @media screen and (max-width:480px) { @supports (display: grid) { .g { display: grid } } }
      @font-face { font-family: X }
      .card { color: #333; & .child { color: #999 } }
    """)
    assert [(rule.name, rule.prelude, rule.conditions) for rule in sheet.at_rules] == [
        ("import", 'url("x.css")', ()),
        ("media", "screen and (max-width:480px)", ()),
        ("supports", "(display: grid)", ("@media screen and (max-width:480px)",)),
        ("font-face", "", ()),
    ]
    p, grid, card = sheet.rules
    assert [(d.name, d.value, d.important) for d in p.declarations] == [("color", "red", True), ("margin", "0 auto", False)]
    assert grid.conditions == ("@media screen and (max-width:480px)", "@supports (display: grid)")
    assert card.nested and [d.name for d in card.declarations] == ["color"]
    assert not sheet.has_comments
    assert parse_stylesheet("p { content: '/* no comment */' }").has_comments is False
    assert parse_stylesheet("p { color: red /* a comment */ }").has_comments is True


def test_style_attribute_declarations_keep_their_values_as_written() -> None:
    declarations = parse_declarations("font-family: 'Helvetica Neue', Arial; COLOR: RGBA(0, 0, 0, .5)!important; x")
    assert [(d.name, d.value, d.important) for d in declarations] == [  # strings as tinycss2 writes them
        ("font-family", '"Helvetica Neue", Arial', False), ("color", "RGBA(0, 0, 0, .5)", True),
    ]


def test_what_a_selector_uses() -> None:
    [selector] = parse_selector_list("div.card#top > *[data-x] + p:nth-child(2n+1):not(.a) ~ a::before")
    assert selector.text == "div.card#top > *[data-x] + p:nth-child(2n+1):not(.a) ~ a::before"
    assert selector.combinators == (">", "+", "~")
    assert selector.parts == (
        Compound("div", ("top",), ("card",)),
        Compound("*", attributes=("data-x",)),
        Compound("p", pseudo_classes=("nth-child", "not")),
        Compound("a", pseudo_elements=("before",)),
    )
    assert parse_selector_list(r".a\:b")[0].parts == (Compound(classes=("a:b",)),)


# --- colours ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("#fff", "#ffffff"), ("#FFFFFF80", "#ffffff at 50%"), ("#0008", "#000000 at 53%"),
    ("rgb(85, 85, 92)", "#55555c"), ("rgb(85 85 92 / 50%)", "#55555c at 50%"), ("rgba(0,0,0,.5)", "#000000 at 50%"),
    ("hsl(0, 0%, 100%)", "#ffffff"), ("hsl(120deg 100% 25%)", "#008000"), ("RebeccaPurple", "#663399"),
    ("transparent", "#000000 at 0%"),
])
def test_colours_tinycss2_reads(value: str, expected: str) -> None:
    assert str(parse_colour(value)) == expected


@pytest.mark.parametrize("value", ["currentcolor", "var(--brand)", "light-dark(#fff, #000)", "lab(50% 20 30)",
                                   "Canvas", "#12", "red blue", ""])
def test_colours_only_a_browser_knows_are_unknown(value: str) -> None:
    assert parse_colour(value) is None


def test_an_elements_line_is_where_its_start_tag_begins() -> None:
    html = "<html><body>\n<!-- <table> in a\ncomment -->\n<table class='a'\n  width='600'><tr><td>x</td></tr></table>\n<table class='b'>"
    document = parse_document(html)
    first, second = (element for element in document.iter() if element.tag == "table")
    assert (document.line(first), document.line(second)) == (4, 6)
    assert first.sourceline == 5  # libxml2 counts the line where the start tag ends
