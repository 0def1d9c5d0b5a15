"""Untrusted text made safe for one line: the single place control characters are dropped."""

from __future__ import annotations

import re

__all__ = ["direction_control", "one_line"]

# C0 controls (CR and LF among them), DEL, and the Unicode line separators.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")
# A lone surrogate: what a command-line argument or environment value that isn't UTF-8
# becomes in Python; SQLite, UTF-8 and every later stage refuse it.
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
# The bidirectional embeddings and overrides (U+202A-U+202E) and isolates (U+2066-U+2069):
# invisible, they make what follows read in another order ("Invoice \u202egpj.exe\u202c"
# shows as "Invoice exe.jpg").
_DIRECTION_RE = re.compile("[\u202a-\u202e\u2066-\u2069]")
# Either of the two: one search finds whether a name needs any change (most need none).
_UNSAFE_RE = re.compile("[\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def direction_control(text: str) -> str | None:
    """The first Unicode direction override, embedding or isolate in ``text`` as ``U+202E``; None if none."""
    found = _DIRECTION_RE.search(text)
    return None if found is None else f"U+{ord(found.group()):04X}"


def one_line(text: str, limit: int | None = None) -> str:
    """``text`` on one line: control characters become spaces, white-space runs fold, cut to ``limit``.

    Direction overrides and isolates are removed (a name can't turn the rest of a line
    around), and a lone surrogate (text that wasn't valid UTF-8) becomes U+FFFD, the
    replacement character.
    """
    if not text.isascii() and _UNSAFE_RE.search(text):  # ASCII names, most names, pay nothing more
        text = _SURROGATE_RE.sub("\ufffd", _DIRECTION_RE.sub("", text))
    folded = " ".join(_CONTROL_RE.sub(" ", text).split())
    return folded if limit is None else folded[:limit].rstrip()  # a cut may end on a space
