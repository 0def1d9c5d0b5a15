"""SMTP transactions with PIPELINING (RFC 2920) on a connection someone else opened.

aiosmtplib connects, says EHLO, does STARTTLS or TLS and AUTH; then
:meth:`PipelinedSession.take_over` moves the established transport (TLS included) to
this protocol with :meth:`asyncio.Transport.set_protocol`. Each message then costs two
writes and two waits instead of four round trips:

1. ``MAIL FROM``, ``RCPT TO`` and ``DATA`` in one write, and their three replies read
   back in order, each one checked;
2. the message bytes and the final ``.`` in one write, then the final reply.

The bytes must be wire-ready (CRLF line ends, ending in CRLF); a line that starts with
a dot is stuffed here, though :func:`newsletter.compose.personalise` never makes one.
"""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import Awaitable, Callable
from typing import NamedTuple

__all__ = [
    "Interrupted",
    "PipelinedSession",
    "Reply",
    "TransactionReplies",
]


class Interrupted(TimeoutError):
    """A wait for the server cut short on purpose (the run is stopping): handled as a timeout would be."""


class Reply(NamedTuple):  # a tuple: made for every message, and cheap to make
    """One SMTP reply: the code and its text (lines joined with a space)."""

    code: int
    text: str


class TransactionReplies(NamedTuple):  # a tuple: made for every message, and cheap to make
    """The replies of one transaction; ``final`` is None when DATA was refused (or never reached)."""

    mail: Reply
    rcpt: Reply
    data: Reply
    final: Reply | None
    #: the gate said no after 354: the message was not sent, and the connection must be dropped
    withheld: bool = False


