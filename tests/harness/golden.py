"""Golden files: rendered output compared byte for byte with ``tests/golden/<name>``; ``--update-golden`` rewrites them."""

from __future__ import annotations

import re
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent.parent / "golden"


def check_golden(name: str, actual: str, update: bool) -> None:
    """Assert that ``actual`` is ``tests/golden/<name>``, or write it there when ``update`` (pytest --update-golden)."""
    path = GOLDEN / name
    if update:
        path.write_text(actual, encoding="utf-8")
        return
    assert path.exists(), f"{path} is missing: run pytest --update-golden"
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, f"{name} changed; if that is intended, run pytest --update-golden and review the diff"


def normalise_html(html: str) -> str:
    """One tag per line, so that a golden diff shows what changed."""
    return re.sub(r">\s*<", ">\n<", html.replace("\r\n", "\n")).strip() + "\n"
