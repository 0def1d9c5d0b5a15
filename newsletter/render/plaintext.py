"""The plain-text variant, written from the parsed :class:`Issue` (never scraped from HTML).

Paragraphs are wrapped at :data:`WIDTH` columns (Chinese, Japanese and Korean by
:mod:`~newsletter.render.linebreak`: between characters, two columns each), links become numbered references
``[1]`` listed at the end, citations stay whole on one line where they fit.

An issue in a right-to-left language gets a U+200F RIGHT-TO-LEFT MARK on each line that
would otherwise be shown left to right (see :func:`~newsletter.render.bidi.right_to_left_lines`);
URLs, the recipient's address and code stay as they are.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence

from newsletter.config import SenderSettings
from newsletter.language import local_date, parse_language
from newsletter.models import (
    Block,
    Citation,
    Code,
    CodeBlock,
    Emphasis,
    Heading,
    Image,
    Inline,
    Issue,
    LineBreak,
    Link,
    ListBlock,
    MergeField,
    Paragraph,
    Quote,
    Strong,
    Text,
    ThematicBreak,
)
from newsletter.render.bidi import right_to_left_lines
from newsletter.render.i18n import Wording, wording_for
from newsletter.render.linebreak import columns, has_wide, wrap_wide

__all__ = [
    "WIDTH",
    "render_text",
    "wrap",
]

#: the column every wrapped line stays within (the check allows up to 78)
WIDTH = 72
#: joins a citation's words while wrapping (a line break never falls inside it), a space once wrapped;
#: a private-use character, so a no-break space the text itself has (French "à :") stays one
_GLUE = "\ue000"
_HARD_BREAK = "\u2028"  # stands for a hard line break while wrapping
_SPACES = re.compile(r"[ \t\n\r\f\v]+")


def render_text(
    issue: Issue,
    *,
    sender: SenderSettings,
    view_url: str,
    recipient: Mapping[str, str],
    date_text: str = "",
    wording: Wording | None = None,
) -> str:
    """The whole text part, ending in a footer with the recipient's unsubscribe and preferences addresses.

    ``date_text`` is the issue's date as the HTML shows it; "" writes it here the same way
    (the issue's language, ``[sender] date_format``). ``wording``: the catalogs of the issue's
    language (the words the HTML footer uses too); without, they are looked up here.
    """
    language = parse_language(issue.language or sender.language)
    words = wording or wording_for(language)
    writer = _TextWriter(words)
    name = sender.from_name or sender.from_email
    if not date_text:
        date_text = local_date(issue.date, language, sender.date_format)
    writer.lines.append(f"{name.upper()} | {date_text}")
    writer.blank()
    headline = writer.flow(issue.headline)
    writer.heading(headline, "=")
    for section in issue.sections:
        if section.title:
            writer.heading(writer.flow(section.title), "-")
        for block in section.blocks:
            writer.block(block, indent="")
    if issue.credit:
        writer.paragraph(writer.flow(issue.credit), "", "")
    if writer.references:
        writer.lines.append(words.gettext("Links:"))
        for number, url in enumerate(writer.references, 1):
            writer.left_to_right(f"[{number}] {url}")
        writer.blank()
    writer.lines.append("-- ")
    if view_url:  # "" for an issue the archive doesn't have
        writer.lines.append(words.gettext("View this issue in your browser:"))
        writer.left_to_right(view_url)
        writer.blank()
    writer.lines.append(words.gettext("You receive %(name)s at this address:", name=name))
    writer.left_to_right(recipient["email"])
    writer.lines.append(words.gettext("Unsubscribe with one click:"))
    writer.left_to_right(recipient["unsubscribe_url"])
    writer.lines.append(words.gettext("Manage your subscription (your lists, your name):"))
    writer.left_to_right(recipient["preferences_url"])
    writer.blank()
    for line in textwrap.wrap(f"{name}, {sender.postal_address}", WIDTH):
        writer.lines.append(line)
    lines = right_to_left_lines(writer.lines, writer.ltr_lines) if language.is_rtl else writer.lines
    return "\n".join(lines).rstrip("\n") + "\n"


class _TextWriter:
    """Accumulates wrapped lines and the numbered link references."""

    def __init__(self, words: Wording) -> None:
        self.words = words
        self.lines: list[str] = []
        self.references: list[str] = []
        #: the numbers of lines that are left to right whatever the issue's language (URLs, code)
        self.ltr_lines: set[int] = set()

    def left_to_right(self, line: str) -> None:
        """Add a line that reads left to right in any issue: a URL, an address, a line of code."""
        self.ltr_lines.add(len(self.lines))
        self.lines.append(line)

    def blank(self) -> None:
        if self.lines and self.lines[-1] != "":
            self.lines.append("")

    def reference(self, url: str) -> int:
        if url not in self.references:
            self.references.append(url)
        return self.references.index(url) + 1

    def flow(self, content: Sequence[Inline]) -> str:
        """Inline content as one line of text, links numbered."""
        parts: list[str] = []
        for node in content:
            if isinstance(node, Text):
                parts.append(node.text)
            elif isinstance(node, Code):
                parts.append(node.text)
            elif isinstance(node, Emphasis):
                parts.append(f"_{self.flow(node.children)}_")
            elif isinstance(node, Strong):
                parts.append(f"*{self.flow(node.children)}*")
            elif isinstance(node, Link):
                label = self.flow(node.children)
                if node.url.startswith("mailto:") and label == node.url[7:]:
                    parts.append(label)
                elif label == node.url:
                    parts.append(f"<{label}>")
                else:
                    parts.append(f"{label} [{self.reference(node.url)}]")
            elif isinstance(node, Image):
                # Translators: an image in the plain-text part; %(alt)s is what it shows.
                parts.append(self.words.gettext("[Image: %(alt)s]", alt=node.alt))
            elif isinstance(node, LineBreak):
                parts.append(_HARD_BREAK)
            elif isinstance(node, MergeField):  # only where no recipient is known (render swaps them out)
                parts.append(node.fallback)
        return "".join(parts)

    def citation(self, citation: Citation | None) -> str:
        if citation is None:
            return ""
        label = f"[{citation.text}]".replace(" ", _GLUE)  # keep a source on one line where it fits
        if citation.url:
            label += f"{_GLUE}[{self.reference(citation.url)}]"
        return " " + label

    def heading(self, text: str, underline: str) -> None:
        self.blank()
        wrapped = wrap(text, "", "")
        self.lines.extend(wrapped)
        self.lines.append(underline * max(columns(line) for line in wrapped))  # a CJK character is two columns
        self.blank()

    def paragraph(self, text: str, first: str, rest: str) -> None:
        self.lines.extend(wrap(text, first, rest))
        self.blank()

    def block(self, block: Block, indent: str) -> None:
        if isinstance(block, Paragraph):
            self.paragraph(self.flow(block.content) + self.citation(block.citation), indent, indent)
        elif isinstance(block, Heading):
            self.lines.extend(wrap(self.flow(block.content).upper(), indent, indent))
            self.blank()
        elif isinstance(block, Quote):
            for child in block.blocks:
                self.block(child, indent + "> ")
        elif isinstance(block, ListBlock):
            for number, item in enumerate(block.items, block.start):
                marker = f"{number}. " if block.ordered else "* "
                hang = indent + " " * len(marker)
                text = self.flow(item.content) + self.citation(item.citation)
                self.lines.extend(wrap(text, indent + marker, hang))
                if item.children:
                    self.blank()
                    for child in item.children:
                        self.block(child, hang)
                self.blank()
        elif isinstance(block, CodeBlock):
            for line in block.text.split("\n"):
                self.left_to_right((indent + "    " + line).rstrip())
            self.blank()
        elif isinstance(block, ThematicBreak):
            self.lines.append(indent + "* * *")
            self.blank()


def wrap(text: str, first: str = "", rest: str = "") -> list[str]:
    """Wrap at WIDTH, honouring hard breaks; never split a word or a URL.

    A citation is glued (its spaces a private-use character while wrapping) so it stays on
    one line; one too long for a line is wrapped like any text.
    """
    lines = _wrap_joined(text, first, rest)
    if any(columns(line) > WIDTH and _GLUE in line for line in lines):
        lines = _wrap_joined(text.replace(_GLUE, " "), first, rest)
    return [line.replace(_GLUE, " ").rstrip() for line in lines]


def _wrap_joined(text: str, first: str, rest: str) -> list[str]:
    lines: list[str] = []
    for number, piece in enumerate(text.split(_HARD_BREAK)):
        flat = _SPACES.sub(" ", piece).strip()  # only ASCII space: the glue and a no-break space hold
        indent = first if number == 0 else rest
        if has_wide(flat):  # Chinese, Japanese, Korean: words without spaces, characters two columns wide
            lines.extend(wrap_wide(flat, WIDTH, indent, rest))
            continue
        wrapped = textwrap.wrap(
            flat,
            WIDTH,
            initial_indent=indent,
            subsequent_indent=rest,
            break_long_words=False,
            break_on_hyphens=False,
        )
        lines.extend(wrapped or [indent.rstrip()])
    return lines
