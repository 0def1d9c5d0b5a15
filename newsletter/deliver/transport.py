"""SMTP delivery over aiosmtplib: one connection, one message at a time, replies as typed results.

This is the only module that imports aiosmtplib. Each reply becomes a
:class:`SendResult` of one of four kinds, which is all the dispatcher needs to know:

- ``sent``: the server answered 250 to the end of DATA;
- ``deferred``: a 4xx reply, a timeout before the message's final dot, or a connection
  the server closed without a final reply: try again later;
- ``failed``: a 5xx reply: don't try again (``bounced`` when it says the mailbox doesn't exist);
- ``uncertain``: the whole message went out and the server, still connected, sent no
  reply to its final dot within the timeout: it may have the message, so it is not sent
  again on its own (RFC 5321 4.1.1.4 makes the final reply the only proof; RFC 1047 describes the
  duplicates that retrying here causes).

Failures that no other recipient would escape (the relay refuses our login or our
sender address) raise :class:`~newsletter.errors.DeliveryError` instead, so that a run
stops rather than failing every subscriber one by one.

aiosmtplib opens the connection (EHLO, STARTTLS or TLS, AUTH). The connection then
passes to :class:`newsletter.deliver.pipelining.PipelinedSession`, which sends each message in two
round trips when the server offers PIPELINING, and command by command when it doesn't;
either way it knows whether a failure came before or after the final dot.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Awaitable, Callable
from typing import Literal, NamedTuple

import aiosmtplib

from newsletter.config import SmtpSettings, is_loopback
from newsletter.deliver.pipelining import Interrupted, PipelinedSession, Reply
from newsletter.errors import DeliveryError
from newsletter.sanitize import one_line

__all__ = [
    "NextMessage",
    "Outcome",
    "SendResult",
    "SmtpConnection",
    "classify_refusal",
]

Outcome = Literal["sent", "deferred", "failed", "uncertain"]
#: the next message as (sender, recipient, size), or a callable that gives it (or None) when asked; each
#: message may have its own sender (a return path per recipient, VERP)
NextMessage = tuple[str, str, int] | Callable[[], tuple[str, str, int] | None]

# RFC 3463 enhanced status codes that say the address itself is bad: 5.1.1 bad mailbox,
# 5.1.0 other address status, 5.1.2 bad domain, 5.1.3 bad syntax, 5.1.6 moved, 5.1.10 null MX.
_BAD_ADDRESS_STATUS = re.compile(r"^5\.1\.(?:0|1|2|3|6|10)\b")
_ENHANCED_STATUS = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})\b")
_WITHHELD = "withheld: the ledger did not let this run send it"
# What may stand between < > in MAIL FROM / RCPT TO: no space, no control character, no brackets.
_ENVELOPE_ADDRESS = re.compile(r"^[!-;=?-~]{1,254}$")
# For servers that give no enhanced code: the wording used by Postfix, Exim, Exchange, Gmail.
_UNKNOWN_USER_WORDS = re.compile(
    r"unknown user|user unknown|no such user|unknown recipient|recipient unknown|no such (?:mailbox|recipient)"
    r"|mailbox (?:not found|unavailable|does not exist)|does not exist|address rejected|invalid recipient"
    r"|user not found|account (?:has been )?disabled",
    re.IGNORECASE,
)


class SendResult(NamedTuple):  # a tuple: made for every message, and cheap to make
    """What became of one message."""

    outcome: Outcome
    code: int | None = None
    text: str = ""
    #: a permanent failure that says the mailbox doesn't exist: never mail this address again
    bounced: bool = False
    #: the connection can't be reused (dropped, timed out, or the server said 421)
    reconnect: bool = False

    def describe(self) -> str:
        """``"550 5.1.1 no such user"``, or the text alone when there was no reply code."""
        return f"{self.code} {self.text}".strip() if self.code else self.text


def classify_refusal(code: int, text: str) -> SendResult:
    """The result of an SMTP reply ``code`` (4xx or 5xx) with ``text``."""
    clean = one_line(text)[:500]
    if 400 <= code < 500:
        return SendResult("deferred", code, clean, reconnect=code == 421)
    if code >= 500:
        status = _ENHANCED_STATUS.match(clean)
        if status is not None:
            bounced = bool(_BAD_ADDRESS_STATUS.match(status.group(1)))
        else:
            bounced = code in (550, 551, 553) and bool(_UNKNOWN_USER_WORDS.search(clean))
        return SendResult("failed", code, clean, bounced=bounced)
    # Anything else where a refusal was expected is a broken server: treat it as temporary.
    return SendResult("deferred", code, clean or "unexpected reply", reconnect=True)


class SmtpConnection:
    """One SMTP connection to the relay in ``settings``, opened on first use and reopened after a drop."""

    def __init__(self, settings: SmtpSettings, *, local_hostname: str | None = None,
                 tls_context: ssl.SSLContext | None = None, pipelining: bool = True) -> None:
        if settings.password and settings.security == "none" and not is_loopback(settings.host):
            raise DeliveryError(f"refusing to send the SMTP password unencrypted to {settings.host}")
        self.settings = settings
        self._local_hostname = local_hostname
        self._tls_context = tls_context
        self._client: aiosmtplib.SMTP | None = None
        #: the client while :meth:`connect` is under way (so that :meth:`interrupt` can end it)
        self._connecting: aiosmtplib.SMTP | None = None
        self._use_pipelining = pipelining
        self._session: PipelinedSession | None = None
        #: (sender, recipient) whose envelope went out with the last message, replies unread
        self._in_flight: tuple[str, str] | None = None
        self._size_option = False

    @property
    def connected(self) -> bool:
        """Whether a connection is open now."""
        return self._session is not None and not self._session.closed

    @property
    def pipelining(self) -> bool:
        """Whether messages go pipelined on this connection (the server offered PIPELINING)."""
        return self._session is not None and self._session.pipelined

    async def connect(self) -> None:
        """Open the connection (TLS or STARTTLS as configured, then login); raises DeliveryError."""
        settings = self.settings
        tls_context = self._tls_context
        if tls_context is None and settings.ca_file is not None and settings.verify_certificates:
            tls_context = ssl.create_default_context(cafile=str(settings.ca_file))
        client = aiosmtplib.SMTP(
            hostname=settings.host,
            port=settings.port,
            timeout=settings.timeout,
            use_tls=settings.security == "tls",
            # False, not None: None would let aiosmtplib upgrade only when offered, and carry
            # on in clear text when not; we check for the offer ourselves below.
            start_tls=False,
            validate_certs=settings.verify_certificates,
            tls_context=tls_context if settings.verify_certificates else None,
            local_hostname=self._local_hostname,
        )
        where = f"{settings.host}:{settings.port}"
        self._connecting = client
        try:
            await client.connect()
            await _greet(client)  # connect() says EHLO only when AUTH needs it; we need the extensions
            if settings.security == "starttls":
                if not client.supports_extension("starttls"):
                    client.close()
                    raise DeliveryError(f"{where} does not offer STARTTLS, which [smtp] security = \"starttls\""
                                        " requires: nothing was sent in clear text", fatal=True)
                await client.starttls()
                await _greet(client)  # the extensions offered inside TLS are the ones that count
            if settings.username:
                await client.login(settings.username, settings.password.reveal())
        except aiosmtplib.SMTPAuthenticationError as exc:
            client.close()
            raise DeliveryError(f"{where} refused the login for {settings.username!r}: {exc.code} "
                                f"{one_line(exc.message)}", fatal=True) from exc
        except aiosmtplib.SMTPResponseException as exc:
            client.close()
            raise DeliveryError(f"{where} refused the connection: {exc.code} {one_line(exc.message)}") from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            raise DeliveryError(f"can't connect to {where}: {_reason(exc)}") from exc
        except BaseException:
            # Cancelled (the run's end cancels a stuck worker) after aiosmtplib's own connect()
            # returned: the socket is ours to close, or it stays open until the GC finds it.
            client.close()
            raise
        finally:
            self._connecting = None
        self._client = client
        # From here on the transactions are ours, pipelined or lock-step: we must know whether
        # a failure came before the message's final dot (safe to send again) or after it.
        assert isinstance(client.transport, asyncio.Transport)
        pipelined = self._use_pipelining and client.supports_extension("pipelining")
        self._session = PipelinedSession.take_over(client.transport, timeout=settings.timeout, pipelined=pipelined,
                                                   final_timeout=settings.final_reply_timeout)
        self._size_option = client.supports_extension("size")

    async def send(self, sender: str, recipient: str, message: bytes, *, gate: Awaitable[bool] | None = None,
                   dot_safe: bool = False, then: NextMessage | None = None) -> SendResult:
        """Send ``message`` (wire-ready bytes) from ``sender`` to ``recipient``.

        Connects first when needed. Returns a :class:`SendResult`; raises DeliveryError
        only for what would fail every recipient (no connection at all, sender refused).
        ``gate``, when given, is awaited before the message itself goes out (the envelope
        may go first); when it says False nothing is delivered (the transaction is
        abandoned by dropping the connection) and the result is ``withheld``. ``dot_safe``
        promises that no line starts with a dot (true of :func:`~newsletter.compose.personalise`
        output, signed or not), so the pipelined path need not look for one. ``then``
        (sender, recipient, message size) is the next message: on a pipelined connection
        its envelope (its own ``MAIL FROM``, which may differ from this one's) rides with
        this message's final dot, so that each message costs one round trip; the next
        :meth:`send` must be that message, same sender and recipient (any other starts
        afresh on a new connection). A callable
        ``then`` is asked for it only as the final dot goes out (and may say None: no next
        message), so that nothing is taken for a connection stalled before that.
        """
        if not self.connected:
            await self.connect()
        assert self._session is not None
        return await self._send_session(self._session, sender, recipient, message, gate, dot_safe, then)

    def _envelope(self, sender: str, recipient: str, size: int) -> bytes | None:
        if not (_ENVELOPE_ADDRESS.match(sender) and _ENVELOPE_ADDRESS.match(recipient)):
            return None
        option = f" SIZE={size + 3}" if self._size_option else ""
        return f"MAIL FROM:<{sender}>{option}\r\nRCPT TO:<{recipient}>\r\nDATA\r\n".encode("ascii")

    async def _send_session(self, session: PipelinedSession, sender: str, recipient: str, message: bytes,
                              gate: Awaitable[bool] | None, dot_safe: bool, then: NextMessage | None
                              ) -> SendResult:
        if not session.pipelined and gate is not None:
            # Lock-step gains nothing from overlapping the gate: ask first, and say nothing at all
            # to the server about a message that may not go.
            if not await gate:
                return SendResult("deferred", None, _WITHHELD)
            gate = None
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None and in_flight != (sender, recipient):
            # Not the message whose envelope went ahead: start afresh on a new connection.
            self.abort()
            await self.connect()
            assert self._session is not None
            session = self._session
            in_flight = None
        # An envelope that went ahead was built (and its addresses checked) as the previous `then`.
        envelope = None if in_flight else self._envelope(sender, recipient, len(message))
        if envelope is None and not in_flight:
            bad = recipient if _ENVELOPE_ADDRESS.match(sender) else sender
            return SendResult("failed", None, f"refusing an address that can't go in an SMTP command: {bad!r}")
        #: the (sender, recipient) whose envelope went out with the final dot
        riding: list[tuple[str, str]] = []

        def following() -> bytes:
            upcoming = then() if callable(then) else then
            if upcoming is None:
                return b""
            next_sender, next_recipient, size = upcoming
            ahead = self._envelope(next_sender, next_recipient, size)
            if ahead is None:
                return b""  # its address can't go in a command: its own send() refuses it
            riding.append((next_sender, next_recipient))
            return ahead

        try:
            replies = await session.transaction(envelope, message, gate, dot_safe=dot_safe,
                                                then=following if then is not None and session.pipelined else b"")
        except TimeoutError as exc:
            if session.awaiting_final:
                # The whole message went out and the server, still there, gave no verdict in
                # time: it may be busy taking it (RFC 1047's duplicate window). Sending it
                # again could deliver it twice, so it waits for --resend-uncertain.
                return self._after(SendResult("uncertain", None, f"no reply after the message was sent: "
                                                                 f"{_reason(exc)}", reconnect=True))
            return self._after(SendResult("deferred", None, _reason(exc), reconnect=True))
        except OSError as exc:
            # The server closed the connection without a final reply: a server that took the
            # message says so first (RFC 5321 4.1.1.4), so this one didn't: send it again.
            return self._after(SendResult("deferred", None, _reason(exc), reconnect=True))
        if replies.final is not None and riding:
            self._in_flight = riding[0]
        if replies.withheld:
            self.abort()  # after 354 only the connection's end cancels the message
            return SendResult("deferred", None, _WITHHELD, reconnect=True)
        if replies.mail.code != 250:
            result = classify_refusal(*replies.mail)
            if result.outcome == "failed":
                raise DeliveryError(f"the server refused the sender {sender}: {result.describe()}", fatal=True)
            return self._after(result)
        for reply in (replies.rcpt, replies.data):
            if reply.code not in (250, 251, 354):
                return self._after(classify_refusal(*reply))
        if replies.final is None or replies.final.code != 250:
            return self._after(classify_refusal(*(replies.final or Reply(451, "no reply to the end of DATA"))))
        return SendResult("sent", 250)

    def _after(self, result: SendResult) -> SendResult:
        if result.reconnect:
            self.abort()
        return result

    def interrupt(self) -> None:
        """Stop waiting for the server now (the run is stopping) and drop the connection.

        A send under way ends as a timeout would: ``uncertain`` when its message had gone
        out whole, ``deferred`` before that; a connection being opened fails.
        """
        if self._session is not None:
            self._session.interrupt()
        if self._connecting is not None:
            self._connecting.close()

    def abort(self) -> None:
        """Drop the connection without QUIT (after an error)."""
        self._in_flight = None
        if self._session is not None:
            self._session.abort()
            self._session = None
        if self._client is not None:
            self._client.close()
            self._client = None

    async def close(self) -> None:
        """QUIT politely, or just drop the connection when that fails."""
        if self._in_flight is not None:
            # An envelope went ahead and may have had its 354: only dropping the connection
            # is sure not to turn what follows into a message.
            self.abort()
        client, self._client = self._client, None
        session, self._session = self._session, None
        if session is not None:
            await session.quit()
        if client is None:
            return
        if session is not None:  # the transport was ours: aiosmtplib only forgets it
            client.close()
            return
        try:
            if client.is_connected:
                await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            pass
        finally:
            client.close()


async def _greet(client: aiosmtplib.SMTP) -> None:
    """EHLO (HELO for an old server that refuses it) unless the extensions are known already."""
    if client.esmtp_extensions:
        return
    try:
        await client.ehlo()
    except aiosmtplib.SMTPHeloError as exc:
        if exc.code not in (500, 502):
            raise  # a 4xx (busy, try later) is not "I don't know EHLO"
        await client.helo()  # an old server: no extensions, so lock-step and no SIZE


def _reason(exc: BaseException) -> str:
    if isinstance(exc, Interrupted):
        return str(exc)
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return "timed out"
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return "the server closed the connection"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return one_line(str(exc)) or type(exc).__name__
