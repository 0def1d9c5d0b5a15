"""HTML fragments of an issue's content, for the template to place.

Every piece of text from the issue is escaped here, with ``quote=True`` so that it
is safe in attributes too; the only markup in a fragment is what this module writes.
The classes (``nl-…``) are styled by the template and inlined by premailer.

Mixed directions: ``direction`` is the issue's (``ltr`` or ``rtl``). A citation, a link's
text or a piece of code that goes the other way (``[Washington Post / Abby Phillip]`` at the
end of an Arabic bullet, a URL as a link's text) is isolated, so that the neutral characters
at its edges keep to it: the brackets stay in order around the outlet's name, and the
sentence's own punctuation stays the sentence's. The isolation is a ``dir`` attribute with
the piece's own direction (by its first strong character, see
:func:`~newsletter.render.bidi.text_direction`), written only when that differs from the
issue's, so an English issue's HTML is what it always was. Why this form, from caniemail's
data shipped in ``newsletter/preflight/data`` (``html-bdi``, ``html-dir``, ``css-direction``):

- not ``<bdi>``: Gmail (webmail and apps), Outlook (every platform) and Yahoo don't support it;
- the ``dir`` attribute: Gmail, Apple Mail, Yahoo, Outlook on the Mac, iOS, Android and the
  web support it, and browsers isolate an element that has one (``[dir]`` is
  ``unicode-bidi: isolate`` in HTML's own style sheet, so webmail gets true isolation);
  Outlook for Windows supports it "partially": buggy on ``<a>``, so the attribute goes
  on a ``<span>`` (the citation's own, or one inside the link), never on the ``<a>``;
- an explicit ``ltr``/``rtl`` rather than ``dir="auto"``: caniemail tested ``dir`` with
  those two values, Word (Outlook for Windows) predates ``auto``, and the first-strong
  rule that ``auto`` applies is the same one used here, at render time;
- not CSS ``direction`` alone: on an inline element it needs ``unicode-bidi``, on which
  caniemail has no data.

Code is left to right unless its first strong character says otherwise (a line of
digits and operators in an Arabic issue is still code), and a code block in a
right-to-left issue says ``dir="ltr"`` for the template to align it left.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from html import escape

from newsletter.issue.parse import inline_text
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
from newsletter.render.bidi import isolation

__all__ = [
    "MAX_IMAGE_WIDTH",
    "attribute_text",
    "block_html",
    "block_kind",
    "citation_html",
    "inline_html",
]

#: the widest an image may be drawn: the 600 px body less its side padding
MAX_IMAGE_WIDTH = 552

# What may stand as itself in an attribute value: printable ASCII but the backslash.
_NOT_PLAIN_ASCII = re.compile(r"[^ -\[\]-~]")


def attribute_text(value: str) -> str:
    """``value`` escaped for a double-quoted attribute, in printable ASCII.

    Everything else goes out as a character reference: mjml-python writes attribute values
    the way Rust debug-prints a string, so a raw backslash came out doubled and an accent
    typed as a combining mark (``a`` + U+0301), a soft hyphen or a tab came out as ``\\u{301}``.
    """
    return _NOT_PLAIN_ASCII.sub(lambda match: f"&#{ord(match.group())};", escape(value))


def inline_html(content: Sequence[Inline], *, direction: str = "ltr") -> str:
    """Inline content as HTML, inside text of ``direction`` (``ltr`` or ``rtl``)."""
    return "".join(_inline(node, direction) for node in content)


def _inline(node: Inline, direction: str) -> str:
    if isinstance(node, Text):
        return escape(node.text)
    if isinstance(node, Emphasis):
        return f"<em>{inline_html(node.children, direction=direction)}</em>"
    if isinstance(node, Strong):
        return f"<strong>{inline_html(node.children, direction=direction)}</strong>"
    if isinstance(node, Code):
        return f'<code class="nl-code"{isolation(node.text, direction, default="ltr")}>{escape(node.text)}</code>'
    if isinstance(node, Link):
        title = f' title="{attribute_text(node.title)}"' if node.title else ""
        inner = inline_html(node.children, direction=direction)
        own = isolation(inline_text(node.children), direction)
        if own:  # on a span inside: Outlook for Windows mishandles dir on <a>
            inner = f"<span{own}>{inner}</span>"
        return f'<a class="nl-link" href="{attribute_text(node.url)}"{title}>{inner}</a>'
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
    title = f' title="{attribute_text(image.title)}"' if image.title else ""
    return (
        f'<img class="nl-image" src="{attribute_text(image.url)}" alt="{attribute_text(image.alt)}"{size}{title}'
        ' style="display:block;max-width:100%;height:auto;border:0">'
    )


def citation_html(citation: Citation | None, *, direction: str = "ltr") -> str:
    """The muted source at the end of a paragraph or bullet, linked when it has a URL.

    Isolated (``dir`` on its span) when it goes the other way than ``direction``, the text around it.
    """
    if citation is None:
        return ""
    label = escape(f"[{citation.text}]")
    if citation.url:
        label = f'<a class="nl-citation-link" href="{attribute_text(citation.url)}">{label}</a>'
    return f' <span class="nl-citation"{isolation(citation.text, direction)}>{label}</span>'


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


def block_html(block: Block, *, direction: str = "ltr") -> str:
    """One block as HTML, in an issue of ``direction`` (``ltr`` or ``rtl``)."""
    if isinstance(block, Paragraph):
        content = inline_html(block.content, direction=direction)
        return f'<p class="nl-p">{content}{citation_html(block.citation, direction=direction)}</p>'
    if isinstance(block, Heading):
        level = min(block.level, 6)
        return f'<h{level} class="nl-h{level}">{inline_html(block.content, direction=direction)}</h{level}>'
    if isinstance(block, Quote):
        inner = "".join(block_html(child, direction=direction) for child in block.blocks)
        return f'<blockquote class="nl-quote">{inner}</blockquote>'
    if isinstance(block, ListBlock):
        tag = "ol" if block.ordered else "ul"
        start = f' start="{block.start}"' if block.ordered and block.start != 1 else ""
        items = "".join(_list_item(item, direction) for item in block.items)
        return f'<{tag} class="nl-list"{start}>{items}</{tag}>'
    if isinstance(block, CodeBlock):
        return f'<pre class="nl-pre"{isolation(block.text, direction, default="ltr")}>{escape(block.text)}</pre>'
    if isinstance(block, ThematicBreak):
        return '<hr class="nl-rule">'
    raise TypeError(f"unknown block {block!r}")


def _list_item(item: ListItem, direction: str) -> str:
    children = "".join(block_html(child, direction=direction) for child in item.children)
    content = inline_html(item.content, direction=direction)
    return f'<li class="nl-li">{content}{citation_html(item.citation, direction=direction)}{children}</li>'
