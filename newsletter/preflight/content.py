"""Preflight checks of an issue: the problems an editor wants to hear of before sending."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Sequence
from html.parser import HTMLParser
from urllib.parse import urlsplit

from newsletter.models import (
    Block,
    Citation,
    Emphasis,
    Image,
    Inline,
    Issue,
    Link,
    ListBlock,
    Paragraph,
    Quote,
    Strong,
)
from newsletter.preflight.finding import Finding, Severity
from newsletter.render.linebreak import columns

__all__ = [
    "DIRECTION_CONTROLS",
    "GMAIL_CLIP_BYTES",
    "MAX_SUBJECT",
    "MAX_TEXT_COLUMNS",
    "check_issue",
    "check_rendered",
    "check_source",
]

#: Gmail hides everything past ~102 KB of HTML behind "[Message clipped]"
GMAIL_CLIP_BYTES = 102 * 1024
#: subjects longer than this are cut in most inbox lists
MAX_SUBJECT = 78
MAX_TEXT_COLUMNS = 78
#: Unicode's explicit direction controls: embeddings, overrides and their end (U+202A–U+202E), isolates
#: (U+2066–U+2069). Invisible, they reorder the text after them: "Invoice \u202egpj.exe\u202c" shows as
#: "Invoice exe.jpg" (the "Trojan Source" trick, CVE-2021-42574).
DIRECTION_CONTROLS = frozenset(chr(code) for code in (*range(0x202A, 0x202F), *range(0x2066, 0x206A)))
_URL_LINE_RE = re.compile(r"^\s*(\[\d+\]\s*)?<?[a-z][a-z0-9+.-]*:\S+>?$")
_DIRECTION_RE = re.compile("[" + "".join(sorted(DIRECTION_CONTROLS)) + "]")
# the data: images an issue may have (issues.py keeps exactly these as images); the compat check says who shows them
_DATA_IMAGE_RE = re.compile(r"data:image/(gif|png|jpeg|webp);", re.I)


def check_issue(issue: Issue) -> list[Finding]:
    """Findings about the parsed issue itself: subject, preheader, links, images."""
    found: list[Finding] = []

    def add(line: int, severity: Severity, code: str, message: str) -> None:
        found.append(Finding(severity, code, message, source=issue.source, line=line))

    if len(issue.subject) > MAX_SUBJECT:
        add(issue.line_of("subject"), "warning", "subject-length",
            f"subject is {len(issue.subject)} characters; inboxes cut it after about {MAX_SUBJECT}")
    if not issue.preheader:
        add(1, "warning", "no-preheader",
            "no preheader: inboxes will show the first words of the body; add 'preheader: …'")
    stem_date = issue.slug[:10]
    if re.match(r"^\d{4}-\d{2}-\d{2}$", stem_date) and stem_date != issue.date.isoformat():
        add(issue.line_of("date"), "info", "date-mismatch",
            f"the file name says {stem_date} but date is {issue.date.isoformat()}")
    for line, url, what in _urls(issue):
        if what == "image" and _DATA_IMAGE_RE.match(url):
            continue  # allowed; whether the chosen clients show it is the compatibility check's (image-base64)
        if not _absolute(url):
            add(line, "error", "relative-link",
                f"{what} '{url}' is not an absolute http(s) or mailto address; mail clients can't follow it")
    return found


def check_rendered(source: str, html: str, text: str) -> list[Finding]:
    """Findings about the rendered HTML and text: size, images, long text lines."""
    found: list[Finding] = []
    size = len(html.encode("utf-8"))
    if size >= GMAIL_CLIP_BYTES:
        found.append(Finding("error", "gmail-clip", f"HTML is {size / 1024:.1f} KB; Gmail clips messages over 102 KB",
                             source=source))
    elif size >= GMAIL_CLIP_BYTES * 0.85:
        found.append(Finding("warning", "gmail-clip", f"HTML is {size / 1024:.1f} KB, close to Gmail's 102 KB clip",
                             source=source))
    images = _ImageAudit()
    images.feed(html)
    for src in images.missing_alt:
        found.append(Finding("error", "image-alt", f"image '{src}' in the HTML has no alt attribute", source=source))
    for src in images.missing_size:
        found.append(Finding("info", "image-size",
                             f"image '{src}' has no height; give its size as ![alt](url \"600x400\")", source=source))
    for number, line in enumerate(text.splitlines(), 1):
        width = columns(line)  # a CJK character takes two columns, a mark none
        if width > MAX_TEXT_COLUMNS and not _URL_LINE_RE.match(line):
            found.append(Finding("warning", "text-width",
                                 f"text line {number} is {width} columns (over {MAX_TEXT_COLUMNS})", source=source))
    return found


def check_source(source: str, text: str) -> list[Finding]:
    """Findings about the characters of the issue file ``text``: direction controls, by line and column.

    They are reported, not refused: right-to-left text may use them rightly, and the
    editor is the one who can tell. The message shows them as ``<U+202E>``, never raw.
    """
    found: list[Finding] = []
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")  # lines as parse_issue counts them
    for number, line in enumerate(text.split("\n"), 1):
        controls = list(_DIRECTION_RE.finditer(line))
        if not controls:
            continue
        named = list(dict.fromkeys(f"U+{ord(match.group()):04X} {unicodedata.name(match.group())}"
                                   for match in controls))
        what = f"direction control {named[0]}" if len(named) == 1 else f"direction controls {', '.join(named)}"
        # Around the first one: a long paragraph is one line, and its start says nothing.
        start = max(0, controls[0].start() - 30)
        excerpt = line[start:start + 80].strip()
        shown = ("…" if start else "") + _DIRECTION_RE.sub(lambda match: f"<U+{ord(match.group()):04X}>", excerpt)
        if start + 80 < len(line):
            shown += "…"
        found.append(Finding(
            "warning", "direction-control",
            f"invisible {what} (from column {controls[0].start() + 1}): they reorder the text shown after them, "
            f"so that it can pass for other text; remove them unless right-to-left text needs them: {shown}",
            source=source, line=number,
        ))
    return found


def _absolute(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        return bool(parts.netloc)
    return parts.scheme == "mailto" and "@" in parts.path


def _urls(issue: Issue) -> Iterator[tuple[int, str, str]]:
    for section in issue.sections:
        yield from _inline_urls(section.title, section.line)
        for block in section.blocks:
            yield from _block_urls(block)
    yield from _inline_urls(issue.headline, 1)
    yield from _inline_urls(issue.credit, issue.line_of("credit"))


def _block_urls(block: Block) -> Iterator[tuple[int, str, str]]:
    if isinstance(block, Paragraph):
        yield from _inline_urls(block.content, block.line)
        yield from _citation_urls(block.citation, block.line)
    elif isinstance(block, Quote):
        for child in block.blocks:
            yield from _block_urls(child)
    elif isinstance(block, ListBlock):
        for item in block.items:
            yield from _inline_urls(item.content, block.line)
            yield from _citation_urls(item.citation, block.line)
            for child in item.children:
                yield from _block_urls(child)
    else:
        content: Sequence[Inline] = getattr(block, "content", ())
        yield from _inline_urls(content, getattr(block, "line", 1))


def _citation_urls(citation: Citation | None, line: int) -> Iterator[tuple[int, str, str]]:
    if citation is not None and citation.url:
        yield line, citation.url, "link"


def _inline_urls(content: Sequence[Inline], line: int) -> Iterator[tuple[int, str, str]]:
    for node in content:
        if isinstance(node, Link):
            yield line, node.url, "link"
            yield from _inline_urls(node.children, line)
        elif isinstance(node, Image):
            yield line, node.url, "image"
        elif isinstance(node, Emphasis | Strong):
            yield from _inline_urls(node.children, line)


class _ImageAudit(HTMLParser):
    """Collects ``<img>`` tags without ``alt`` or without a size."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.missing_alt: list[str] = []
        self.missing_size: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "img":
            return
        values = dict(attrs)
        src = values.get("src") or "?"
        if values.get("alt") is None:
            self.missing_alt.append(src)
        if not values.get("width") or not values.get("height"):
            self.missing_size.append(src)
