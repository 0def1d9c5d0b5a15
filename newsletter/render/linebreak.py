"""Wrapping text that has no spaces between its words: Chinese, Japanese, Korean.

:mod:`textwrap` breaks only at spaces and counts characters, so a Japanese paragraph came out
as one line of a hundred characters, each two columns wide in a terminal or a monospaced mail
reader, and ``check`` warned about every such issue. Here the break opportunities come from the
Unicode line breaking algorithm (UAX #14, from the maintained ``uniseg`` library: it keeps
``、`` and ``。`` off the start of a line and ``「`` off its end, the kinsoku rules), and widths
from ``wcwidth`` (East Asian wide and fullwidth characters take two columns; marks and the
right-to-left mark none).

Only where a character is wide: between two Latin letters, digits or URL characters a break
stays where :mod:`textwrap` would put it (at a space), so a URL or an English name inside a
Japanese sentence is never cut, and text with no wide character never comes here at all
(English text parts are unchanged, byte for byte). Both libraries are imported on first
use (17 ms that no command pays for English text).
"""

from __future__ import annotations

import unicodedata

__all__ = ["columns", "has_wide", "wrap_wide"]


def _is_wide(char: str) -> bool:
    return unicodedata.east_asian_width(char) in ("W", "F")


def has_wide(text: str) -> bool:
    """Whether ``text`` holds a character that takes two columns (a CJK ideograph, kana, hangul …)."""
    return any(_is_wide(char) for char in text)


def columns(text: str) -> int:
    """How many columns ``text`` takes in a monospaced reader (its length if it holds a control character)."""
    if text.isascii():
        return len(text)
    from wcwidth import wcswidth

    width: int = wcswidth(text)
    return width if width >= 0 else len(text)


def wrap_wide(text: str, width: int, first: str = "", rest: str = "") -> list[str]:
    """``text`` (one paragraph, spaces already collapsed) in lines of at most ``width`` columns.

    ``first`` starts the first line, ``rest`` the others. A piece that is longer than a line by
    itself (a long URL) gets a line of its own, whole.
    """
    lines: list[str] = []
    line = first
    has_content = False  # more than the indent on `line`
    for piece in _pieces(text):
        if has_content and columns((line + piece).rstrip(" ")) > width:
            lines.append(line.rstrip(" "))
            line = rest
            piece = piece.lstrip(" ")
        line += piece
        has_content = has_content or bool(piece.strip(" "))
    lines.append(line.rstrip(" "))
    return lines


def _pieces(text: str) -> list[str]:
    """``text`` cut where a line may end: UAX #14's opportunities at a space or next to a wide character."""
    from uniseg.linebreak import line_break_units

    pieces: list[str] = []
    for unit in line_break_units(text):
        if pieces and not _may_break(pieces[-1], unit):
            pieces[-1] += unit
        else:
            pieces.append(unit)
    return pieces


def _may_break(before: str, after: str) -> bool:
    # UAX #14 also allows a break after a hyphen or a slash between Latin letters (inside a
    # URL, say): those are kept together, as textwrap keeps them.
    return before.endswith(" ") or _is_wide(before[-1]) or _is_wide(after[0])
