"""HTML fragments of an issue's content, for the template to place.

Every piece of text from the issue is escaped here, with ``quote=True`` so that it
is safe in attributes too; the only markup in a fragment is what this module writes.
The classes (``nl-…``) are styled by the template and inlined by premailer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from html import escape

from newsletter.models import (
    Block,
    Citation,
    Code,
    CodeBlock,
    Emphasis,
    Heading,
    Image,
    Inline,
    LineBreak,
    Link,
    ListBlock,
    ListItem,
    MergeField,
    Paragraph,
    Quote,
    Strong,
    Text,
    ThematicBreak,
)

__all__ = [
    "MAX_IMAGE_WIDTH",
    "block_html",
    "block_kind",
    "citation_html",
    "inline_html",
]

#: the widest an image may be drawn: the 600 px body less its side padding
MAX_IMAGE_WIDTH = 552

# What may stand as itself in an attribute value: printable ASCII but the backslash.
_NOT_PLAIN_ASCII = re.compile(r"[^ -\[\]-~]")


def _attribute(value: str) -> str:
    """``value`` escaped for a double-quoted attribute, in printable ASCII.

    Everything else goes out as a character reference: mjml-python writes attribute values
    the way Rust debug-prints a string, so a raw backslash came out doubled and an accent
    typed as a combining mark (``a`` + U+0301), a soft hyphen or a tab came out as ``\\u{301}``.
    """
    return _NOT_PLAIN_ASCII.sub(lambda match: f"&#{ord(match.group())};", escape(value))


def inline_html(content: Sequence[Inline]) -> str:
    """Inline content as HTML."""
    return "".join(_inline(node) for node in content)


def _inline(node: Inline) -> str:
    if isinstance(node, Text):
        return escape(node.text)
    if isinstance(node, Emphasis):
        return f"<em>{inline_html(node.children)}</em>"
    if isinstance(node, Strong):
        return f"<strong>{inline_html(node.children)}</strong>"
    if isinstance(node, Code):
        return f'<code class="nl-code">{escape(node.text)}</code>'
    if isinstance(node, Link):
        title = f' title="{_attribute(node.title)}"' if node.title else ""
        return f'<a class="nl-link" href="{_attribute(node.url)}"{title}>{inline_html(node.children)}</a>'
    if isinstance(node, Image):
        return _image(node)
    if isinstance(node, LineBreak):
        return "<br>"
    if isinstance(node, MergeField):  # only where no recipient is known (render swaps them out)
        return escape(node.fallback)
    raise TypeError(f"unknown inline node {node!r}")


def _image(image: Image) -> str:
    """An image that scales down on narrow screens and keeps its aspect ratio."""
    width, height = image.width, image.height
    if width and height and width > MAX_IMAGE_WIDTH:
        width, height = MAX_IMAGE_WIDTH, round(height * MAX_IMAGE_WIDTH / width)
    size = f' width="{width}" height="{height}"' if width and height else f' width="{MAX_IMAGE_WIDTH}"'
    title = f' title="{_attribute(image.title)}"' if image.title else ""
    return (
        f'<img class="nl-image" src="{_attribute(image.url)}" alt="{_attribute(image.alt)}"{size}{title}'
        ' style="display:block;max-width:100%;height:auto;border:0">'
    )


def citation_html(citation: Citation | None) -> str:
    """The muted source at the end of a paragraph or bullet, linked when it has a URL."""
    if citation is None:
        return ""
    label = escape(f"[{citation.text}]")
    if citation.url:
        label = f'<a class="nl-citation-link" href="{_attribute(citation.url)}">{label}</a>'
    return f' <span class="nl-citation">{label}</span>'


def block_kind(block: Block) -> str:
    """A short name of the block's kind, for templates that lay kinds out differently."""
    return {
        Paragraph: "paragraph",
        Heading: "heading",
        Quote: "quote",
        ListBlock: "list",
        CodeBlock: "code",
        ThematicBreak: "rule",
    }[type(block)]


def block_html(block: Block) -> str:
    """One block as HTML."""
    if isinstance(block, Paragraph):
        return f'<p class="nl-p">{inline_html(block.content)}{citation_html(block.citation)}</p>'
    if isinstance(block, Heading):
        level = min(block.level, 6)
        return f'<h{level} class="nl-h{level}">{inline_html(block.content)}</h{level}>'
    if isinstance(block, Quote):
        inner = "".join(block_html(child) for child in block.blocks)
        return f'<blockquote class="nl-quote">{inner}</blockquote>'
    if isinstance(block, ListBlock):
        tag = "ol" if block.ordered else "ul"
        start = f' start="{block.start}"' if block.ordered and block.start != 1 else ""
        items = "".join(_list_item(item) for item in block.items)
        return f'<{tag} class="nl-list"{start}>{items}</{tag}>'
    if isinstance(block, CodeBlock):
        return f'<pre class="nl-pre">{escape(block.text)}</pre>'
    if isinstance(block, ThematicBreak):
        return '<hr class="nl-rule">'
    raise TypeError(f"unknown block {block!r}")


def _list_item(item: ListItem) -> str:
    children = "".join(block_html(child) for child in item.children)
    return f'<li class="nl-li">{inline_html(item.content)}{citation_html(item.citation)}{children}</li>'
