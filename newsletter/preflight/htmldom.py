"""A small typed element tree of an email's HTML, for the preflight checks.

Built with the standard library's HTMLParser (lxml ships no type information), with the
tree-building rules an email needs: void elements, the end tags HTML lets you omit (``</p>``,
``</li>``, ``</td>`` …), and Outlook's conditional comments:

- ``<!--[if mso | IE]> … <![endif]-->`` hides HTML from everyone but Outlook for Windows.
  Its content is kept as text in :attr:`Document.conditional` (MJML opens a table in one
  such comment and closes it in another, so it is no tree of its own), and
  :func:`parse_document` reads it (fragments are fine) when a check wants to know what it uses.
- ``<!--[if !mso]><!--> … <!--<![endif]-->`` shows HTML to everyone but Outlook: the
  elements between are in the tree with ``hidden_from_mso`` set.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser

__all__ = [
    "Comment",
    "ConditionalBlock",
    "Document",
    "Element",
    "TextNode",
    "parse_document",
]

VOID = frozenset({
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr",
})
# A start tag of one of these closes an open <p> (HTML's "close a p element").
_CLOSES_P = frozenset({
    "address", "article", "aside", "blockquote", "details", "dialog", "div", "dl", "fieldset",
    "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hgroup",
    "hr", "main", "menu", "nav", "ol", "p", "pre", "section", "table", "ul",
})
# ... but not past these ("has a p element in button scope")
_P_SCOPE = frozenset({"button", "caption", "html", "marquee", "object", "table", "td", "template", "th"})
# tag -> the open tags its start closes, up to (not past) the boundary tags
_IMPLIED_END: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "li": (frozenset({"li"}), frozenset({"ul", "ol", "menu"})),
    "dt": (frozenset({"dt", "dd"}), frozenset({"dl"})),
    "dd": (frozenset({"dt", "dd"}), frozenset({"dl"})),
    "tr": (frozenset({"tr", "td", "th"}), frozenset({"table", "tbody", "thead", "tfoot"})),
    "td": (frozenset({"td", "th"}), frozenset({"tr", "table"})),
    "th": (frozenset({"td", "th"}), frozenset({"tr", "table"})),
    "tbody": (frozenset({"tbody", "thead", "tfoot", "tr", "td", "th"}), frozenset({"table"})),
    "thead": (frozenset({"tbody", "thead", "tfoot", "tr", "td", "th"}), frozenset({"table"})),
    "tfoot": (frozenset({"tbody", "thead", "tfoot", "tr", "td", "th"}), frozenset({"table"})),
    "option": (frozenset({"option"}), frozenset({"select", "datalist"})),
}
_CONDITIONAL = re.compile(r"^\[if\s+([^\]]*)\]>(.*)<!\[endif\]$", re.S | re.I)
_REVEALED_START = re.compile(r"^\[if\s+([^\]]*)\]><!$", re.I)
_REVEALED_END = re.compile(r"^<!\[endif\]$", re.I)


@dataclass(eq=False)
class TextNode:
    """A run of character data inside an element."""

    text: str
    parent: Element


@dataclass(eq=False)
class Element:
    """One HTML element: tag (lower case), attributes, children in order, the line it starts on."""

    tag: str
    attrs: dict[str, str]
    parent: Element | None = None
    children: list[Element | TextNode] = field(default_factory=list)
    line: int = 0
    hidden_from_mso: bool = False  # inside <!--[if !mso]><!--> … <!--<![endif]-->

    def get(self, name: str) -> str | None:
        """The attribute's value, or None when it is absent."""
        return self.attrs.get(name)

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names, in order."""
        return tuple((self.attrs.get("class") or "").split())

    @property
    def elements(self) -> list[Element]:
        """The child elements (no text)."""
        return [child for child in self.children if isinstance(child, Element)]

    def iter(self) -> Iterator[Element]:
        """This element and every element below it, in document order."""
        yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.iter()

    def ancestors(self) -> Iterator[Element]:
        """The parent, its parent, … up to the root."""
        node = self.parent
        while node is not None:
            yield node
            node = node.parent

    def own_text(self) -> str:
        """The text directly inside this element (not in child elements)."""
        return "".join(child.text for child in self.children if isinstance(child, TextNode))

    def text_content(self) -> str:
        """All the text inside this element, children included."""
        return "".join(
            child.text if isinstance(child, TextNode) else child.text_content() for child in self.children
        )

    def describe(self) -> str:
        """A short, CSS-like name for messages: ``p.nl-kicker``, ``a#top``, ``td``."""
        name = self.tag
        if self.attrs.get("id"):
            name += f"#{self.attrs['id']}"
        return name + "".join(f".{cls}" for cls in self.classes[:2])


