"""A real SMTP server on 127.0.0.1 (aiosmtpd) that records what it receives and misbehaves on request.

Faults are injected on the server side, per recipient address:

- ``fail_rcpt(addr, "451 4.7.1 greylisted", ...)``: answer RCPT with these replies, one per try, then accept;
- ``fail_data(addr, "550 5.7.1 spam", ...)``: the same for the end of DATA;
- ``drop_in_data(addr, times)``: close the connection after the first line of the message body;
- ``stall_at_rcpt(addr)``: never answer RCPT for this address (the connection stays open, silent);
- ``late_then_silent(addr, seconds)``: keep the message, answer its final dot ``seconds`` late,
  then answer nothing more on that connection (not even QUIT; it stays open).

Every accepted message is kept as (mail from, recipient, bytes).
"""

from __future__ import annotations

import asyncio
import collections
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt: str
    data: bytes

    def parsed(self) -> EmailMessage:
        message = BytesParser(policy=policy.default).parsebytes(self.data)
        assert isinstance(message, EmailMessage)
        return message


class Recorder:
    """The handler: records accepted messages and plays the faults it was given."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[Received] = []
        self.rcpts_accepted: list[str] = []  # every RCPT answered 250, message or not
        self.rcpt_replies: dict[str, collections.deque[str]] = {}
        self.data_replies: dict[str, collections.deque[str]] = {}
        self.drops: collections.Counter[str] = collections.Counter()
        self.data_delay = 0.0
        self.pipelining = False  # advertise PIPELINING (RFC 2920) in the EHLO reply
        self.connections = 0
        self.data_started = threading.Event()
        self.accepted_event = threading.Condition(self.lock)
        self.stalled_rcpts: set[str] = set()
        self.late_finals: dict[str, float] = {}
        self.stalls = 0  # sessions that went silent on purpose so far

    def fail_rcpt(self, address: str, *replies: str) -> None:
        with self.lock:
            self.rcpt_replies.setdefault(address.lower(), collections.deque()).extend(replies)

    def fail_data(self, address: str, *replies: str) -> None:
        with self.lock:
            self.data_replies.setdefault(address.lower(), collections.deque()).extend(replies)

    def drop_in_data(self, address: str, times: int = 1) -> None:
        with self.lock:
            self.drops[address.lower()] += times

    def stall_at_rcpt(self, address: str) -> None:
        with self.lock:
            self.stalled_rcpts.add(address.lower())

    def late_then_silent(self, address: str, seconds: float) -> None:
        with self.lock:
            self.late_finals[address.lower()] = seconds

    async def _go_silent(self, session: Session) -> None:
        """Answer nothing more on this connection; ends when the client leaves or the server stops."""
        session.silent = True  # type: ignore[attr-defined]
        with self.lock:
            self.stalls += 1
        await asyncio.Event().wait()

    def take_drop(self, address: str) -> bool:
        with self.lock:
            if self.drops[address.lower()] > 0:
                self.drops[address.lower()] -= 1
                return True
            return False

    def _next(self, table: dict[str, collections.deque[str]], address: str) -> str | None:
        with self.lock:
            replies = table.get(address.lower())
            return replies.popleft() if replies else None

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            # aiosmtpd reads commands one line at a time, so pipelined commands just work.
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        if getattr(session, "silent", False):
            await self._go_silent(session)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if getattr(session, "silent", False):
            await self._go_silent(session)
        return "221 Bye"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        with self.lock:
            stalled = address.lower() in self.stalled_rcpts
        if stalled:
            await self._go_silent(session)
        reply = self._next(self.rcpt_replies, address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        with self.lock:
            self.rcpts_accepted.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_delay:
            await asyncio.sleep(self.data_delay)  # pacing for crash tests, never asserted on
        for rcpt in envelope.rcpt_tos:
            reply = self._next(self.data_replies, rcpt)
            if reply is not None:
                return reply
        content = envelope.original_content or b""
        with self.accepted_event:
            for rcpt in envelope.rcpt_tos:
                self.messages.append(Received(str(envelope.mail_from), rcpt, bytes(content)))
            self.accepted_event.notify_all()
            late = max((self.late_finals.pop(rcpt.lower(), 0.0) for rcpt in envelope.rcpt_tos), default=0.0)
        if late:
            await asyncio.sleep(late)  # the fault itself (a slow final reply), never asserted on
            session.silent = True  # type: ignore[attr-defined]  # the next command gets no answer
        return "250 2.0.0 OK queued"

    def wait_for(self, count: int, timeout: float = 30.0) -> bool:
        """Block until at least ``count`` messages were accepted (False on timeout)."""
        with self.accepted_event:
            return self.accepted_event.wait_for(lambda: len(self.messages) >= count, timeout=timeout)

    def by_recipient(self) -> collections.Counter[str]:
        with self.lock:
            return collections.Counter(message.rcpt.lower() for message in self.messages)

    def received(self) -> list[Received]:
        with self.lock:
            return list(self.messages)


class _FaultySMTP(SMTP):
    async def smtp_DATA(self, arg: str) -> None:
        recorder = self.event_handler
        envelope = self.envelope
        if isinstance(recorder, Recorder) and envelope is not None and envelope.rcpt_tos \
                and recorder.take_drop(envelope.rcpt_tos[0]):
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            await self._reader.readuntil(b"\r\n")
            assert self.transport is not None
            self.transport.close()
            return
        await super().smtp_DATA(arg)

    def connection_made(self, transport: Any) -> None:
        recorder = self.event_handler
        if isinstance(recorder, Recorder):
            with recorder.lock:
                recorder.connections += 1
        super().connection_made(transport)


class _Controller(Controller):
    def factory(self) -> SMTP:
        return _FaultySMTP(self.handler, **self.SMTP_kwargs)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class SmtpServer:
    """A running server: ``port``, ``recorder``; stop with :meth:`stop`."""

    def __init__(self) -> None:
        self.recorder = Recorder()
        self.port = free_port()
        self.controller = _Controller(
            self.recorder, hostname="127.0.0.1", port=self.port, data_size_limit=20_000_000,
            decode_data=False, ready_timeout=10,
        )

    def start(self) -> SmtpServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()


def running_server() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    try:
        yield server
    finally:
        server.stop()
