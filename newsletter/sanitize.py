"""Untrusted text made safe for one line: the single place control characters are dropped."""

from __future__ import annotations

import re

__all__ = ["one_line"]

# C0 controls (CR and LF among them), DEL, and the Unicode line separators.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")


def one_line(text: str, limit: int | None = None) -> str:
    """``text`` on one line: control characters become spaces, white-space runs fold, cut to ``limit``."""
    folded = " ".join(_CONTROL_RE.sub(" ", text).split())
    return folded if limit is None else folded[:limit]
