"""Helpers that read rendered HTML the way a reader would: visible text, links, images."""

from __future__ import annotations

import re
from html.parser import HTMLParser


class _Visible(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0
        self.hidden_preheader = False
        self.links: list[str] = []
        self.images: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("style", "script", "title", "head"):
            self.skip += 1
        values = dict(attrs)
        if tag == "a" and values.get("href"):
            self.links.append(values["href"] or "")
        if tag == "img":
            self.images.append(values)
        if tag in ("p", "li", "div", "h1", "h2", "h3", "br", "td", "blockquote"):
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "title", "head"):
            self.skip = max(0, self.skip - 1)

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data)


def parse(html: str) -> _Visible:
    reader = _Visible()
    reader.feed(html)
    return reader


def visible_text(html: str) -> str:
    """The text a reader sees, white space folded."""
    return squash("".join(parse(html).parts))


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()
