"""Right to left and left to right in one message: which way a run of text goes, and what keeps it in order.

An issue has one direction (its language's: ``rtl`` for Arabic, Hebrew, Persian, Urdu …);
pieces inside it may go the other way: an English outlet's name in an Arabic bullet, a URL,
a line of code. The Unicode bidirectional algorithm (UBA) places such a piece by the
characters around it, and the neutral ones at its edges (brackets, a final slash, a period)
take the surrounding direction: ``[Washington Post / Abby Phillip]`` in an Arabic bullet
gets its brackets mirrored and swapped, and a URL's final ``/`` jumps to its other end.

- :func:`text_direction` is the UBA's own rule for a paragraph (P2): the first strong
  character decides; HTML's ``dir="auto"`` uses it too. Applied here at render time, the
  markup can carry an explicit ``dir="ltr"``/``dir="rtl"``, which more clients honour than
  ``auto`` (see :mod:`newsletter.render.markup` for which element carries it and why).
- :func:`isolation` is that attribute, only where the piece's direction differs from the
  issue's: an English issue's HTML stays exactly as it was.
- :func:`right_to_left_lines` makes the lines of a text part read right to left.
- :func:`outlook_direction` gives Outlook's conditional tables the issue's direction.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Sequence
from typing import Literal

__all__ = [
    "RLM",
    "isolation",
    "outlook_direction",
    "right_to_left_lines",
    "text_direction",
]

#: U+200F RIGHT-TO-LEFT MARK: an invisible strong right-to-left character (not an embedding,
#: override or isolate, which ``check`` reports as a possible "Trojan Source" trick)
RLM = "\u200f"

_RTL_CLASSES = frozenset({"R", "AL"})
# What may stand before a line's words without being one: quote markers, the indent, a list marker.
_LINE_PREFIX = re.compile(r"(?:> ?)*[ ]*(?:(?:\*|\d+\.) +)?")
# Outlook's "ghost tables": the tables MJML writes inside <!--[if mso | IE]> … <![endif]--> for
# the Word engine, which lays out nothing else. Their <table> tags carry no dir of their own.
_MSO_BLOCK = re.compile(r"<!--\[if mso \| IE\]>.*?<!\[endif\]-->", re.S)
_TABLE_TAG = re.compile(r"<table(?![^>]*\sdir=)")


def text_direction(text: str) -> Literal["ltr", "rtl", ""]:
    """The direction of ``text`` by its first strong character ("" when it has none: digits, punctuation)."""
    for char in text:
        kind = unicodedata.bidirectional(char)
        if kind == "L":
            return "ltr"
        if kind in _RTL_CLASSES:
            return "rtl"
    return ""


def isolation(text: str, direction: str, *, default: Literal["ltr", "rtl", ""] = "") -> str:
    """`` dir="…"`` for a piece reading ``text`` inside content of ``direction``, or "" when it goes the same way.

    ``default`` is the piece's direction when ``text`` has no strong character (code is
    ``ltr`` whatever it holds; a citation of digits alone needs nothing).
    """
    own = text_direction(text) or default
    return f' dir="{own}"' if own and own != direction else ""


def right_to_left_lines(lines: Sequence[str], keep: Collection[int] = ()) -> list[str]:
    """``lines`` of a text part, each made to read right to left in a mail client.

    A client shows text/plain with each paragraph's direction taken from its first strong
    character (the UBA's rule; some take a line, some a block between blank lines, for a
    paragraph). So a line of an Arabic issue that begins with a Latin name, a citation that
    wrapped onto a line of its own, the first line ``THE BRIEFING | <date>``, or a line with
    no letters at all (a heading's ``=====``) would be shown left to right, on the left.
    Such a line gets U+200F RIGHT-TO-LEFT MARK before its first word: after the quote
    markers, the indent and the list marker, so that ``> `` still starts a quoted line and
    a list's ``* `` still comes first. A line already starting right to left is left alone,
    and so are empty lines, the signature separator ``-- `` and the lines numbered in
    ``keep`` (URLs, addresses, code: left-to-right text on its own line, which a mark would
    turn around: a URL's final ``/`` would jump to its start).
    """
    out: list[str] = []
    for number, line in enumerate(lines):
        if number in keep or not line.strip() or line == "-- " or text_direction(line) == "rtl":
            out.append(line)
            continue
        prefix = _LINE_PREFIX.match(line)
        cut = prefix.end() if prefix else 0
        out.append(line[:cut] + RLM + line[cut:])
    return out


def outlook_direction(html: str, direction: str) -> str:
    """``html`` with ``dir="rtl"`` on the tables MJML writes for Outlook alone, when ``direction`` is ``rtl``.

    Outlook for Windows lays an email out with Word, which reads these conditional tables
    and takes a table's direction (the side it starts from, the order of its cells) from
    the table's own ``dir``, not from ``<html dir>``; MJML gives them none. Left to right
    is Word's default, so an ``ltr`` issue is returned as it is.
    """
    if direction != "rtl":
        return html
    return _MSO_BLOCK.sub(lambda block: _TABLE_TAG.sub('<table dir="rtl"', block.group()), html)
