"""Per-recipient message bytes from a template encoded once per issue.

``compile_message`` builds the whole RFC 5322 message once, headers folded and both
parts quoted-printable encoded, with every per-recipient value left as a slot.
``personalise`` then only joins bytes: it escapes and encodes the few recipient
values and never touches the shared ~30 KB.

The result is wire-ready: CRLF line endings, no line over 76 octets in the bodies,
and no line that starts with ``.`` (a leading dot is encoded as ``=2E``), so SMTP
DATA needs no dot-stuffing.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import format_datetime, parseaddr
from html import escape

from newsletter.config import SenderSettings
from newsletter.errors import ComposeError
from newsletter.language import LanguageError, parse_language
from newsletter.models import Recipient, RenderedIssue
from newsletter.render.engine import RECIPIENT_FIELDS, placeholder_pattern
from newsletter.sanitize import one_line

__all__ = [
    "MessageTemplate",
    "compile_message",
    "fill_html",
    "fill_text",
    "format_recipient",
    "now_header_date",
    "personalise",
    "quoted_printable",
]

_MAX_QP_LINE = 76
# Octets that stand as themselves in quoted-printable: printable ASCII but "=".
_QP_SAFE = frozenset(range(33, 127)) - {ord("=")}
_QP_HEX = [f"={byte:02X}" for byte in range(256)]
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
# A dot-atom local part at an ASCII (or IDNA-encoded) domain: no quoting, no spaces, no SMTPUTF8.
_ADDRESS_RE = re.compile(rf"^{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
_SIMPLE_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]*$")
# What a list id may be: the names issue files and the store use for lists.
_LIST_ID_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_MERGE_KEY_RE = re.compile(r"^m[0-9]+$")
_MESSAGE_ID_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+$")
_URL_RE = re.compile(r"^https?://[!#-;=?-~]+$")  # printable ASCII without space, '<' or '>'
_MAILTO_RE = re.compile(r"^mailto:[!#-;=?-~]+$")
_MAX_HEADER_VALUE = 990

# Slot names: "h:" a header value, "t:" a field in the text part, "x:" one in the HTML part.


@dataclass(frozen=True)
class MessageTemplate:
    """A message encoded once per issue: literal byte runs and named per-recipient slots."""

    #: literal bytes, then the slot that follows them ("" after the last literal)
    parts: tuple[tuple[bytes, str], ...]
    boundary: str
    size: int
    #: (field, fallback) behind each ``m<n>`` slot
    merge_fields: tuple[tuple[str, str], ...] = ()


def quoted_printable(text: str) -> str:
    """RFC 2045 quoted-printable of ``text`` (UTF-8), CRLF line ends, lines ≤ 76 octets.

    Hard line breaks are ``\\n`` in ``text``. A ``.`` that would start a line is encoded,
    so the result never needs SMTP dot-stuffing.
    """
    out: list[str] = []
    for line in text.split("\n"):
        out.append(_qp_line(line.encode("utf-8")))
    return "\r\n".join(out)


def _qp_line(data: bytes) -> str:
    pieces: list[str] = []
    length = 0
    last = len(data) - 1
    for index, byte in enumerate(data):
        if byte in _QP_SAFE and not (byte == 46 and length == 0):  # 46 is "."
            token = chr(byte)
        elif byte in (32, 9) and index != last:  # white space stays, but not at a line end
            token = chr(byte)
        else:
            token = _QP_HEX[byte]
        if length + len(token) > _MAX_QP_LINE - 1:
            pieces.append("=\r\n")
            length = 0
            if token == ".":
                token = "=2E"
        pieces.append(token)
        length += len(token)
    return "".join(pieces)


def _qp_slot(value: str) -> bytes:
    """A value that stands between two soft line breaks: quoted-printable, then a soft break."""
    if value.isascii() and value.isprintable() and "=" not in value:
        # Plain ASCII (a URL, most addresses and names) only needs cutting into lines.
        width = _MAX_QP_LINE - 1
        if len(value) <= width and not value.startswith("."):
            return (value + "=\r\n").encode("ascii")
        if len(value) <= 2 * width and value[0] != "." and value[width] != ".":
            # Two lines (a link with its token, per recipient): no list to build.
            return (value[:width] + "=\r\n" + value[width:] + "=\r\n").encode("ascii")
        chunks = [value[start : start + width] for start in range(0, len(value), width)]
        if not any(chunk.startswith(".") for chunk in chunks):
            return ("=\r\n".join(chunks) + "=\r\n").encode("ascii")
    return (_qp_line(value.encode("utf-8")) + "=\r\n").encode("ascii")


def format_recipient(recipient: Recipient) -> str:
    """The ``To:`` header line (with CRLF) for ``recipient``; raises ComposeError if unsafe."""
    return _mailbox_header("To", recipient.name, recipient.email)


def _mailbox_header(field: str, name: str, email: str) -> str:
    """``field: name <email>`` with CRLF; the name sanitised, quoted or encoded as it needs."""
    if not _ADDRESS_RE.match(email) or len(email) > 254:
        raise ComposeError(f"invalid {field} address {email!r}")
    # Control characters (CR, LF among them) can't reach a header: they become spaces.
    name = one_line(name, 200)
    return _fold(field, [*_phrase(name), f"<{email}>"] if name else [email])


def _phrase(text: str) -> list[str]:
    """``text`` as the words of an RFC 5322 phrase: atoms, a quoted string, or RFC 2047 encoded words.

    Plain ASCII stays readable and is never encoded: RFC 2047 has decoders drop the space
    between two encoded words, and Python's address parser puts one in.
    """
    if "=?" in text or not text.isascii():  # "=?" would start an encoded word: encode rather than be decoded
        return _encoded_words(text)
    if _SIMPLE_NAME_RE.match(text):
        return text.split(" ")
    return ('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"').split(" ")


def _text_header(field: str, text: str) -> str:
    """An unstructured header (the subject) with CRLF: the text on one line, encoded where it must be."""
    text = one_line(text)
    words = text.split(" ")
    # Not the email package's folder: it folds a long first word right after the colon,
    # which reads as a leading space.
    if text.isascii() and "=?" not in text and max(map(len, words)) <= 900:
        return _fold(field, words)
    # Non-ASCII, ASCII that spells an encoded word (it would be decoded as one), or a word
    # too long for a line of 998 octets: encoded words, which may be cut anywhere.
    return _fold(field, _encoded_words(text))


def _fold(field: str, words: list[str]) -> str:
    """``field: word word …`` with CRLF, folded before a word that would pass column 78.

    The first word stays on the field's line: a fold right after the colon reads as a
    leading space. Unfolding only removes the CRLF, so the text is the same either way.
    """
    lines: list[str] = []
    line = f"{field}:"
    for word in words:
        if len(line) + 1 + len(word) > 78 and len(line) > len(field) + 1:
            lines.append(line)
            line = ""
        line += " " + word
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def _encoded_words(text: str) -> list[str]:
    """``text`` as base64 encoded words of at most 39 octets (64 characters) each."""
    words: list[bytes] = []
    chunk = b""
    for char in text:
        data = char.encode("utf-8")
        if len(chunk) + len(data) > 39:
            words.append(chunk)
            chunk = b""
        chunk += data
    words.append(chunk)
    return [f"=?utf-8?b?{base64.b64encode(word).decode('ascii')}?=" for word in words]


def compile_message(rendered: RenderedIssue, *, sender: SenderSettings, list_id: str = "default") -> MessageTemplate:
    """Encode ``rendered`` once into a :class:`MessageTemplate` for :func:`personalise`."""
    prefix = rendered.placeholder_prefix
    boundary = f"=_nl_{prefix[4:]}"  # "=_" never occurs in quoted-printable text
    if not _LIST_ID_RE.fullmatch(list_id):
        raise ComposeError(f"invalid list id {list_id!r} (lower-case letters, digits, '-' and '_')")
    # Every piece of text in a header goes through one_line (in the helpers): no CR or LF can
    # start a header of its own, and no NUL can pose as the slot marker below.
    headers = [
        _mailbox_header("From", sender.from_name, sender.from_email),
        _slot("h:to"),
        _text_header("Subject", rendered.subject),
        "Date: " + _slot("h:date") + "\r\n",
        "Message-ID: <" + _slot("h:message_id") + ">\r\n",
    ]
    if sender.reply_to:
        reply_name, reply_address = parseaddr(sender.reply_to)
        headers.append(_mailbox_header("Reply-To", reply_name, reply_address))
    list_name = one_line(sender.from_name or sender.from_email, 200)
    headers += [
        # A name with "<" must not look like the list id: it is quoted (or encoded) as a phrase.
        _fold("List-Id", [*_phrase(list_name), f"<{list_id}.{sender.domain}>"]),
        # Built here, not by the email package, which would RFC 2047-encode a long one and break it.
        "List-Unsubscribe:\r\n <" + _slot("h:unsubscribe_url") + ">" + _slot("h:unsubscribe_mailto") + "\r\n",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
        "MIME-Version: 1.0\r\n",
        # RFC 3282
        f"Content-Language: {_language_tag(rendered.language)}\r\n",
        f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n',
    ]
    body = (
        "\r\n"
        "This is a multi-part message in MIME format.\r\n"
        f"--{boundary}\r\n"
        'Content-Type: text/plain; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n"
        "\r\n"
        + _encode_part(rendered.text, prefix, "t:", len(rendered.merge_fields))
        + f"\r\n--{boundary}\r\n"
        'Content-Type: text/html; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n"
        "\r\n"
        + _encode_part(rendered.html, prefix, "x:", len(rendered.merge_fields))
        + f"\r\n--{boundary}--\r\n"
    )
    return MessageTemplate(_split_slots("".join(headers) + body), boundary, len(body), rendered.merge_fields)


_SLOT_MARK = "\x00"  # marks slots inside the message being compiled; never in our text


def _language_tag(tag: str) -> str:
    """``tag`` for the Content-Language header (the checked tag: letters, digits, hyphens), or ComposeError."""
    try:
        return parse_language(tag).tag
    except LanguageError as exc:
        raise ComposeError(f"invalid language tag {tag!r}: {exc.message}") from exc


def _slot(name: str) -> str:
    return f"{_SLOT_MARK}{name}{_SLOT_MARK}"


def _encode_part(content: str, prefix: str, kind: str, merge_count: int) -> str:
    """Quoted-printable ``content`` with each placeholder turned into a slot on a line of its own."""
    pieces = placeholder_pattern(prefix).split(content)
    out: list[str] = []
    for index, piece in enumerate(pieces):
        if index % 2:  # a field name captured by the pattern
            if piece not in RECIPIENT_FIELDS and not (_MERGE_KEY_RE.match(piece) and int(piece[1:]) < merge_count):
                raise ComposeError(f"unknown recipient field '{piece}' in the template")
            out.append(_slot(kind + piece))
        else:
            encoded = quoted_printable(piece)
            # A soft break before each slot puts the value at the start of a line.
            out.append(encoded + "=\r\n" if index + 1 < len(pieces) else encoded)
    return "".join(out)


def _split_slots(message: str) -> tuple[tuple[bytes, str], ...]:
    pieces = message.split(_SLOT_MARK)
    parts: list[tuple[bytes, str]] = []
    for index in range(0, len(pieces), 2):
        slot = pieces[index + 1] if index + 1 < len(pieces) else ""
        parts.append((pieces[index].encode("ascii"), slot))
    return tuple(parts)


def personalise(template: MessageTemplate, recipient: Recipient, *, message_id: str, date: str) -> bytes:
    """The complete message for ``recipient``: shared bytes joined with their encoded values.

    ``message_id`` is ``local@domain`` without angle brackets; ``date`` an RFC 5322 date
    (see :func:`email.utils.format_datetime`), shared by a batch.
    """
    if not _MESSAGE_ID_RE.match(message_id):
        raise ComposeError(f"invalid Message-ID {message_id!r}")
    url = recipient.unsubscribe_url
    # Each goes on a header line of its own, which may not pass 998 octets (RFC 5322).
    if not _URL_RE.match(url) or len(url) > _MAX_HEADER_VALUE:
        raise ComposeError(f"invalid unsubscribe URL for {recipient.email!r}")
    mailto = recipient.unsubscribe_mailto
    if mailto and (not _MAILTO_RE.match(mailto) or len(mailto) > _MAX_HEADER_VALUE):
        raise ComposeError(f"invalid unsubscribe mailto for {recipient.email!r}")
    if recipient.preferences_url and not _URL_RE.match(recipient.preferences_url):
        raise ComposeError(f"invalid preferences URL for {recipient.email!r}")
    values = _SlotValues(recipient, message_id, date, template.merge_fields)
    out: list[bytes] = []
    append = out.append
    for literal, slot in template.parts:
        append(literal)
        if slot:
            append(values.get(slot))
    return b"".join(out)


class _SlotValues:
    """The encoded value of each slot for one recipient, computed on first use.

    A value that is the same in both parts (a link, an address: nothing for HTML to escape)
    is encoded once: ``encoded`` holds each body value's bytes by its text.
    """

    __slots__ = ("cache", "date", "encoded", "merge_fields", "message_id", "recipient")

    def __init__(self, recipient: Recipient, message_id: str, date: str,
                 merge_fields: tuple[tuple[str, str], ...]) -> None:
        self.merge_fields = merge_fields
        self.recipient = recipient
        self.message_id = message_id
        self.date = date
        self.cache: dict[str, bytes] = {}
        self.encoded: dict[str, bytes] = {}

    def get(self, slot: str) -> bytes:
        value = self.cache.get(slot)
        if value is None:
            value = self.cache[slot] = self._compute(slot)
        return value

    def _compute(self, slot: str) -> bytes:
        recipient = self.recipient
        if slot == "h:to":
            return format_recipient(recipient).encode("ascii")
        if slot == "h:date":
            return self.date.encode("ascii")
        if slot == "h:message_id":
            return self.message_id.encode("ascii")
        if slot == "h:unsubscribe_url":
            return recipient.unsubscribe_url.encode("ascii")
        if slot == "h:unsubscribe_mailto":
            mailto = recipient.unsubscribe_mailto
            return f",\r\n <{mailto}>".encode("ascii") if mailto else b""
        raw = _field_value(recipient, slot[2:], self.merge_fields)
        text = escape(raw) if slot[0] == "x" else raw
        value = self.encoded.get(text)
        if value is None:
            value = self.encoded[text] = _qp_slot(text)
        return value


def _field_value(recipient: Recipient, field: str, merge_fields: tuple[tuple[str, str], ...] = ()) -> str:
    # The recipient's own fields first: every message has them (a merge field's name is m<n>).
    if field == "email":
        return recipient.email
    if field == "unsubscribe_url":
        return recipient.unsubscribe_url
    if field == "preferences_url":
        # A recipient made without one (older callers) still gets a working link: the unsubscribe page.
        return recipient.preferences_url or recipient.unsubscribe_url
    if field == "name":
        return one_line(recipient.name)
    if _MERGE_KEY_RE.match(field):
        name, fallback = merge_fields[int(field[1:])]
        return _merge_value(recipient, name) or fallback
    raise ComposeError(f"unknown recipient field '{field}'")


def _merge_value(recipient: Recipient, field: str) -> str:
    """A subscriber's merge field: their own fields first, then name and email; "" when missing."""
    value = recipient.fields.get(field)
    if value is None and field in ("name", "email"):
        value = recipient.name if field == "name" else recipient.email
    return one_line(value or "")


def _fill(rendered: RenderedIssue, content: str, recipient: Recipient, encode: Callable[[str], str]) -> str:
    pattern = placeholder_pattern(rendered.placeholder_prefix)
    merge = rendered.merge_fields
    return pattern.sub(lambda match: encode(_field_value(recipient, match.group(1), merge)), content)


def fill_html(rendered: RenderedIssue, recipient: Recipient) -> str:
    """The HTML as ``recipient`` sees it (for previews; sending uses :func:`personalise`)."""
    return _fill(rendered, rendered.html, recipient, escape)


def fill_text(rendered: RenderedIssue, recipient: Recipient) -> str:
    """The plain text as ``recipient`` sees it (for previews)."""
    return _fill(rendered, rendered.text, recipient, lambda value: value)


def now_header_date() -> str:
    """The current time as an RFC 5322 ``Date`` value, in UTC."""
    return format_datetime(dt.datetime.now(dt.UTC))

