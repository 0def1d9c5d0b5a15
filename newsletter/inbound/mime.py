"""Reading untrusted mail with the standard library's ``email`` package, at a bounded cost.

Everything here takes what came back by mail as it is: 8-bit or broken headers, parts in
UTF-16, a 10 MB attachment, multiparts nested a thousand deep, no MIME at all. Nothing
raises on such input, and nothing reads more than a bounded amount of text from a part.

The ``compat32`` policy is the parser's: it only splits the text and never interprets a
header until asked (the default policy parses every header it is asked for and raises on
some broken ones), and it is the faster one. Headers are read raw here, then decoded
(RFC 2047) and made one line on the way out.
"""

from __future__ import annotations

import binascii
import codecs
import email
import email.policy
import html
import re
from collections.abc import Iterator, Sequence
from email.header import decode_header, make_header
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses
from typing import NamedTuple

from newsletter.sanitize import one_line

__all__ = [
    "EMBEDDED_TYPES",
    "Headers",
    "MAX_DEPTH",
    "MAX_PARTS",
    "Part",
    "addresses",
    "clean_address",
    "clean_message_id",
    "content_type",
    "embedded_headers",
    "field_blocks",
    "is_encoded",
    "iter_parts",
    "parse",
    "part_text",
    "safe_line",
    "text_body",
]

#: how deep parts are read; a report's parts sit at depth 1 or 2, a forwarded one a little deeper
MAX_DEPTH = 16
#: how many parts are read at most (a real report has three or four)
MAX_PARTS = 256
#: a message declaring more MIME boundaries than this is read for its headers only: the parser's
#: cost grows with the square of the nesting depth, and it recurses once per level
_MAX_BOUNDARIES = 200
#: how many values of one header name are kept (a message may carry 100,000 Received lines)
_MAX_VALUES = 32
#: the longest header value read (a To: with 10,000 addresses is cut here, not parsed)
_MAX_HEADER = 8192
_FOLD_RE = re.compile(r"\r?\n(?=[ \t])")
_C1_RE = re.compile("[\x80-\x9f]")
_ADDRESS_RE = re.compile(r"[^\s<>()\[\]\\,;:\"@\x00-\x1f\x7f]{1,64}@[A-Za-z0-9\-.\[\]:]{1,255}")
_MESSAGE_ID_RE = re.compile(r"<?\s*([^<>\s\x00-\x1f\x7f]{1,250}@[^<>\s\x00-\x1f\x7f]{1,250})\s*>?")
# "a@b", "<a@b>", "Name <a@b>", "=?utf-8?q?...?= <a@b>": no quotes, comments, groups or lists.
_SIMPLE_ADDRESS_RE = re.compile(r"(?:[^<>\",;:@\\()\[\]]{0,160}<)?([^<>\s\",;:()@\\\[\]]{1,64}@[A-Za-z0-9.-]{1,255})>?")
_OPENER_RE = re.compile(r"<(style|script)\b")
_TAG_RE = re.compile(r"<[^<>]{0,2000}>")
_BLANK_LINE_RE = re.compile(r"\r?\n[ \t]*\r?\n")
_REPORT_CONTAINERS = frozenset(
    {"message/delivery-status", "message/global-delivery-status", "message/feedback-report"}
)
# The report parts the parser splits into header blocks (the first) or reads as one nested
# message (the second); message/global-delivery-status is neither, so it is read as text.
_SPLIT_BY_PARSER = frozenset({"message/delivery-status", "message/feedback-report"})
#: the parts that carry another message (or its headers): not the message's own text
EMBEDDED_TYPES = frozenset({"message/rfc822", "message/global", "text/rfc822-headers", "message/global-headers"})


def parse(raw: bytes) -> tuple[Message, str]:
    """``raw`` parsed (compat32), and a note ("" if none) when only its headers could be read."""
    if raw.lower().count(b"boundary") > _MAX_BOUNDARIES:  # in C: a copy and a count, ~1 ms a MB
        return _headers_only(raw), f"more than {_MAX_BOUNDARIES} MIME boundaries: read the headers only"
    try:
        return email.message_from_bytes(raw, policy=email.policy.compat32), ""
    except RecursionError:
        return _headers_only(raw), "nested too deeply to parse: read the headers only"


