"""Parse an issue file (YAML front matter + CommonMark body) into an :class:`Issue`.

Pure: text in, model out. Every problem is an :class:`IssueError` naming the file,
the line and, where it is obvious, the fix.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import difflib
import re
from collections.abc import Sequence
from pathlib import Path

import yaml
from markdown_it import MarkdownIt
from markdown_it.rules_inline import image as markdown_image_rule
from markdown_it.rules_inline.state_inline import StateInline
from markdown_it.token import Token

from newsletter.errors import IssueError
from newsletter.language import LanguageError, parse_language
from newsletter.models import (
    Block,
    Citation,
    Code,
    CodeBlock,
    Emphasis,
    Heading,
    Image,
    Inline,
    Issue,
    LineBreak,
    Link,
    ListBlock,
    ListItem,
    MergeField,
    Paragraph,
    Quote,
    Section,
    Strong,
    Text,
    ThematicBreak,
    is_valid_name,
)
from newsletter.sanitize import direction_control

__all__ = [
    "FRONT_MATTER_KEYS",
    "inline_text",
    "load_issue",
    "parse_issue",
    "slug_from_path",
]

#: every key the front matter may hold, with whether it is required
FRONT_MATTER_KEYS: dict[str, bool] = {
    "subject": True,
    "date": True,
    "preheader": False,
    "send_at": False,
    "list": False,
    "template": False,
    "credit": False,
    "language": False,
}

# Used with fullmatch: "$" would also let a value end in a line break through.
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_SIZE_RE = re.compile(r"^\s*(\d{1,4})\s*[x×]\s*(\d{1,4})\s*$")
# {{ field }} or {{ field | fallback }}; field names as subscriber CSV columns allow them.
_MERGE_RE = re.compile(r"\{\{\s*([A-Za-z][A-Za-z0-9_]{0,63})\s*(?:\|([^{}\n]{0,200}))?\}\}")
_FENCE_RE = re.compile(r"^(---|\.\.\.)\s*$")
# What can't be in an issue: control characters but tab and line breaks (a pasted vertical
# tab, Word's manual line break, made MJML fail with no line to show), the non-characters
# U+FFFE/U+FFFF (not allowed in XML either) and lone surrogates (not encodable as UTF-8).
_FORBIDDEN_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")

#: how deep emphasis, strong and links may nest in each other (markdown-it limits blocks to 20)
_MAX_INLINE_DEPTH = 20

_SCHEME_RE = re.compile(r"([a-z][a-z0-9+.-]*):")
_DATA_IMAGE_RE = re.compile(r"data:image/(gif|png|jpeg|webp);")
# Set while markdown-it's image rule runs: the one place a data: URI may stand. A context
# variable, not an attribute of the shared parser, so parses in other threads can't see it.
_IN_IMAGE: contextvars.ContextVar[bool] = contextvars.ContextVar("_IN_IMAGE", default=False)


class _Markdown(MarkdownIt):
    """CommonMark whose links and images may only be http(s), mailto or relative addresses."""

    def validateLink(self, url: str) -> bool:
        """Whether ``url`` (normalised: percent-encoded, so a tab can't split a scheme) may be a link.

        markdown-it only refuses javascript:, vbscript:, file: and data:; a scheme a mail
        client may hand to another program (ms-msdt:, intent:, …) is no safer. Anything
        else stays text, as ``javascript:`` does. ``data:image/…`` is allowed in an image
        (markdown-it's exception) but not in a link: a click would open whatever it holds.
        """
        url = url.strip().lower()
        scheme = _SCHEME_RE.match(url)
        if scheme is None:  # a relative address: harmless, and `check` reports it
            return True
        if scheme.group(1) in ("http", "https", "mailto"):
            return True
        return _IN_IMAGE.get() and _DATA_IMAGE_RE.match(url) is not None


def _image_rule(state: StateInline, silent: bool) -> bool:
    """markdown-it's image rule, with data: images allowed while it runs."""
    reset = _IN_IMAGE.set(True)
    try:
        return markdown_image_rule(state, silent)
    finally:
        _IN_IMAGE.reset(reset)


# html=False: raw HTML in the Markdown stays text, and is escaped by every renderer.
_MARKDOWN = _Markdown("commonmark", {"html": False})
_MARKDOWN.inline.ruler.at("image", _image_rule)


def slug_from_path(path: str) -> str:
    """The issue's slug: its file name without ``.md``, lower-cased, safe in a URL."""
    stem = Path(path).name
    if stem.endswith(".md"):
        stem = stem[:-3]
    slug = re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-")
    return slug or "issue"


def load_issue(path: str | Path) -> Issue:
    """Read and parse the issue file at ``path`` (UTF-8)."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise IssueError(source, 0, f"can't read the file: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Count lines as parse_issue does: CRLF, LF and a lone CR each end one.
        before = data[: exc.start].replace(b"\r\n", b"\n")
        line = before.count(b"\n") + before.count(b"\r") + 1
        raise IssueError(source, line, "the file is not valid UTF-8", "save it as UTF-8") from exc
    return parse_issue(text, source=source)


def parse_issue(text: str, *, source: str = "<issue>") -> Issue:
    """Parse the text of an issue file; ``source`` names it in errors and gives the slug."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    bad = _FORBIDDEN_RE.search(text)
    if bad is not None:
        raise IssueError(source, text.count("\n", 0, bad.start()) + 1, _describe_character(bad.group()),
                         "remove it; pasted text can carry invisible characters")
    lines = text.split("\n")
    if not lines or not _FENCE_RE.match(lines[0]) or lines[0].startswith("..."):
        raise IssueError(
            source, 1, "no front matter",
            "start the file with a '---' line, the keys subject and date, then another '---'",
        )
    close = next((i for i in range(1, len(lines)) if _FENCE_RE.match(lines[i])), None)
    if close is None:
        raise IssueError(source, 1, "the front matter is never closed", "add a '---' line after it")
    fields, key_lines = _parse_front_matter("\n".join(lines[1:close]), source)

    def need(key: str) -> str:
        if key not in fields:
            raise IssueError(source, 1, f"missing required key '{key}'", _EXAMPLES[key])
        return fields[key]

    subject = _inbox_line(need("subject"), "subject", source, key_lines)
    if not subject:
        raise IssueError(source, key_lines["subject"], "subject is empty", _EXAMPLES["subject"])
    date = _parse_date(need("date"), source, key_lines["date"])
    preheader = _inbox_line(fields.get("preheader", ""), "preheader", source, key_lines)
    send_at = None
    if "send_at" in fields:
        send_at = _parse_send_at(fields["send_at"], source, key_lines["send_at"])
    list_name = _name(fields.get("list", "default"), "list", source, key_lines)
    template = _name(fields.get("template", "briefing"), "template", source, key_lines)
    language = ""
    if "language" in fields:
        language = _language(fields["language"], source, key_lines["language"])
    credit: tuple[Inline, ...] = ()
    if "credit" in fields:
        credit_text = _one_line(fields["credit"], "credit", source, key_lines)
        credit = _inline_from_markdown(credit_text, source, key_lines["credit"])

    body = _BodyParser(source, line_offset=close + 1)
    headline, sections = body.parse("\n".join(lines[close + 1 :]))
    return Issue(
        source=source,
        slug=slug_from_path(source),
        subject=subject,
        date=date,
        headline=headline or (Text(subject),),
        sections=sections,
        preheader=preheader,
        send_at=send_at,
        list_name=list_name,
        template=template,
        credit=credit,
        language=language,
        lines=key_lines,
    )


def inline_text(content: Sequence[Inline]) -> str:
    """The plain text of inline content: what a reader sees, without markup."""
    parts: list[str] = []
    for node in content:
        if isinstance(node, Text | Code):
            parts.append(node.text)
        elif isinstance(node, Emphasis | Strong | Link):
            parts.append(inline_text(node.children))
        elif isinstance(node, Image):
            parts.append(node.alt)
        elif isinstance(node, MergeField):
            parts.append(node.fallback or node.field)
        else:
            parts.append(" ")
    return "".join(parts)


def _describe_character(char: str) -> str:
    """What is wrong with a character _FORBIDDEN_RE matched, for an error message."""
    code = ord(char)
    if 0xD800 <= code <= 0xDFFF:
        return f"a lone surrogate U+{code:04X} is not a character (the text is not valid Unicode)"
    if code in (0xFFFE, 0xFFFF):
        return f"U+{code:04X} is not a character"
    if code == 0x0B:
        return "a vertical tab (U+000B, Word's manual line break) can't be in an issue; use a new line"
    return f"the control character U+{code:04X} can't be in an issue"


# --- front matter --------------------------------------------------------------

_EXAMPLES = {
    "subject": "e.g. subject: Trump and Putin meet face to face",
    "date": "e.g. date: 2017-07-07",
}


def _parse_front_matter(text: str, source: str) -> tuple[dict[str, str], dict[str, int]]:
    """Keys and string values of the front matter, with the file line of each key."""
    try:
        # BaseLoader keeps every scalar a string: we validate dates ourselves, with lines.
        node = yaml.compose(text, Loader=yaml.BaseLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 2 if mark is not None else 2
        raise IssueError(source, line, f"bad YAML in the front matter: {exc.problem or exc}") from exc
    except RecursionError as exc:  # PyYAML composes nested collections recursively
        raise IssueError(
            source, _first_nested_line(text), "the front matter nests lists or mappings too deep",
            "it must be 'key: value' lines",
        ) from exc
    except yaml.YAMLError as exc:
        position = getattr(exc, "position", None)  # a ReaderError knows where, but not the line
        line = text.count("\n", 0, position) + 2 if isinstance(position, int) else 2
        raise IssueError(source, line, f"bad YAML in the front matter: {exc}") from exc
    if node is None:
        raise IssueError(source, 1, "the front matter is empty", _EXAMPLES["subject"])
    if not isinstance(node, yaml.MappingNode):
        raise IssueError(
            source, node.start_mark.line + 2, "the front matter must be 'key: value' lines",
            _EXAMPLES["subject"],
        )
    fields: dict[str, str] = {}
    key_lines: dict[str, int] = {}
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 2
        key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
        if key not in FRONT_MATTER_KEYS:
            close = difflib.get_close_matches(key, FRONT_MATTER_KEYS, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "known keys: " + ", ".join(FRONT_MATTER_KEYS)
            raise IssueError(source, line, f"unknown key '{key}'", hint)
        if key in fields:
            raise IssueError(source, line, f"'{key}' is given twice", "keep one")
        if not isinstance(value_node, yaml.ScalarNode):
            raise IssueError(source, line, f"'{key}' must be text, not a list or a mapping")
        fields[key] = _escaped_text(str(value_node.value), key, source, line)
        key_lines[key] = line
    return fields, key_lines


def _first_nested_line(text: str) -> int:
    """The file line of the first list or mapping inside a front-matter value (its event stream is flat)."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.BaseLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth == 2 and event.start_mark is not None:
                    return int(event.start_mark.line) + 2
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError:
        pass
    return 2


def _escaped_text(value: str, key: str, source: str, line: int) -> str:
    """A scalar after YAML's escapes: "\\ud83d\\ude00" (as JSON writes an emoji) joined into one character.

    PyYAML decodes each half of an escaped surrogate pair on its own; the lone halves can't
    be encoded later. What an escape produced is checked like the file's own text.
    """
    if any("\ud800" <= char <= "\udfff" for char in value):
        value = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    bad = _FORBIDDEN_RE.search(value)
    if bad is not None:
        raise IssueError(source, line, f"{key}: {_describe_character(bad.group())}", "remove it")
    return value


def _one_line(value: str, key: str, source: str, key_lines: dict[str, int]) -> str:
    if "\n" in value or "\r" in value:
        raise IssueError(source, key_lines[key], f"{key} must be one line", "remove the line break")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value if ch != "\t"):
        raise IssueError(source, key_lines[key], f"{key} holds a control character", "remove it")
    return " ".join(value.split())


def _inbox_line(value: str, key: str, source: str, key_lines: dict[str, int]) -> str:
    """The subject or preheader: one line, and without a direction override (both show in the inbox list)."""
    found = direction_control(value)
    if found is not None:
        raise IssueError(
            source, key_lines[key],
            f"{key} holds the invisible direction control {found}, which makes the text after it read in"
            " another order", "remove it: it can make 'gpj.exe' show as 'exe.jpg'; right-to-left text needs none",
        )
    return _one_line(value, key, source, key_lines)


def _parse_date(value: str, source: str, line: int) -> dt.date:
    if not _DATE_RE.fullmatch(value):
        raise IssueError(source, line, f"date '{value}' is not YYYY-MM-DD", "e.g. date: 2017-07-07")
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise IssueError(source, line, f"date '{value}' does not exist ({exc})") from exc


def _parse_send_at(value: str, source: str, line: int) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise IssueError(
            source, line, f"send_at '{value}' is not an ISO 8601 date and time",
            "e.g. send_at: 2017-07-07T06:00:00-04:00",
        ) from exc
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise IssueError(
            source, line, f"send_at '{value}' has no UTC offset",
            f"add one, e.g. {moment.isoformat()}+00:00",
        )
    return moment


def _name(value: str, key: str, source: str, key_lines: dict[str, int]) -> str:
    if not is_valid_name(value):
        raise IssueError(
            source, key_lines.get(key, 1), f"{key} '{value}' is not a valid name",
            "use lower-case letters, digits, '-' and '_'",
        )
    return value


def _language(value: str, source: str, line: int) -> str:
    """The issue's BCP 47 tag in its conventional case (``pt-BR``), checked against Babel's CLDR data."""
    try:
        return parse_language(value).tag
    except LanguageError as exc:
        raise IssueError(source, line, f"language: {exc.message}", exc.hint) from exc


def _inline_from_markdown(text: str, source: str, line: int) -> tuple[Inline, ...]:
    parser = _BodyParser(source, line_offset=line - 1)
    tokens = _MARKDOWN.parseInline(text)
    return parser.inlines(tokens[0].children or [], line) if tokens else ()


# --- body ----------------------------------------------------------------------


class _BodyParser:
    """Turns markdown-it's flat token stream into our block model."""

    def __init__(self, source: str, *, line_offset: int) -> None:
        self.source = source
        self.line_offset = line_offset

    def line(self, token: Token) -> int:
        return self.line_offset + (token.map[0] if token.map else 0) + 1

    def parse(self, text: str) -> tuple[tuple[Inline, ...], tuple[Section, ...]]:
        tokens = _MARKDOWN.parse(text)
        headline: tuple[Inline, ...] = ()
        sections: list[Section] = []
        title: tuple[Inline, ...] = ()
        title_line = 0
        blocks: list[Block] = []
        stream = _Stream(tokens)
        while not stream.done():
            token = stream.peek()
            if token.type == "heading_open" and token.tag in ("h1", "h2"):
                stream.next()
                inline = stream.next()
                stream.next()  # heading_close
                content = self.inlines(inline.children or [], self.line(token))
                if token.tag == "h1" and not headline:
                    headline = content
                    continue
                if blocks or title:
                    sections.append(Section(title, tuple(blocks), title_line))
                title, title_line, blocks = content, self.line(token), []
                continue
            blocks.append(self.block(stream))
        if blocks or title:
            sections.append(Section(title, tuple(blocks), title_line))
        return headline, tuple(sections)

    def block(self, stream: _Stream) -> Block:
        token = stream.next()
        line = self.line(token)
        kind = token.type
        if kind == "paragraph_open":
            inline = stream.next()
            stream.next()
            content, citation = _split_citation(self.inlines(inline.children or [], line))
            return Paragraph(content, citation, line)
        if kind == "heading_open":
            inline = stream.next()
            stream.next()
            return Heading(int(token.tag[1:]), self.inlines(inline.children or [], line), line)
        if kind == "blockquote_open":
            return Quote(tuple(self.blocks_until(stream, "blockquote_close")), line)
        if kind in ("bullet_list_open", "ordered_list_open"):
            items: list[ListItem] = []
            close = kind.replace("_open", "_close")
            while stream.peek().type != close:
                stream.next()  # list_item_open
                items.append(self.list_item(self.blocks_until(stream, "list_item_close")))
            stream.next()
            start = int(token.attrs.get("start", 1) or 1)
            return ListBlock(tuple(items), kind == "ordered_list_open", start, line)
        if kind in ("fence", "code_block"):
            return CodeBlock(token.content.rstrip("\n"), line)
        if kind == "hr":
            return ThematicBreak(line)
        if kind == "html_block":  # not produced with html=False; kept as text if it ever is
            return Paragraph((Text(token.content.strip()),), None, line)
        raise IssueError(self.source, line, f"unsupported Markdown element '{kind}'")

    def blocks_until(self, stream: _Stream, close: str) -> list[Block]:
        blocks: list[Block] = []
        while stream.peek().type != close:
            blocks.append(self.block(stream))
        stream.next()
        return blocks

    def list_item(self, blocks: list[Block]) -> ListItem:
        if blocks and isinstance(blocks[0], Paragraph):
            first = blocks[0]
            return ListItem(first.content, first.citation, tuple(blocks[1:]))
        return ListItem((), None, tuple(blocks))

    def inlines(self, tokens: Sequence[Token], line: int) -> tuple[Inline, ...]:
        out: list[Inline] = []
        stream = _Stream(list(tokens))
        while not stream.done():
            out.append(self.inline(stream, line))
        return _merge_text(out)

    def inline(self, stream: _Stream, line: int, depth: int = 0) -> Inline:
        token = stream.next()
        kind = token.type
        if kind == "text":
            return Text(token.content)
        if kind == "softbreak":
            return Text(" ")
        if kind == "hardbreak":
            return LineBreak()
        if kind == "code_inline":
            return Code(token.content)
        if kind in ("em_open", "strong_open", "link_open"):
            if depth >= _MAX_INLINE_DEPTH:
                # markdown-it nests "**" * 3000 1500 deep; every later stage walks it recursively.
                raise IssueError(
                    self.source, line, f"emphasis and links nest more than {_MAX_INLINE_DEPTH} deep",
                    "simplify the markup",
                )
            close = kind.replace("_open", "_close")
            children: list[Inline] = []
            while stream.peek().type != close:
                children.append(self.inline(stream, line, depth + 1))
            stream.next()
            merged = _merge_text(children)
            if kind == "em_open":
                return Emphasis(merged)
            if kind == "strong_open":
                return Strong(merged)
            return Link(str(token.attrs.get("href", "")), merged, str(token.attrs.get("title", "") or ""))
        if kind == "image":
            # The alt text as a reader sees it (escapes, entities and emphasis resolved), not the
            # Markdown source that token.content holds: "![Caf&eacute; \\*1\\*](…)" is "Café *1*".
            alt = " ".join(_plain_text(token.children or []).split())
            if not alt:
                raise IssueError(
                    self.source, line, "image has no alt text",
                    "describe it: ![what the picture shows](url)",
                )
            title = str(token.attrs.get("title", "") or "")
            size = _SIZE_RE.match(title)
            width, height = (int(size.group(1)), int(size.group(2))) if size else (None, None)
            return Image(str(token.attrs.get("src", "")), alt, width, height, "" if size else title)
        # Anything else markdown-it may add later degrades to its text, never to markup.
        return Text(token.content)


def _plain_text(tokens: Sequence[Token]) -> str:
    """The text of inline tokens without their markup (what markdown-it puts in an ``alt``)."""
    parts: list[str] = []
    for token in tokens:
        if token.type in ("text", "code_inline"):
            parts.append(token.content)
        elif token.type in ("softbreak", "hardbreak"):
            parts.append(" ")
        elif token.type == "image":
            parts.append(_plain_text(token.children or []))
    return "".join(parts)


class _Stream:
    """A cursor over a token list."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.index = 0

    def done(self) -> bool:
        return self.index >= len(self.tokens)

    def peek(self) -> Token:
        return self.tokens[self.index]

    def next(self) -> Token:
        token = self.tokens[self.index]
        self.index += 1
        return token


def _merge_text(nodes: list[Inline]) -> tuple[Inline, ...]:
    """Join neighbouring Text nodes (softbreaks become spaces), then cut out ``{{ merge fields }}``."""
    out: list[Inline] = []
    run: list[str] = []  # joined once: adding each piece to the last copied it (quadratic in lines)
    for node in nodes:
        if isinstance(node, Text):
            run.append(node.text)
            continue
        if run:
            out.extend(_split_merge_fields("".join(run)))
            run = []
        out.append(node)
    if run:
        out.extend(_split_merge_fields("".join(run)))
    return tuple(out)


def _split_merge_fields(text: str) -> list[Inline]:
    """``Hi {{ name | reader }}!`` as Text, MergeField, Text; anything not a valid tag stays text."""
    pieces: list[Inline] = []
    position = 0
    for match in _MERGE_RE.finditer(text):
        if match.start() > position:
            pieces.append(Text(text[position:match.start()]))
        pieces.append(MergeField(match.group(1).lower(), " ".join((match.group(2) or "").split())))
        position = match.end()
    if position < len(text):
        pieces.append(Text(text[position:]))
    return pieces or [Text(text)]


def _split_citation(content: tuple[Inline, ...]) -> tuple[tuple[Inline, ...], Citation | None]:
    """Split a trailing bracketed source off inline content.

    Three spellings count: ``… [Outlet / Author]``, ``… [Outlet / Author](https://…)``
    (a final link whose text has " / ") and ``… [[Outlet](https://…)]``.
    """
    if not content:
        return content, None
    last = content[-1]
    if isinstance(last, Text):
        source = _trailing_source(last.text)
        if source is not None:
            before, label = source
            rest = (*content[:-1], Text(before)) if before else content[:-1]
            return _strip_end(rest), Citation(" ".join(label.split()))
        if last.text.strip() == "]" and len(content) >= 3:
            link, opener = content[-2], content[-3]
            if isinstance(link, Link) and isinstance(opener, Text) and opener.text.rstrip().endswith("["):
                before = opener.text.rstrip()[:-1].rstrip()
                rest = (*content[:-3], Text(before)) if before else content[:-3]
                label = " ".join(inline_text(link.children).split())
                return _strip_end(rest), Citation(label, link.url)
    if isinstance(last, Link):
        label = " ".join(inline_text(last.children).split())
        before_link = content[-2] if len(content) >= 2 else None
        preceded_by_space = before_link is None or (
            isinstance(before_link, Text) and before_link.text[-1:].isspace()
        )
        if " / " in label and preceded_by_space:
            return _strip_end(content[:-1]), Citation(label, last.url)
    return content, None


def _trailing_source(text: str) -> tuple[str, str] | None:
    """``text`` before a trailing ``[Outlet / Author]`` (no nested brackets), and that label; None if none.

    String scans, not a regex: ``\\s*\\[…\\]\\s*$`` with ``search`` retried its leading
    ``\\s*`` from every space of a run, so 200,000 spaces in a paragraph took 89 s.
    ``rstrip`` drops what ``\\s`` matches (both are ``str.isspace``).
    """
    end = len(text.rstrip())
    if not end or text[end - 1] != "]":
        return None
    opening = text.rfind("[", 0, end - 1)
    label = text[opening + 1 : end - 1]
    if opening < 0 or not label or "]" in label or "\n" in label:
        return None
    return text[:opening].rstrip(), label


def _strip_end(content: tuple[Inline, ...]) -> tuple[Inline, ...]:
    """Drop trailing whitespace left where a citation was cut off."""
    if content and isinstance(content[-1], Text):
        stripped = content[-1].text.rstrip()
        return (*content[:-1], Text(stripped)) if stripped else content[:-1]
    return content
