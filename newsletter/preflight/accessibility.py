"""Accessibility of the final email, read from its HTML and text without a browser.

- ``a11y-lang``: ``lang`` and ``dir`` on ``<html>``, so screen readers pick the voice and
  the text runs the right way.
- ``a11y-layout-table``: tables used for layout say ``role="presentation"``, or screen
  readers announce rows and columns of a grid that isn't one.
- ``a11y-heading-order``: headings go down one level at a time (h1, h2, h3; not h1, h3).
- ``a11y-alt``: every image has ``alt``; an empty one only on decorative images (marked
  ``role="presentation"``/``aria-hidden``, or a 1-2 px spacer), never as a link's only content;
  and one that says something: not a file name (``IMG_0042.jpg``) nor only "image" or "photo".
- ``a11y-link-text``: a link says where it goes: not empty, not "click here" or "here".
- ``a11y-contrast``: every rendered text colour against what is behind it, at least
  4.5:1 (WCAG 2 AA), in the light scheme and in the dark one (the
  ``@media (prefers-color-scheme: dark)`` rules applied by selector), at 800 and 375 px.
- ``a11y-font-size``: rendered text at least 14 px.
- ``a11y-plain-text``: the text part stands on its own: not empty, no markup, no
  placeholders, the same words as the HTML, and every link's address.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import unquote

from newsletter.preflight.colour import AA_NORMAL_TEXT, contrast_ratio
from newsletter.preflight.finding import Finding, Severity, where_list
from newsletter.preflight.htmldom import Document, Element, describe, own_text, parse_document, text_content
from newsletter.preflight.styles import Scheme, StyledDocument

__all__ = [
    "GENERIC_ALT_TEXTS",
    "GENERIC_LINK_TEXTS",
    "MIN_CONTRAST",
    "MIN_FONT_PX",
    "check_accessibility",
    "check_plain_text",
]

#: WCAG 2 AA for body text
MIN_CONTRAST = AA_NORMAL_TEXT
#: the smallest comfortable size for body text on a phone
MIN_FONT_PX = 14.0
#: link texts that don't say where the link goes (compared in lower case, without punctuation)
GENERIC_LINK_TEXTS = frozenset({
    "click here", "here", "click", "this", "this link", "link", "more", "read more", "learn more", "go",
})
#: alt texts that only say there is a picture (compared in lower case, without punctuation or an article)
GENERIC_ALT_TEXTS = frozenset({
    "image", "img", "photo", "photograph", "picture", "pic", "graphic", "illustration", "screenshot", "banner",
    "alt", "alt text", "placeholder", "untitled", "image of", "photo of", "picture of",
})
_CONTRAST_URL = "https://www.w3.org/WAI/WCAG22/Understanding/contrast-minimum.html"
_HEADINGS_URL = "https://www.w3.org/WAI/tutorials/page-structure/headings/"
_ALT_URL = "https://www.w3.org/WAI/tutorials/images/decision-tree/"
_LINK_URL = "https://www.w3.org/WAI/WCAG22/Understanding/link-purpose-in-context.html"
_LANG_URL = "https://www.w3.org/WAI/WCAG22/Understanding/language-of-page.html"
_TABLE_URL = "https://www.w3.org/WAI/tutorials/tables/"
_WIDTHS = (800, 375)  # a desktop window and a phone
_LANG_RE = re.compile(r"[a-zA-Z]{2,3}(-[a-zA-Z0-9]{1,8})*")
_HEADING_RE = re.compile(r"h([1-6])")
_DATA_TABLE_PARTS = frozenset({"th", "caption", "thead"})
# A file name ("IMG_0042.jpg", "Screenshot 2024-01-02 at 10.15.32.png") or a camera's ("DSC_0042", "IMG-7").
_FILE_NAME_RE = re.compile(r"^[^/\\]*\.(png|jpe?g|gif|webp|svg|bmp|tiff?|heic|avif)$"
                           r"|^(img|image|dsc|dscn|photo)[_-]?\d*$", re.I)
_ARTICLE_RE = re.compile(r"^(an?|the)\s+", re.I)
# Neither may run across a "<" or "[" that starts another candidate: each match attempt then stops at
# the next one, so a line of 200,000 "<a" or "[" costs linear time, not quadratic.
_TAG_RE = re.compile(r"</?(a|p|div|span|br|table|tr|td|img|strong|em|b|i|ul|ol|li|h[1-6]|html|body)\b[^<>]*>", re.I)
_ENTITY_RE = re.compile(r"&(#\d+|#x[0-9a-f]+|[a-z]{2,8});", re.I)
_PLACEHOLDER_RE = re.compile(r"__nl[0-9a-f]{16}_[a-z0-9_]+__")
_MARKDOWN_RE = re.compile(r"!?\[[^\[\]\n]*\]\((https?:|mailto:)[^)\s]*\)")
_WORD_RE = re.compile(r"[^\W\d_]{4,}")
_MIN_WORD_SHARE = 0.8  # of the HTML's distinct words that the text part must have too


def check_accessibility(html: str, text: str | None = None, *, missing_alt: bool = True) -> list[Finding]:
    """Every accessibility finding about the final HTML (and the text part, when given).

    ``missing_alt=False`` leaves out images without an ``alt`` attribute, for a caller that
    reports those already (``newsletter check`` does, as ``image-alt``); every other alt
    text finding (empty, a file name, only "image") stays.
    """
    document = parse_document(html)
    fragments = [parse_document(block.html, fragment=True) for block in document.conditional]
    findings = [
        *_language(document),
        *_layout_tables(document, fragments),
        *_heading_order(document),
        *_images(document, missing_alt=missing_alt),
        *_links(document),
        *_rendering(document),
    ]
    if text is not None:
        findings.extend(check_plain_text(text, html))
    return findings


# --- document language ----------------------------------------------------------------


def _language(document: Document) -> Iterator[Finding]:
    root = document.html
    lang = (root.get("lang") or "").strip()
    direction = (root.get("dir") or "").strip().lower()
    if not lang:
        yield Finding("warning", "a11y-lang", "<html> has no lang attribute: screen readers may read the "
                               "email in the wrong language (the template's <mjml lang> sets it)", "html", _LANG_URL)
    elif not _LANG_RE.fullmatch(lang):
        yield Finding("warning", "a11y-lang", f"lang='{lang}' is not a language tag such as 'en' or 'pt-BR'",
                               "html", _LANG_URL)
    if not direction:
        yield Finding("warning", "a11y-lang", "<html> has no dir attribute: give the text direction "
                               "(dir=\"ltr\" or \"rtl\"; the template's <mjml dir> sets it)", "html", _LANG_URL)
    elif direction not in ("ltr", "rtl", "auto"):
        yield Finding("warning", "a11y-lang", f"dir='{direction}' is none of ltr, rtl, auto", "html",
                               _LANG_URL)


# --- tables, headings, images, links ---------------------------------------------------


def _layout_tables(document: Document, fragments: list[Document]) -> Iterator[Finding]:
    places: list[str] = []
    for tree, prefix in ((document, ""), *((fragment, "<!--[if mso]> ") for fragment in fragments)):
        for table in tree.iter():
            if table.tag != "table" or (table.get("role") or "").strip().lower() in ("presentation", "none"):
                continue
            if any(cell.tag in _DATA_TABLE_PARTS or cell.get("scope") is not None
                   for cell in table.iter() if isinstance(cell.tag, str)):
                continue  # a data table: its headers are what screen readers should announce
            places.append(f"{prefix}{describe(table)} (line {tree.line(table)})")
    if places:
        yield Finding(
            "warning", "a11y-layout-table",
            "layout tables without role=\"presentation\": screen readers announce them as grids of data",
            where_list(places), _TABLE_URL)


def _heading_order(document: Document) -> Iterator[Finding]:
    styled = StyledDocument(document, scheme="light")
    previous = 0
    for element in document.iter():
        level = _heading_level(element)
        if level is None or styled.style(element).hidden:
            continue
        if level > previous + 1:
            before = f"h{previous}" if previous else "the start"
            yield Finding(
                "warning", "a11y-heading-order",
                f"heading level jumps from {before} to h{level} ('{_snippet(text_content(element))}'): "
                f"use h{previous + 1}", describe(element), _HEADINGS_URL)
        previous = level


def _heading_level(element: Element) -> int | None:
    match = _HEADING_RE.fullmatch(str(element.tag))
    if match:
        return int(match.group(1))
    if (element.get("role") or "").lower() == "heading":
        level = element.get("aria-level") or "2"  # ARIA's default level
        return int(level) if level.isdigit() else 2
    return None


def _images(document: Document, *, missing_alt: bool) -> Iterator[Finding]:
    for image in document.iter():
        if image.tag != "img":
            continue
        src = image.get("src") or "?"
        alt = image.get("alt")
        link = next((ancestor for ancestor in image.iterancestors() if ancestor.tag == "a"), None)
        if alt is None:
            if not missing_alt:
                continue
            yield Finding("error", "a11y-alt", f"image '{src}' has no alt attribute: screen readers read "
                                   "out its address; describe it, or alt=\"\" if it is decoration",
                                   describe(image), _ALT_URL)
        elif not alt.strip():
            if link is not None and not _accessible_name(link):
                yield Finding("error", "a11y-alt", f"image '{src}' is a link's only content but its alt is "
                                       "empty: the link has no name; say where it goes in the alt",
                                       describe(link), _ALT_URL)
            elif not _decorative(image):
                yield Finding("warning", "a11y-alt", f"image '{src}' has an empty alt but is not marked "
                                       "decorative: describe it, or add role=\"presentation\" if it is decoration",
                                       describe(image), _ALT_URL)
        elif _FILE_NAME_RE.match(alt.strip()):
            yield Finding("warning", "a11y-alt", f"image '{src}' has alt='{alt}', a file name: say what the "
                                   "image shows", describe(image), _ALT_URL)
        elif _ARTICLE_RE.sub("", re.sub(r"[^\w\s]", "", alt).strip()).lower() in GENERIC_ALT_TEXTS:
            yield Finding("warning", "a11y-alt", f"image '{src}' has alt='{alt}', which only says there is a "
                                   "picture: say what it shows", describe(image), _ALT_URL)


def _decorative(image: Element) -> bool:
    if (image.get("role") or "").lower() in ("presentation", "none"):
        return True
    if (image.get("aria-hidden") or "").lower() == "true":
        return True
    sizes = [image.get("width") or "", image.get("height") or ""]
    return all(size.strip().removesuffix("px").isdigit() and int(size.strip().removesuffix("px")) <= 2
               for size in sizes)  # a spacer or tracking pixel


def _links(document: Document) -> Iterator[Finding]:
    for link in document.iter():
        if link.tag != "a" or link.get("href") is None:
            continue
        name = _accessible_name(link)
        if not name:
            if any(child.tag == "img" for child in link.iter()):
                continue  # reported by the alt check, with the image
            yield Finding("error", "a11y-link-text", f"a link to '{link.get('href')}' has no text: "
                                   "screen readers read out its address", describe(link), _LINK_URL)
        elif re.sub(r"[^\w\s]", "", name).strip().lower() in GENERIC_LINK_TEXTS:
            yield Finding("warning", "a11y-link-text", f"link text '{name}' doesn't say where the link "
                                   "goes: use words that do (\"Read the full report\")", describe(link), _LINK_URL)


def _accessible_name(element: Element) -> str:
    label = (element.get("aria-label") or "").strip()
    if label:
        return label
    parts: list[str] = [element.text or ""]
    for child in element:
        if child.tag == "img":
            parts.append(child.get("alt") or "")
        elif isinstance(child.tag, str) and (child.get("aria-hidden") or "").lower() != "true":
            parts.append(_accessible_name(child))
        parts.append(child.tail or "")
    return " ".join(" ".join(parts).split())


# --- contrast and size, in both schemes ------------------------------------------------------


def _rendering(document: Document) -> Iterator[Finding]:
    low: dict[tuple[str, str, str, float], list[str]] = {}
    unknown: list[str] = []
    over_image: list[str] = []
    small: dict[float, list[str]] = {}
    schemes: tuple[Scheme, ...] = ("light", "dark")
    for scheme in schemes:
        for width in _WIDTHS:
            styled = StyledDocument(document, scheme=scheme, width=width)
            for element in styled.text_elements():
                style = styled.style(element)
                place = describe(element)
                if style.font_size < MIN_FONT_PX - 0.05:
                    small.setdefault(round(style.font_size, 1), []).append(f"{place} at {width} px")
                background, image = styled.backdrop(element)
                if image:
                    over_image.append(place)
                    continue
                if style.colour is None:
                    unknown.append(place)
                    continue
                ratio = contrast_ratio(style.colour, background)
                if ratio < MIN_CONTRAST:
                    key = (scheme, str(style.colour), str(background), round(ratio, 2))
                    low.setdefault(key, []).append(place)
    for (scheme_name, text, behind, ratio), places in low.items():
        yield Finding(
            "warning", "a11y-contrast",
            f"text {text} on {behind} is {ratio:.2f}:1 in the {scheme_name} scheme, under {MIN_CONTRAST}:1 (WCAG AA)",
            where_list(places), _CONTRAST_URL)
    for size, places in sorted(small.items()):
        yield Finding(
            "warning", "a11y-font-size", f"text is {size:g} px, under {MIN_FONT_PX:g} px: hard to read on a phone",
            where_list(places))
    if unknown:
        yield Finding("info", "a11y-contrast", "text colour can't be computed without a browser "
                               "(var(), currentcolor …): check it with --screenshots", where_list(unknown))
    if over_image:
        yield Finding("info", "a11y-contrast", "text over a background image: its contrast can't be "
                               "computed; check it with --screenshots", where_list(over_image))


# --- the text part ------------------------------------------------------------------------


def check_plain_text(text: str, html: str) -> list[Finding]:
    """Whether the text part reads on its own: words, links, and nothing left of markup."""
    findings: list[Finding] = []

    def add(severity: Severity, message: str, where: str = "") -> None:
        findings.append(Finding(severity, "a11y-plain-text", message, where))

    if len(_WORD_RE.findall(text)) < 5:
        add("error", "the text part is (nearly) empty: readers of plain text get nothing")
        return findings
    for pattern, what in ((_TAG_RE, "HTML tags"), (_ENTITY_RE, "HTML entities"), (_MARKDOWN_RE, "Markdown links"),
                          (_PLACEHOLDER_RE, "unfilled placeholders")):
        lines = [f"line {number}: {match.group(0)[:40]}" for number, line in enumerate(text.splitlines(), 1)
                 for match in pattern.finditer(line)]
        if lines:
            add("error" if what == "unfilled placeholders" else "warning",
                f"the text part has {what}, which its readers see as written", where_list(lines))
    document = parse_document(html)
    styled = StyledDocument(document, scheme="light")
    html_words = {word.lower() for element in styled.text_elements() for word in _WORD_RE.findall(own_text(element))}
    text_words = {word.lower() for word in _WORD_RE.findall(text)}
    if html_words:
        missing = html_words - text_words
        share = 1 - len(missing) / len(html_words)
        if share < _MIN_WORD_SHARE:
            add("warning", f"the text part has only {share:.0%} of the HTML's words: it should tell the same story",
                "missing: " + ", ".join(sorted(missing)[:8]))
    links = [link.get("href") or "" for link in document.iter() if link.tag == "a"]
    absent = [href for href in dict.fromkeys(links)
              if href.lower().startswith(("http:", "https:")) and href not in text and unquote(href) not in text]
    if absent:
        add("warning", "links of the HTML whose address the text part doesn't give: its readers can't follow them",
            where_list(absent))
    return findings


def _snippet(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"