def _headers_only(raw: bytes) -> Message:
    end = raw.find(b"\n\n")
    end2 = raw.find(b"\r\n\r\n")
    ends = [e for e in (end, end2) if e >= 0]
    head = raw[: min(ends)] if ends else raw[:65536]
    return HeaderParser(policy=email.policy.compat32).parsestr(head.decode("ascii", "surrogateescape"))


def _unsurrogate(text: str) -> str:
    # Raw 8-bit header bytes reach Python as lone surrogates (surrogateescape); most such
    # headers are UTF-8 that a sender didn't encode, so read them as that.
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeError:
        return text


def _decode(value: str, encoded_words: bool = True) -> str:
    if "\n" in value:
        value = _FOLD_RE.sub("", value[:_MAX_HEADER])
    else:
        value = value[:_MAX_HEADER]
    if encoded_words and "=?" in value:
        try:
            value = str(make_header(decode_header(value)))
        except Exception:  # noqa: BLE001 - a broken encoded word leaves the text as it came
            pass
    if not value.isascii():
        value = _unsurrogate(value)
    return value


def safe_line(text: str, limit: int = 500) -> str:
    """``text`` on one line of at most ``limit`` characters, with no control characters."""
    if not text.isascii():
        text = _C1_RE.sub(" ", text)
    return one_line(text, limit)


class Headers:
    """A message's header fields read once: by lower-case name, the raw values in order."""

    __slots__ = ("_decoded", "_fields")

    def __init__(self, message: Message) -> None:
        fields: dict[str, list[str]] = {}
        try:
            items = message.raw_items()
            for name, value in items:
                if not isinstance(name, str):
                    continue
                values = fields.setdefault(name.strip().lower(), [])
                if len(values) < _MAX_VALUES:
                    values.append(value if isinstance(value, str) else str(value))
        except Exception:  # noqa: BLE001 - a header the parser kept as something odd: keep what was read
            pass
        self._fields = fields
        self._decoded: dict[str, str] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._fields

    def get(self, name: str) -> str:
        """The first ``name`` field (lower case), decoded, unfolded; "" if absent."""
        decoded = self._decoded.get(name)
        if decoded is None:
            values = self._fields.get(name)
            decoded = self._decoded[name] = _decode(values[0]) if values else ""
        return decoded

    def get_all(self, name: str, *, encoded_words: bool = True) -> list[str]:
        """Every ``name`` field (lower case), unfolded and decoded, in order.

        ``encoded_words=False`` leaves RFC 2047 words as they are: an address header's
        display name, once decoded, could hold an address of its own.
        """
        return [_decode(value, encoded_words) for value in self._fields.get(name, ())]


def clean_address(text: str) -> str | None:
    """``text`` as a lower-case address (no ``<>``, no ``rfc822;``) if it looks like one, else None."""
    text = text.strip()
    if ";" in text:
        kind, _, rest = text.partition(";")
        if kind.strip().lower() not in ("rfc822", "utf-8"):
            return None
        text = rest.strip()
    text = text.strip("<> \t").lower()
    if len(text) > 320 or _ADDRESS_RE.fullmatch(text) is None:
        return None
    return text


def addresses(value: str) -> list[str]:
    """The addresses in an address-list header's value (lower case, checked), in order."""
    simple = _SIMPLE_ADDRESS_RE.fullmatch(value.strip())
    if simple is not None:  # most envelope headers: "a@b", "<a@b>", "Name <a@b>"
        cleaned = clean_address(simple[1])
        return [cleaned] if cleaned else []
    found: list[str] = []
    try:
        pairs = getaddresses([value[:_MAX_HEADER]])
    except Exception:  # noqa: BLE001 - getaddresses on hostile text: fall back to a plain search
        pairs = [("", match) for match in _ADDRESS_RE.findall(value[:_MAX_HEADER])]
    for _name, address in pairs:
        cleaned = clean_address(address)
        if cleaned is not None and cleaned not in found:
            found.append(cleaned)
    return found


def clean_message_id(text: str) -> str | None:
    """The first Message-ID in ``text``, without its ``<>``; None if there is none."""
    match = _MESSAGE_ID_RE.search(text[:2048])
    return match.group(1) if match else None


