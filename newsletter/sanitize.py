"""Untrusted text made safe for one line: the single place control characters are dropped."""

from __future__ import annotations

import re

__all__ = ["one_line"]

# C0 controls (CR and LF among them), DEL, and the Unicode line separators.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")
# A lone surrogate: what a command-line argument or environment value that isn't UTF-8
# becomes in Python; SQLite, UTF-8 and every later stage refuse it.
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def one_line(text: str, limit: int | None = None) -> str:
    """``text`` on one line: control characters become spaces, white-space runs fold, cut to ``limit``.

    A lone surrogate (text that wasn't valid UTF-8) becomes U+FFFD, the replacement character.
    """
    folded = " ".join(_CONTROL_RE.sub(" ", text).split())
    if not folded.isascii():
        folded = _SURROGATE_RE.sub("\ufffd", folded)
    return folded if limit is None else folded[:limit].rstrip()  # a cut may end on a space
