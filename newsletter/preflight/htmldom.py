"""An email's HTML as an lxml tree, with Outlook's conditional comments read apart.

lxml (libxml2's HTML parser) builds the tree: void elements, the end tags HTML lets you
omit, entities, each element's line (``sourceline``). The checks walk lxml elements
directly; this module adds what an email needs on top of them:

- ``<!--[if mso | IE]> … <![endif]-->`` hides HTML from everyone but Outlook for Windows.
  It is a comment in the tree; its content is kept as text in :attr:`Document.conditional`
  (MJML opens a table in one such comment and closes it in another, so it is no tree of
  its own), and ``parse_document(html, fragment=True)`` reads it when a check wants to know
  what it uses.
- ``<!--[if !mso]><!--> … <!--<![endif]-->`` shows HTML to everyone but Outlook: the
  elements between are in the tree, and :meth:`Document.hidden_from_mso` says so.
- :func:`describe`, :func:`own_text` and :func:`text_content`: an element as messages
  name it, and its text (never a comment's).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeAlias

from lxml import etree

__all__ = [
    "ConditionalBlock",
    "Document",
    "Element",
    "describe",
    "own_text",
    "parse_document",
    "text_content",
]

#: an element of the tree (lxml's; comments are ``etree._Comment`` and never yielded as elements)
Element: TypeAlias = etree._Element

_CONDITIONAL = re.compile(r"^\[if\s+([^\]]*)\]>(.*)<!\[endif\]$", re.S | re.I)
_REVEALED_START = re.compile(r"^\[if\s+([^\]]*)\]><!$", re.I)
_REVEALED_END = re.compile(r"^<!\[endif\]$", re.I)
_DOCTYPE = re.compile(r"<!(doctype\b[^>]*)>", re.I)  # the doctype as written, for messages
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_STRUCTURE_TAG = re.compile(r"<(html|head|body)[\s/>]", re.I)


@dataclass(frozen=True)
class ConditionalBlock:
    """HTML inside ``<!--[if CONDITION]> … <![endif]-->``: only Outlook for Windows reads it."""

    condition: str
    html: str


@dataclass(eq=False)
class Document:
    """A parsed HTML document (or fragment) and what lives outside its tree."""

    #: ``<html>`` (libxml2 supplies one when the markup has none); a fragment's ``<body>``
    root: Element
    doctype: str | None = None  # as written, without ``<!`` and ``>``: "doctype html"
    comments: int = 0  # comments that are not conditional ones
    conditional: list[ConditionalBlock] = field(default_factory=list)
    revealed: list[str] = field(default_factory=list)  # conditions of <!--[if !mso]><!--> blocks
    fragment: bool = False  # the root is a wrapper, not part of the markup
    _hidden_from_mso: set[Element] = field(default_factory=set)
    _implied: set[Element] = field(default_factory=set)  # <html>, <head>, <body> libxml2 added
    _markup: str = ""  # the source with its comments blanked out (their line breaks kept)
    _lines: dict[str, dict[Element, int]] = field(default_factory=dict)  # tag -> element -> line

    @property
    def html(self) -> Element:
        """The ``<html>`` element."""
        return self.root

    @property
    def body(self) -> Element | None:
        """The ``<body>`` element, if there is one."""
        return self.root if self.fragment else next(self.root.iter("body"), None)

    def iter(self) -> Iterator[Element]:
        """Every element of the markup in document order: no comments, none that libxml2 added."""
        return (node for node in self.root.iter()
                if isinstance(node.tag, str) and node not in self._implied)

    def line(self, element: Element) -> int:
        """The line ``element``'s start tag begins on.

        libxml2's ``sourceline`` is the line where the start tag *ends*: the n-th element of
        a tag name is the n-th start tag of that name in the markup (comments left out).
        """
        tag = str(element.tag)
        if tag not in self._lines:
            starts = [match.start() for match in re.finditer(rf"<{re.escape(tag)}[\s/>]", self._markup, re.I)]
            elements = [node for node in self.iter() if node.tag == tag]
            if len(starts) != len(elements):
                starts = []  # a start tag in raw text (<style>, <script>): keep libxml2's lines
            self._lines[tag] = {node: self._markup.count("\n", 0, start) + 1
                                for node, start in zip(elements, starts, strict=False)}
        return self._lines[tag].get(element) or element.sourceline or 0

    def hidden_from_mso(self, element: Element) -> bool:
        """Whether ``element`` is inside ``<!--[if !mso]><!--> … <!--<![endif]-->``."""
        return element in self._hidden_from_mso


def parse_document(html: str, *, fragment: bool = False) -> Document:
    """Parse an HTML document, or with ``fragment`` a piece of one (the content of a conditional comment)."""
    data = (f"<html><body>{html}</body></html>" if fragment else html).encode("utf-8", "replace")
    parser = etree.HTMLParser(encoding="utf-8", default_doctype=False, no_network=True)
    try:
        root = etree.fromstring(data, parser) if data.strip() else None
    except etree.XMLSyntaxError:  # libxml2 found no element at all
        root = None
    if root is None:  # nothing but white space or comments: an empty document
        root = etree.Element("html")
    if fragment:
        root = next(root.iter("body"), root)
    markup = _COMMENT.sub(lambda comment: "\n" * comment.group().count("\n"), html)
    document = Document(root, fragment=fragment, _markup=markup)
    if fragment:
        document._implied.add(root)
    else:
        # libxml2 supplies <html>, <head> and <body> when the markup has none: they aren't the email's
        written = {name.lower() for name in _STRUCTURE_TAG.findall(markup)}
        document._implied.update(element for element in root.iter("html", "head", "body")
                                 if element.tag not in written)
        doctype = root.getroottree().docinfo.doctype  # "<!DOCTYPE html>": libxml2 spells it its way
        if doctype:
            spelled = _DOCTYPE.search(markup)
            document.doctype = spelled.group(1) if spelled else doctype[2:-1]
    _read_comments(document)
    return document


def _read_comments(document: Document) -> None:
    """Sort the comments into conditional blocks, the marks around ``[if !mso]`` HTML, and plain ones."""
    root = document.root
    nodes = [*reversed(list(root.itersiblings(preceding=True))), *root.iter(), *root.itersiblings()]
    depth = 0  # how many <!--[if !mso]><!--> blocks are open
    for node in nodes:
        if isinstance(node, etree._Comment):
            text = (node.text or "").strip()
            if match := _CONDITIONAL.match(text):
                document.conditional.append(ConditionalBlock(match.group(1).strip(), match.group(2)))
            elif match := _REVEALED_START.match(text):
                depth += 1
                document.revealed.append(match.group(1).strip())
            elif _REVEALED_END.match(text) and depth:
                depth -= 1
            else:
                document.comments += 1
        elif depth and isinstance(node.tag, str):
            document._hidden_from_mso.add(node)


def describe(element: Element) -> str:
    """A short, CSS-like name for messages: ``p.nl-kicker``, ``a#top``, ``td``."""
    name = str(element.tag)
    if element.get("id"):
        name += f"#{element.get('id')}"
    return name + "".join(f".{cls}" for cls in (element.get("class") or "").split()[:2])


def own_text(element: Element) -> str:
    """The text directly inside ``element`` (not in child elements, never in comments)."""
    return (element.text or "") + "".join(child.tail or "" for child in element)


def text_content(element: Element) -> str:
    """All the text inside ``element``, children included (comments left out)."""
    return "".join(element.itertext())