def content_type(part: Message) -> str:
    """The part's content type, lower case; text/plain when the stdlib can't read it (RFC 2045's default)."""
    try:
        return part.get_content_type()
    except Exception:  # noqa: BLE001 - a Content-Type the stdlib can't read counts as plain text
        return "text/plain"


class Part(NamedTuple):
    """A part met on the walk over a message."""

    message: Message
    depth: int
    embedded: bool  # inside an embedded message (the returned original): not this message's own text
    content_type: str


def iter_parts(message: Message) -> Iterator[Part]:
    """Every part (``message`` first), depth-first.

    Bounded: at most :data:`MAX_DEPTH` levels and ``MAX_PARTS`` parts, without recursion;
    the header blocks of a report part are not parts.
    """
    stack: list[tuple[Message, int, bool]] = [(message, 0, False)]
    seen = 0
    while stack and seen < MAX_PARTS:
        part, depth, embedded = stack.pop()
        seen += 1
        kind = content_type(part)
        yield Part(part, depth, embedded, kind)
        if depth >= MAX_DEPTH or kind in _REPORT_CONTAINERS:
            continue
        try:
            payload = part.get_payload() if part.is_multipart() else None
        except Exception:  # noqa: BLE001
            payload = None
        if isinstance(payload, list):
            inner = embedded or kind in EMBEDDED_TYPES
            stack.extend((child, depth + 1, inner) for child in reversed(payload) if isinstance(child, Message))


def _codec(part: Message) -> str:
    try:
        charset = part.get_content_charset() or "utf-8"
        name = codecs.lookup(charset).name
        # Undeclared or "us-ascii" 8-bit text is nearly always UTF-8 a sender didn't declare.
        return "utf-8" if name == "ascii" else name
    except (LookupError, ValueError, TypeError, AttributeError):
        return "utf-8"