class PipelinedSession(asyncio.Protocol):
    """The SMTP client side of an established connection, one transaction at a time.

    Pipelined when the server offered PIPELINING (``pipelined``); otherwise the same
    transaction in lock-step, one command and one reply at a time.
    """

    def __init__(self, *, timeout: float | None, pipelined: bool = True, final_timeout: float | None = None) -> None:
        self.timeout = timeout
        #: how long the reply to a message's final dot may take (RFC 5321 4.5.3.2.6 suggests
        #: 10 minutes: the server may be scanning the message); default ``timeout``
        self.final_timeout = final_timeout if final_timeout is not None else timeout
        self.pipelined = pipelined
        #: the message and its final dot are out and its reply isn't in: if the connection
        #: fails now, the server may or may not have taken the message
        self.awaiting_final = False
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._lines: list[str] = []
        self._replies: collections.deque[Reply] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._wanted = 0
        self._lost: BaseException | None = None
        self._deadline = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self._writable = asyncio.Event()
        self._writable.set()

    @classmethod
    def take_over(cls, transport: asyncio.Transport, *, timeout: float | None, pipelined: bool = True,
                  final_timeout: float | None = None) -> PipelinedSession:
        """Make this protocol the receiver of ``transport`` (after EHLO, STARTTLS and AUTH)."""
        session = cls(timeout=timeout, pipelined=pipelined, final_timeout=final_timeout)
        session.transport = transport
        transport.set_protocol(session)
        return session

    # --- asyncio.Protocol --------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Collect whole replies (multi-line ones joined) and wake the waiter when enough arrived."""
        if self._buffer:  # the rest of a line that came in an earlier piece
            self._buffer += data
            data = bytes(self._buffer)
            self._buffer.clear()
        *lines, rest = data.split(b"\n")
        if rest:
            self._buffer += rest
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            self._lines.append(line[4:])
            if len(line) < 4 or line[3] != "-":  # "250 text" (or a bare "250") ends the reply
                try:
                    code = int(line[:3])
                except ValueError:
                    code = 0  # not SMTP: treated as a temporary failure by the caller
                self._replies.append(Reply(code, " ".join(self._lines).strip()))
                self._lines = []
        if self._waiter is not None and len(self._replies) >= self._wanted and not self._waiter.done():
            self._waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail whoever waits for a reply."""
        if self._lost is None:  # not after interrupt(): that reason stands
            self._lost = exc or ConnectionResetError("the server closed the connection")
        self._stop_watchdog()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(self._lost)
        self._writable.set()

    def pause_writing(self) -> None:
        """The transport's buffer is full: wait before writing more."""
        self._writable.clear()

    def resume_writing(self) -> None:
        """The transport's buffer drained."""
        self._writable.set()

    # --- the client side -------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether the connection is gone."""
        return self._lost is not None or self.transport is None or self.transport.is_closing()

    async def _write(self, data: bytes) -> None:
        if self._lost is not None:
            raise self._lost
        assert self.transport is not None
        self.transport.write(data)
        if not self._writable.is_set():
            await self._writable.wait()

    async def _read(self, count: int, timeout: float | None = None) -> list[Reply]:
        if len(self._replies) < count:
            if self._lost is not None:
                raise self._lost
            self._wanted = count
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            timeout = timeout if timeout is not None else self.timeout
            if timeout is None:
                self._deadline = math.inf
            else:
                self._deadline = loop.time() + timeout
                # The timer is moved later lazily, but never left later than this read's deadline:
                # a short command wait after a long final-reply wait must still end on time.
                watchdog = self._watchdog
                if watchdog is None or watchdog.when() > self._deadline:
                    if watchdog is not None:
                        watchdog.cancel()
                    self._watchdog = loop.call_at(self._deadline, self._check_deadline)
            try:
                await self._waiter
            finally:
                self._waiter = None
        return [self._replies.popleft() for _ in range(count)]

    def _check_deadline(self) -> None:
        """The watchdog: fail a wait that outlived its deadline, or sleep until the current one.

        One timer per session, moved forward lazily, instead of a timer armed and cancelled
        around every read (``asyncio.timeout``: ~5 µs, twice a message).
        """
        self._watchdog = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # nothing is waiting: the next read arms it again
        loop = waiter.get_loop()
        if loop.time() >= self._deadline:
            waiter.set_exception(TimeoutError("no reply from the SMTP server in time"))
        elif self._deadline != math.inf:  # a read with no timeout arms it again when it has one
            self._watchdog = loop.call_at(self._deadline, self._check_deadline)

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    async def transaction(self, envelope: bytes | None, message: bytes, gate: Awaitable[bool] | None = None, *,
                          dot_safe: bool = False, then: bytes | Callable[[], bytes] = b"") -> TransactionReplies:
        """Send one message: ``envelope`` is the ``MAIL``/``RCPT``/``DATA`` commands, ``message`` the bytes.

        ``envelope`` None means it went out already (as the ``then`` of the previous
        message): only its three replies are read. ``then`` is the next message's envelope,
        written together with this message's final dot when the message is sent (RFC 2920
        lets content lead a group), so its replies arrive with this message's final reply; a
        callable is called for it only then (after the gate), so that the next message is
        not taken while this one can still stall before its final dot.
        ``dot_safe`` says no line of ``message`` starts with a dot (so the ~25 µs search for
        one is skipped). ``gate`` is awaited after ``354`` and before the message; when it
        gives False the message is withheld and the caller must drop the connection.
        Raises ``TimeoutError`` or ``ConnectionError`` when the connection fails; after that
        the session can't be used again (:attr:`awaiting_final` then says whether the
        whole message had gone out). ``final`` is set only when ``then`` was written. Not
        pipelined, the envelope's commands go one at a time and ``then`` must be empty.
        """
        if envelope is not None and not self.pipelined:
            if then:
                raise ValueError("a lock-step session can't send the next envelope ahead")
            mail, rcpt, data = await self._lock_step(envelope)
        else:
            if envelope is not None:
                await self._write(envelope)
            mail, rcpt, data = await self._read(3)
        final: Reply | None = None
        if data.code == 354:
            if mail.code != 250 or rcpt.code not in (250, 251):
                # A server that says 354 after refusing the envelope gets an empty message
                # that it must refuse too; the message itself is never sent then.
                await self._write(b".\r\n")
                await self._read(1)
            else:
                if gate is not None:
                    try:
                        allowed = await gate
                    except BaseException:
                        self.abort()  # mid-DATA: only dropping the connection cancels the message
                        raise
                    if not allowed:
                        return TransactionReplies(mail, rcpt, data, None, withheld=True)
                if not dot_safe and (message.startswith(b".") or b"\n." in message):
                    message = _dot_stuffed(message)
                await self._write(message + b".\r\n" + (then() if callable(then) else then))
                self.awaiting_final = True
                (final,) = await self._read(1, self.final_timeout)
                self.awaiting_final = False
        # A refused envelope leaves the MAIL open: close it before the next one. (After the
        # final reply the transaction is over, and the next envelope may already be in.)
        if final is None and mail.code == 250:
            await self._write(b"RSET\r\n")
            await self._read(1)
        return TransactionReplies(mail, rcpt, data, final)

    async def _lock_step(self, envelope: bytes) -> tuple[Reply, Reply, Reply]:
        """MAIL, RCPT and DATA one at a time; after a refusal the rest are not sent (placeholder 503s)."""
        commands = envelope.split(b"\r\n")[:-1]
        if len(commands) != 3:
            raise ValueError("an envelope is MAIL, RCPT and DATA, each ending in CRLF")
        replies: list[Reply] = []
        for command, accepted in zip(commands, ((250,), (250, 251), (354,)), strict=True):
            await self._write(command + b"\r\n")
            (reply,) = await self._read(1)
            replies.append(reply)
            if reply.code not in accepted:
                break
        while len(replies) < 3:
            replies.append(Reply(503, "not sent: the command before it was refused"))
        return replies[0], replies[1], replies[2]

    async def quit(self) -> None:
        """Say QUIT and close, without waiting long for a server that doesn't answer."""
        if self.closed:
            return
        try:
            await self._write(b"QUIT\r\n")
            self.timeout = min(self.timeout or 5.0, 5.0)
            await self._read(1)
        except (OSError, TimeoutError):
            pass
        finally:
            self.abort()

    def interrupt(self) -> None:
        """Stop waiting for the server and drop the connection.

        The wait under way (or the next one) raises :class:`Interrupted`, a ``TimeoutError``:
        :attr:`awaiting_final` still tells whether the message had gone out.
        """
        if self._lost is None:
            self._lost = Interrupted("stopped waiting for the server: the run is stopping")
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(self._lost)
        self._writable.set()
        self.abort()

    def abort(self) -> None:
        """Close the connection now.

        ``transport.abort()``, not ``close()``: on TLS, close() starts the TLS shutdown and
        closes the socket only when the server's close_notify comes (or 30 s later); a run
        whose event loop ends first leaves the socket open. Nothing is left unsent here:
        after QUIT's reply the buffer is empty, and otherwise dropping what is buffered is
        the point (a message that must not become one).
        """
        self._stop_watchdog()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


def _dot_stuffed(message: bytes) -> bytes:
    """RFC 5321 4.5.2: a line that starts with ``.`` gets another one."""
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed
