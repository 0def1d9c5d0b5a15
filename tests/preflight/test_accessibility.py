"""Accessibility, statically: each check fails on a fixture made to break it and passes on good.html.

Also the pieces the contrast check stands on: WCAG's formula, the cascade (importance,
inline styles, specificity, dark-scheme media rules) and what counts as hidden.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from newsletter.compose.message import fill_html, fill_text
from newsletter.compose.sample import example_recipient
from newsletter.config import Settings
from newsletter.models import RenderedIssue
from newsletter.preflight.accessibility import check_accessibility, check_plain_text
from newsletter.preflight.colour import contrast_ratio, parse_colour
from newsletter.preflight.css import matches, parse_selector_list
from newsletter.preflight.finding import Finding
from newsletter.preflight.htmldom import Element, own_text, parse_document
from newsletter.preflight.styles import StyledDocument, media_matches

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "preflight"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def found(findings: list[Finding], check: str) -> list[tuple[str, str]]:
    return [(finding.severity, finding.where) for finding in findings if finding.code == check]


def test_good_fixture_passes_every_check() -> None:
    assert check_accessibility(fixture("good.html"), fixture("good.txt")) == []


def test_seed_passes_every_check(seed_rendered: RenderedIssue, settings: Settings) -> None:
    recipient = example_recipient(settings)
    findings = check_accessibility(fill_html(seed_rendered, recipient), fill_text(seed_rendered, recipient))
    assert [str(finding) for finding in findings] == []


def test_missing_lang_and_dir() -> None:
    findings = check_accessibility(fixture("no-lang.html"))
    messages = [finding.message for finding in findings if finding.code == "a11y-lang"]
    assert len(messages) == 2
    assert "no lang attribute" in messages[0] and "no dir attribute" in messages[1]
    assert found(findings, "a11y-lang") == [("warning", "html"), ("warning", "html")]


def test_layout_table_without_role_presentation_but_not_a_data_table() -> None:
    findings = check_accessibility(fixture("layout-table.html"))
    assert found(findings, "a11y-layout-table") == [("warning", "table.layout (line 6)")]
    # good.html has a data table (caption, th scope) without a role: that one is right
    assert found(check_accessibility(fixture("good.html")), "a11y-layout-table") == []


def test_heading_that_skips_a_level() -> None:
    findings = check_accessibility(fixture("heading-jump.html"))
    assert found(findings, "a11y-heading-order") == [("warning", "h3.section")]
    assert "from h1 to h3" in findings[0].message


def test_alt_text_missing_empty_on_content_empty_in_a_link_and_a_file_name() -> None:
    findings = check_accessibility(fixture("alt-text.html"))
    assert found(findings, "a11y-alt") == [
        ("error", "img.no-alt"), ("warning", "img.empty-alt"), ("error", "a.logo-link"), ("warning", "img.file-name"),
    ]
    assert found(findings, "a11y-link-text") == []  # the empty link is reported once, with its image


def test_link_text_that_says_nothing() -> None:
    findings = check_accessibility(fixture("link-text.html"))
    assert found(findings, "a11y-link-text") == [("warning", "a.click"), ("warning", "a.here"), ("error", "a.empty")]


def test_low_contrast_in_the_light_scheme() -> None:
    findings = [finding for finding in check_accessibility(fixture("contrast-light.html"))
                if finding.code == "a11y-contrast"]
    assert findings and all(finding.where == "p.pale" for finding in findings)
    assert "#999999 on #ffffff is 2.85:1 in the light scheme" in findings[0].message


def test_low_contrast_only_in_the_dark_scheme() -> None:
    findings = [finding for finding in check_accessibility(fixture("contrast-dark.html"))
                if finding.code == "a11y-contrast"]
    assert [(finding.where, finding.message.split(" is ")[0]) for finding in findings] == [
        ("p.forgotten", "text #33333a on #1c1c1f"),
    ]
    assert "in the dark scheme" in findings[0].message


def test_text_under_14px() -> None:
    findings = check_accessibility(fixture("font-size.html"))
    assert found(findings, "a11y-font-size") == [
        ("warning", "p.tiny at 800 px, p.footer at 800 px, p.tiny at 375 px (+1 more)"),
    ]
    assert "12 px" in findings[0].message


@pytest.mark.parametrize("name, severity, words", [
    ("text-stub.txt", "error", "empty"),
    ("text-markup.txt", "warning", "HTML tags"),
    ("text-markup.txt", "warning", "HTML entities"),
    ("text-markup.txt", "warning", "Markdown links"),
    ("text-markup.txt", "error", "unfilled placeholders"),
    ("text-markup.txt", "warning", "links of the HTML"),
    ("text-partial.txt", "warning", "only 32% of the HTML's words"),
])
def test_plain_text_that_does_not_stand_on_its_own(name: str, severity: str, words: str) -> None:
    findings = check_plain_text(fixture(name), fixture("good.html"))
    assert any(finding.severity == severity and words in finding.message for finding in findings), findings


def test_plain_text_names_the_missing_link_addresses() -> None:
    findings = check_plain_text(fixture("text-partial.txt"), fixture("good.html"))
    links = [finding.where for finding in findings if "links of the HTML" in finding.message]
    assert links == ["https://example.com/report, https://example.com/unsubscribe/token"]


# --- what the contrast check stands on -------------------------------------------------------


@pytest.mark.parametrize("text, background, ratio", [
    ("#000", "#fff", 21.0),
    ("#777777", "white", 4.48),
    ("rgb(85, 85, 92)", "#ffffff", 7.39),
    ("rgba(0, 0, 0, 0.5)", "#ffffff", 3.98),  # half-transparent text is blended first
    ("hsl(0, 0%, 100%)", "#111114", 18.85),
])
def test_wcag_contrast_ratio(text: str, background: str, ratio: float) -> None:
    fore, back = parse_colour(text), parse_colour(background)
    assert fore is not None and back is not None
    assert contrast_ratio(fore, back) == pytest.approx(ratio, abs=0.01)


def test_cascade_importance_inline_specificity_and_dark_rules() -> None:
    document = parse_document("""<html><head><style>
      p { color: #111111; }
      .a { color: #222222; }
      #x.a { color: #333333; }
      .b { color: #444444 !important; }
      @media (prefers-color-scheme: dark) { .a { color: #eeeeee !important; } }
      @media (max-width: 480px) { .c { font-size: 12px; } }
    </style></head><body>
      <p id="x" class="a">one</p>
      <p class="a" style="color:#555555">two</p>
      <p class="b" style="color:#666666">three</p>
      <p class="c" style="font-size:16px">four</p>
    </body></html>""")
    one, two, three, four = [element for element in document.iter() if element.tag == "p"]
    light = StyledDocument(document, scheme="light", width=800)
    dark = StyledDocument(document, scheme="dark", width=375)
    assert str(light.style(one).colour) == "#333333"  # the id raises the specificity
    assert str(light.style(two).colour) == "#555555"  # inline beats any selector
    assert str(light.style(three).colour) == "#444444"  # !important beats inline
    assert str(dark.style(two).colour) == "#eeeeee"  # the dark rule's !important beats inline
    assert light.style(four).font_size == 16 and dark.style(four).font_size == 16  # inline wins at 375 too


def test_hidden_text_is_not_checked() -> None:
    document = parse_document("""<html><body style="background:#fff">
      <div style="display:none"><p>preheader</p></div>
      <div style="max-height:0; overflow:hidden"><p>clipped</p></div>
      <div style="visibility:hidden"><p>invisible</p><p style="visibility:visible">shown</p></div>
      <td style="font-size:0"> <div style="font-size:16px">sized</div></td>
    </body></html>""")
    styled = StyledDocument(document, scheme="light")
    assert [own_text(element).strip() for element in styled.text_elements()] == ["shown", "sized"]


def test_selectors_match_like_a_browser() -> None:
    document = parse_document(
        '<div class="card"><table><tr><td><p class="x">a</p><span>b</span><em>c</em></td></tr></table></div>'
    )
    p, span, em = (element for element in document.iter() if element.tag in ("p", "span", "em"))

    def hit(selector: str, element: Element) -> bool:
        return any(matches(parsed, element) for parsed in parse_selector_list(selector))

    assert hit(".card td p.x", p) and hit(".card p", p) and not hit(".card > p", p)
    assert hit("p + span", span) and hit("p ~ em", em) and not hit("p + em", em)
    assert hit("td > :first-child", p) and hit("em:last-child", em) and hit("span:not(.x)", span)
    assert not hit("p.x:hover", p) and not hit("p::before", p)
    assert parse_selector_list("#a .b p:hover")[0].specificity == (1, 2, 1)


@pytest.mark.parametrize("query, scheme, width, expected", [
    ("(prefers-color-scheme: dark)", "dark", 800, True),
    ("(prefers-color-scheme: dark)", "light", 800, False),
    ("only screen and (max-width: 480px)", "light", 375, True),
    ("only screen and (max-width: 480px)", "light", 800, False),
    ("screen and (min-width:480px)", "light", 800, True),
    ("print", "light", 800, False),
    ("(prefers-color-scheme: dark) and (max-width: 480px)", "dark", 375, True),
])
def test_media_queries(query: str, scheme: str, width: int, expected: bool) -> None:
    assert media_matches(query, scheme=scheme, width=width) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize("alt", ["image", "Photo", "A picture.", "the image", "IMG_0042", "DSC-7",
                                 "Screenshot 2024-01-02 at 10.15.32.png"])
def test_alt_text_that_only_says_there_is_a_picture(alt: str) -> None:
    html = (f'<html lang="en" dir="ltr"><body><p style="font-size:16px">Words</p>'
            f'<img class="weak" src="https://example.com/x.png" alt="{alt}" width="600" height="300"></body></html>')
    assert found(check_accessibility(html), "a11y-alt") == [("warning", "img.weak")]


@pytest.mark.parametrize("alt", ["Photo of the harbour at dawn", "Image processing pipeline, step by step",
                                 "A chart of sales by month"])
def test_alt_text_that_describes_passes(alt: str) -> None:
    html = (f'<html lang="en" dir="ltr"><body><p style="font-size:16px">Words</p>'
            f'<img src="https://example.com/x.png" alt="{alt}" width="600" height="300"></body></html>')
    assert found(check_accessibility(html), "a11y-alt") == []


def test_missing_alt_can_be_left_to_the_caller_and_the_rest_stays() -> None:
    findings = check_accessibility(fixture("alt-text.html"), missing_alt=False)
    assert found(findings, "a11y-alt") == [("warning", "img.empty-alt"), ("error", "a.logo-link"),
                                           ("warning", "img.file-name")]
