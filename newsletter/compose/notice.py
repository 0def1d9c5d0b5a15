"""A message that is not an issue (a signup's confirmation email), encoded for its one recipient.

The same From, Reply-To, Subject, Date, Message-ID and MIME structure as an issue
(:mod:`~newsletter.compose.message` writes those headers for both), wire-ready the same way
(CRLF, quoted-printable lines of at most 76 octets, no line that starts with a dot), and
signed by the same DKIM signer. What differs: no ``List-Id``, ``List-Unsubscribe`` or
``List-Unsubscribe-Post`` (it is not a list's message, and there is nothing to leave), and
``Auto-Submitted: auto-generated`` (RFC 3834), which tells auto-responders not to answer it.
Kept apart from ``compile_message`` so that the issue path, ~10 µs a recipient, stays as it is.
"""

from __future__ import annotations

import re
import secrets
from email.utils import parseaddr

from newsletter.compose.message import _language_tag, _mailbox_header, _text_header, quoted_printable
from newsletter.config import SenderSettings
from newsletter.errors import ComposeError
from newsletter.render.confirm import RenderedNotice

__all__ = ["compose_notice"]

_MESSAGE_ID_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+$")
_DATE_RE = re.compile(r"^[A-Za-z0-9 ,:+-]{1,60}$")


def compose_notice(notice: RenderedNotice, *, email: str, name: str = "", sender: SenderSettings,
                   message_id: str, date: str) -> bytes:
    """The whole message of ``notice`` to ``email`` (``name`` shown in ``To:``), ready for SMTP DATA.

    ``message_id`` is ``local@domain`` without angle brackets; ``date`` an RFC 5322 date
    (:func:`~newsletter.compose.message.now_header_date`). ComposeError when the address
    can't go in a header.
    """
    if not _MESSAGE_ID_RE.match(message_id):
        raise ComposeError(f"invalid Message-ID {message_id!r}")
    if not _DATE_RE.match(date):
        raise ComposeError(f"invalid Date {date!r}")
    # "=_" never occurs in quoted-printable text, so the boundary can't occur in a part.
    boundary = f"=_nl_notice_{secrets.token_hex(8)}"
    headers = [
        _mailbox_header("From", sender.from_name, sender.from_email),
        _mailbox_header("To", name, email),
        _text_header("Subject", notice.subject),
        f"Date: {date}\r\n",
        f"Message-ID: <{message_id}>\r\n",
    ]
    if sender.reply_to:
        reply_name, reply_address = parseaddr(sender.reply_to)
        headers.append(_mailbox_header("Reply-To", reply_name, reply_address))
    headers += [
        "Auto-Submitted: auto-generated\r\n",
        "MIME-Version: 1.0\r\n",
        f"Content-Language: {_language_tag(notice.language)}\r\n",
        f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n',
    ]
    body = (
        "\r\n"
        "This is a multi-part message in MIME format.\r\n"
        f"--{boundary}\r\n"
        'Content-Type: text/plain; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n"
        "\r\n"
        + quoted_printable(notice.text)
        + f"\r\n--{boundary}\r\n"
        'Content-Type: text/html; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n"
        "\r\n"
        + quoted_printable(notice.html)
        + f"\r\n--{boundary}--\r\n"
    )
    return ("".join(headers) + body).encode("ascii")