def _body_bytes(part: Message, limit: int) -> bytes:
    """Up to about ``limit`` bytes of a leaf part's decoded body; base64 is decoded no further than that."""
    encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
    if encoding == "base64":
        payload = part.get_payload()
        if not isinstance(payload, str):
            return b""
        chunk = "".join(payload[: limit * 4 // 3 + limit // 16 + 8].split())
        chunk = chunk[: len(chunk) // 4 * 4]
        try:
            return binascii.a2b_base64(chunk.encode("ascii", "replace"))
        except binascii.Error:
            return b""
    # The bytes as they came (get_payload() without decode would hand 8-bit text over
    # already decoded by the declared charset, 'replace'd where that was wrong).
    data = part.get_payload(decode=True)
    return data[:limit] if isinstance(data, bytes) else b""


def part_text(part: Message, limit: int = 65536) -> str:
    """Up to ``limit`` bytes of a part's text, decoded by its charset (UTF-16 included).

    For a part the parser split into header blocks or a nested message (a report part, an
    embedded message), the text is put back together from them; "" if nothing can be read.
    """
    try:
        payload = part.get_payload()
        if isinstance(payload, list):
            pieces = []
            size = 0
            for block in payload:
                if not isinstance(block, Message) or size > limit:
                    break
                piece = block.as_string(policy=email.policy.compat32)
                pieces.append(piece)
                size += len(piece)
            text = "\n".join(pieces)[:limit]
            encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
            if encoding in ("base64", "quoted-printable") or _codec(part) not in _ASCII_COMPATIBLE:
                # A report part that was encoded: the parser read the encoded text as header
                # blocks; what was put back together is that text, to be decoded as a body.
                holder = Message(policy=email.policy.compat32)
                for name in ("content-type", "content-transfer-encoding"):
                    if part.get(name) is not None:
                        holder[name] = str(part.get(name))
                holder.set_payload(text.lstrip("\r\n"))
                return part_text(holder, limit)
            return _unsurrogate(text) if not text.isascii() else text
        data = _body_bytes(part, limit)
        codec = _codec(part)
        if codec.startswith("utf-16") and not data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            # No byte-order mark: RFC 2781 says big-endian; a NUL in the second byte says little.
            codec = "utf-16-le" if data[1:2] == b"\x00" else "utf-16-be"
        return data.decode(codec, "replace")
    except Exception:  # noqa: BLE001 - whatever is odd about this part, it has no text for us
        return ""


_ASCII_COMPATIBLE = frozenset(
    codecs.lookup(name).name
    for name in ("us-ascii", "utf-8", "latin-1", "iso-8859-15", "cp1252", "iso-8859-2", "koi8-r", "shift_jis", "gb2312")
)


def is_encoded(part: Message) -> bool:
    """Whether a leaf part's text can't be read line by line as it is (base64, quoted-printable, UTF-16, ...)."""
    encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
    return encoding in ("base64", "quoted-printable") or _codec(part) not in _ASCII_COMPATIBLE


def field_blocks(part: Message) -> list[Headers]:
    """The header-field blocks of a report part (message/delivery-status, message/feedback-report).

    The parser has usually split them already; when the part was encoded (base64,
    quoted-printable) or is in a charset such as UTF-16, its decoded text is split here.
    """
    try:
        payload = part.get_payload()
        encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
        plain = encoding in ("", "7bit", "8bit", "binary") and _codec(part) in _ASCII_COMPATIBLE
        if plain and isinstance(payload, list) and payload and content_type(part) in _SPLIT_BY_PARSER:
            return [Headers(block) for block in payload[:MAX_PARTS] if isinstance(block, Message)]
        text = part_text(part, 262144)
        blocks = []
        for chunk in _BLANK_LINE_RE.split(text.lstrip("\ufeff\r\n"))[:MAX_PARTS]:
            if chunk.strip():
                blocks.append(Headers(HeaderParser(policy=email.policy.compat32).parsestr(chunk.strip("\r\n") + "\n")))
        return blocks
    except Exception:  # noqa: BLE001
        return []


def embedded_headers(part: Message) -> Headers | None:
    """The headers of the message a message/rfc822 or text/rfc822-headers part carries."""
    try:
        payload = part.get_payload()
        encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
        if (
            isinstance(payload, list)
            and payload
            and isinstance(payload[0], Message)
            and encoding in ("", "7bit", "8bit", "binary")
        ):
            return Headers(payload[0])
        text = part_text(part, 262144)
        head = _BLANK_LINE_RE.split(text.lstrip("\ufeff\r\n"), maxsplit=1)[0]
        return Headers(HeaderParser(policy=email.policy.compat32).parsestr(head + "\n"))
    except Exception:  # noqa: BLE001
        return None


def _without_style_and_script(text: str) -> str:
    # One pass, never back: a regex with ".*?" to the closing tag is quadratic on a page of
    # unclosed "<style"s.
    lower = text.lower()
    kept: list[str] = []
    position = 0
    while (opener := _OPENER_RE.search(lower, position)) is not None:
        kept.append(text[position:opener.start()])
        closer = lower.find(f"</{opener[1]}", opener.end())
        if closer < 0:
            return " ".join(kept)
        end = lower.find(">", closer)
        position = len(text) if end < 0 else end + 1
    kept.append(text[position:])
    return " ".join(kept)


_BLOCK_TAGS = ("<br", "<p", "<div", "</p", "</div", "<tr", "<li")


def _tag_to_space(match: re.Match[str]) -> str:
    # A block element ends a line (an address and its explanation stay on separate lines).
    return "\n" if match.group().lower().startswith(_BLOCK_TAGS) else " "


def text_body(parts: Sequence[Part], limit: int = 65536) -> str:
    """A message's own text (its text/plain parts, or text/html without tags), up to ``limit`` characters.

    ``parts`` are the message's, from :func:`iter_parts`.

    Text inside an embedded message (the returned original) is left out, except where a
    bounce quotes the original inline in its own text, as Exim and qmail do.
    """
    plain: list[str] = []
    markup: list[str] = []
    size = 0
    for part, _depth, embedded, kind in parts:
        if embedded or size >= limit:
            continue
        if kind == "text/plain" and not part.is_multipart():
            text = part_text(part, limit - size)
            plain.append(text)
            size += len(text)
        elif kind == "text/html" and not part.is_multipart() and not plain:
            markup.append(part_text(part, limit))
    if plain:
        return "\n".join(plain)[:limit]
    if markup:
        text = "\n".join(markup)
        text = _without_style_and_script(text[: limit * 4])
        text = _TAG_RE.sub(_tag_to_space, text)
        return html.unescape(text)[:limit]
    return ""