@dataclass(frozen=True)
class Comment:
    """A comment that is not a conditional one."""

    text: str
    line: int


@dataclass(frozen=True)
class ConditionalBlock:
    """HTML inside ``<!--[if CONDITION]> … <![endif]-->``: only Outlook for Windows reads it."""

    condition: str
    html: str
    line: int


@dataclass
class Document:
    """A parsed HTML document: the root ``<html>`` element and what lives outside the tree."""

    root: Element
    doctype: str | None = None
    comments: list[Comment] = field(default_factory=list)
    conditional: list[ConditionalBlock] = field(default_factory=list)
    revealed: list[str] = field(default_factory=list)  # conditions of <!--[if !mso]><!--> blocks

    @property
    def html(self) -> Element:
        """The ``<html>`` element (the root itself when the markup had none)."""
        return next((child for child in self.root.elements if child.tag == "html"), self.root)

    @property
    def body(self) -> Element | None:
        """The ``<body>`` element, if there is one."""
        return next((element for element in self.root.iter() if element.tag == "body"), None)

    def iter(self) -> Iterator[Element]:
        """Every element of the tree in document order (the synthetic root left out)."""
        for child in self.root.elements:
            yield from child.iter()


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.document = Document(self.root)
        self.stack: list[Element] = [self.root]
        self.revealed_depth = 0

    @property
    def current(self) -> Element:
        return self.stack[-1]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        tag = tag.lower()
        self._close_implied(tag)
        element = Element(
            tag,
            {name.lower(): value or "" for name, value in attrs},
            parent=self.current,
            line=self.getpos()[0],
            hidden_from_mso=self.revealed_depth > 0,
        )
        self.current.children.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag.lower() not in VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        tag = tag.lower()
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return
        # an end tag with no open element of its name is ignored, as browsers do

    def handle_data(self, data: str) -> None:
        self.current.children.append(TextNode(data, self.current))

    def handle_comment(self, data: str) -> None:
        line = self.getpos()[0]
        text = data.strip()
        if match := _CONDITIONAL.match(text):
            self.document.conditional.append(ConditionalBlock(match.group(1).strip(), match.group(2), line))
        elif match := _REVEALED_START.match(text):
            self.revealed_depth += 1
            self.document.revealed.append(match.group(1).strip())
        elif _REVEALED_END.match(text) and self.revealed_depth:
            self.revealed_depth -= 1
        else:
            self.document.comments.append(Comment(data, line))

    def handle_decl(self, decl: str) -> None:
        if decl.lower().startswith("doctype"):
            self.document.doctype = decl

    def _close_implied(self, tag: str) -> None:
        if tag in _CLOSES_P:
            self._close_up_to(frozenset({"p"}), _P_SCOPE)
        implied = _IMPLIED_END.get(tag)
        if implied:
            self._close_up_to(*implied)

    def _close_up_to(self, closes: frozenset[str], boundaries: frozenset[str]) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            open_tag = self.stack[depth].tag
            if open_tag in closes:
                del self.stack[depth:]
                return
            if open_tag in boundaries:
                return


def parse_document(html: str) -> Document:
    """Parse an HTML document or fragment; the elements hang off a synthetic ``#document`` root."""
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.document
