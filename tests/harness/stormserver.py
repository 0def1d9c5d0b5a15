"""A capturing SMTP server on 127.0.0.1 that misbehaves at random, on purpose.

It speaks real SMTP (EHLO with PIPELINING and SIZE, MAIL, RCPT, DATA, RSET, NOOP, QUIT; the
replies of pipelined commands come back in order) and keeps every message it accepts. With
``fault_rate`` > 0, each command (and the greeting, and the end of each message) fails at
random in one of these ways, as real relays do under load:

- ``421``: "421 4.3.2" and the connection closed;
- ``451`` / ``452``: a temporary refusal of that command; the session goes on;
- ``stall``: no reply for longer than the client's timeout, then the connection closed. At
  the end of a message the server has taken the message first (it is kept), then stalls:
  the classic case where the client can't know (RFC 1047);
- ``drop``: in the middle of a message's data, the connection closed; nothing kept.

A fault never happens twice in a row on one connection's command, so that the client can
always make progress. Everything is counted in :attr:`StormServer.faults`. The server runs
its own event loop in a thread; :meth:`StormServer.stop` ends it.
"""

from __future__ import annotations

import asyncio
import collections
import random
import threading
from dataclasses import dataclass, field

FAULTS = ("421", "451", "452", "stall", "drop")


@dataclass
class Delivered:
    """One accepted message: the envelope recipient and the bytes (dot-stuffing removed)."""

    rcpt: str
    data: bytes


@dataclass
class StormServer:
    """Start with :meth:`start`; ``port`` is set then."""

    fault_rate: float = 0.0
    stall_seconds: float = 1.0
    seed: int = 0
    #: advertise PIPELINING (RFC 2920); without it the client must go command by command
    pipelining: bool = True
    #: keep each message's bytes (False: only who got one, for runs of many thousands)
    keep_data: bool = True
    port: int = 0
    delivered: list[Delivered] = field(default_factory=list)
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    connections: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.Server | None = None
    _thread: threading.Thread | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _random: random.Random = field(default_factory=random.Random)

    def start(self) -> StormServer:
        self._random.seed(self.seed)
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._session, "127.0.0.1", 0, limit=1 << 20)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="storm-smtp", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the storm server did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.close()
            sessions = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in sessions:
                task.cancel()
            await asyncio.gather(*sessions, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        loop.close()
        self._loop = None

    def set_fault_rate(self, rate: float) -> None:
        """Calm the storm (0) or stir it, between runs."""
        with self._lock:
            self.fault_rate = rate

    def by_recipient(self) -> collections.Counter[str]:
        """How many messages each recipient got."""
        with self._lock:
            return collections.Counter(message.rcpt for message in self.delivered)

    # --- the server side ------------------------------------------------------------------

    def _fault(self, choices: tuple[str, ...], last: list[bool], where: str = "") -> str | None:
        with self._lock:
            if last[0] or self.fault_rate <= 0 or self._random.random() >= self.fault_rate:
                last[0] = False
                return None
            fault = self._random.choice(choices)
            self.faults[f"{fault} {where}".strip()] += 1
        last[0] = True
        return fault

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
        self._writers.add(writer)
        last = [False]  # the previous command faulted: the next one doesn't

        async def reply(text: str) -> None:
            writer.write(text.encode("ascii") + b"\r\n")
            await writer.drain()

        async def close() -> None:
            writer.close()

        async def stall() -> None:
            await asyncio.sleep(self.stall_seconds)
            writer.close()

        try:
            greeting_fault = self._fault(("421", "stall"), last, "at greeting")
            if greeting_fault == "421":
                await reply("421 4.3.2 storm.example busy, try later")
                return await close()
            if greeting_fault == "stall":
                return await stall()
            await reply("220 storm.example ESMTP")
            sender: str | None = None
            recipients: list[str] = []
            while True:
                line = await reader.readline()
                if not line:
                    return
                command = line.rstrip(b"\r\n").decode("ascii", "replace")
                verb = command[:4].upper()
                if verb == "QUIT":
                    await reply("221 2.0.0 bye")
                    return await close()
                fault = self._fault(("421", "451", "452", "stall"), last) if verb in (
                    "EHLO", "HELO", "MAIL", "RCPT", "DATA") else None
                if fault == "421":
                    await reply("421 4.3.2 storm: closing")
                    return await close()
                if fault == "stall":
                    return await stall()
                if fault in ("451", "452"):
                    await reply(f"{fault} 4.3.0 storm: try again later")
                    if verb == "DATA":
                        sender, recipients = None, []
                    continue
                if verb == "EHLO":
                    sender, recipients = None, []
                    offer = "250-PIPELINING\r\n" if self.pipelining else ""
                    await reply(f"250-storm.example\r\n{offer}250-SIZE 50000000\r\n250 8BITMIME")
                elif verb == "HELO":
                    await reply("250 storm.example")
                elif verb == "MAIL":
                    sender, recipients = command[10:].split(">", 1)[0].lstrip("<"), []
                    await reply("250 2.1.0 ok")
                elif verb == "RCPT":
                    if sender is None:
                        await reply("503 5.5.1 MAIL first")
                        continue
                    recipients.append(command[8:].split(">", 1)[0].lstrip("<").lower())
                    await reply("250 2.1.5 ok")
                elif verb == "DATA":
                    if sender is None or not recipients:
                        await reply("503 5.5.1 RCPT first")
                        continue
                    await reply("354 go ahead")
                    drop = self._fault(("drop",), last, "in data")
                    data = await self._read_data(reader, drop=drop is not None)
                    if data is None:  # dropped half-way: nothing kept
                        return await close()
                    end_fault = self._fault(("421", "451", "stall"), last, "after data")
                    if end_fault in (None, "stall"):
                        with self._lock:  # taken: kept before the reply, as a real queue does
                            self.delivered.extend(Delivered(rcpt, data) for rcpt in recipients)
                    sender, recipients = None, []
                    if end_fault == "stall":
                        return await stall()
                    if end_fault == "421":
                        await reply("421 4.3.2 storm: closing")
                        return await close()
                    if end_fault == "451":
                        await reply("451 4.3.0 storm: message not taken, try again")
                        continue
                    await reply("250 2.0.0 queued")
                elif verb == "RSET":
                    sender, recipients = None, []
                    await reply("250 2.0.0 ok")
                elif verb == "NOOP":
                    await reply("250 2.0.0 ok")
                else:
                    await reply("502 5.5.2 not implemented")
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            if not writer.is_closing():
                writer.close()

    async def _read_data(self, reader: asyncio.StreamReader, *, drop: bool) -> bytes | None:
        if drop:
            for _ in range(3):  # a few lines of the message, then the connection goes
                if not await reader.readline():
                    break
            return None
        try:
            body = await reader.readuntil(b"\r\n.\r\n")
        except asyncio.IncompleteReadError:
            return None
        body = body[:-3]  # the final ".\r\n"; the CRLF before it ends the last line
        if not self.keep_data:
            return b""
        unstuffed = body.replace(b"\r\n..", b"\r\n.")
        return unstuffed[1:] if unstuffed.startswith(b"..") else unstuffed
