"""The data that flows through the pipeline: frozen dataclasses, no I/O.

``Issue`` (parsed file) -> ``RenderedIssue`` (html + text with placeholders)
-> per-recipient bytes (see :mod:`newsletter.compose.message`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

__all__ = [
    "Block",
    "Citation",
    "Code",
    "CodeBlock",
    "Emphasis",
    "Heading",
    "Image",
    "Inline",
    "Issue",
    "LineBreak",
    "Link",
    "ListBlock",
    "ListItem",
    "MergeField",
    "Paragraph",
    "Quote",
    "Recipient",
    "RenderedIssue",
    "Section",
    "Strong",
    "Text",
    "ThematicBreak",
    "is_valid_name",
]

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def is_valid_name(value: str) -> bool:
    """Whether ``value`` may name a list or a template (it becomes part of List-Id)."""
    return _NAME_RE.fullmatch(value) is not None


# --- inline content ------------------------------------------------------------


@dataclass(frozen=True)
class Text:
    """Plain text, unescaped: every renderer escapes it for its own output."""

    text: str


@dataclass(frozen=True)
class Emphasis:
    """``*emphasis*``."""

    children: tuple[Inline, ...]


@dataclass(frozen=True)
class Strong:
    """``**strong emphasis**``."""

    children: tuple[Inline, ...]


@dataclass(frozen=True)
class Code:
    """```inline code```."""

    text: str


@dataclass(frozen=True)
class Link:
    """``[text](url "title")``."""

    url: str
    children: tuple[Inline, ...]
    title: str = ""


@dataclass(frozen=True)
class Image:
    """``![alt](url "WIDTHxHEIGHT")``: the title, when it is a size, gives the pixel size."""

    url: str
    alt: str
    width: int | None = None
    height: int | None = None
    title: str = ""


@dataclass(frozen=True)
class LineBreak:
    """A hard line break (two trailing spaces or a backslash)."""


@dataclass(frozen=True)
class MergeField:
    """``{{ field }}`` or ``{{ field | fallback }}``: a subscriber's value, or the fallback when they have none."""

    field: str
    fallback: str = ""


Inline: TypeAlias = Text | Emphasis | Strong | Code | Link | Image | LineBreak | MergeField


@dataclass(frozen=True)
class Citation:
    """The source a paragraph or list item ends with: ``[Outlet / Author]``."""

    text: str
    url: str | None = None


# --- blocks --------------------------------------------------------------------


@dataclass(frozen=True)
class Paragraph:
    """A paragraph; ``citation`` is its trailing bracketed source, if any."""

    content: tuple[Inline, ...]
    citation: Citation | None = None
    line: int = 0


@dataclass(frozen=True)
class Heading:
    """A heading below section level (``###`` and deeper), inside a section."""

    level: int
    content: tuple[Inline, ...]
    line: int = 0


@dataclass(frozen=True)
class Quote:
    """A blockquote."""

    blocks: tuple[Block, ...]
    line: int = 0


@dataclass(frozen=True)
class ListItem:
    """One bullet: its first paragraph's content, citation, then any nested blocks."""

    content: tuple[Inline, ...]
    citation: Citation | None = None
    children: tuple[Block, ...] = ()


@dataclass(frozen=True)
class ListBlock:
    """A bullet list, or a numbered one starting at ``start``."""

    items: tuple[ListItem, ...]
    ordered: bool = False
    start: int = 1
    line: int = 0


@dataclass(frozen=True)
class CodeBlock:
    """A fenced or indented code block, shown as preformatted text."""

    text: str
    line: int = 0


@dataclass(frozen=True)
class ThematicBreak:
    """A ``---`` rule between blocks."""

    line: int = 0


Block: TypeAlias = Paragraph | Heading | Quote | ListBlock | CodeBlock | ThematicBreak


@dataclass(frozen=True)
class Section:
    """A ``## `` heading and the blocks under it; the intro section has no title."""

    title: tuple[Inline, ...]
    blocks: tuple[Block, ...]
    line: int = 0


# --- the issue -----------------------------------------------------------------


@dataclass(frozen=True)
class Issue:
    """A parsed issue file: front matter and body, nothing rendered yet."""

    source: str
    slug: str
    subject: str
    date: dt.date
    headline: tuple[Inline, ...]
    sections: tuple[Section, ...]
    preheader: str = ""
    send_at: dt.datetime | None = None
    list_name: str = "default"
    template: str = "briefing"
    credit: tuple[Inline, ...] = ()
    #: the BCP 47 tag of ``language:`` (``de``, ``pt-BR``); "" when the file names none (``[sender] language``)
    language: str = ""
    #: line of each front-matter key in the file, for error messages of later stages
    lines: Mapping[str, int] = field(default_factory=dict)

    def line_of(self, key: str) -> int:
        """The file line of front-matter ``key`` (1 when the key is absent)."""
        return self.lines.get(key, 1)


@dataclass(frozen=True)
class RenderedIssue:
    """An issue rendered once: HTML and text that still hold per-recipient placeholders.

    Placeholders are ``__nl<digest>_<field>__`` where ``digest`` is derived from the
    issue file itself, so the issue's own text can never contain one.
    """

    slug: str
    subject: str
    preheader: str
    html: str
    text: str
    placeholder_prefix: str
    view_url: str
    #: the merge fields behind the ``m0``, ``m1``, … placeholders: (field, fallback)
    merge_fields: tuple[tuple[str, str], ...] = ()
    #: the BCP 47 tag it is written in (HTML ``lang``, ``Content-Language``)
    language: str = "en"
    #: ``ltr`` or ``rtl``
    direction: str = "ltr"


@dataclass(frozen=True)
class Recipient:
    """One subscriber as the composing stage needs them."""

    email: str
    name: str = ""
    unsubscribe_url: str = ""
    #: ``mailto:…?subject=…`` for List-Unsubscribe, next to the one-click URL; may be empty
    unsubscribe_mailto: str = ""
    #: extra merge fields (from the subscriber CSV's other columns)
    fields: Mapping[str, str] = field(default_factory=dict)
    #: the footer's "Manage your subscription" page (the same token as ``unsubscribe_url``);
    #: "" means none was made, and the footer links to ``unsubscribe_url`` instead
    preferences_url: str = ""
