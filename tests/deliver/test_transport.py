"""SMTP replies become typed results; TLS is verified; no password goes out in clear."""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
import threading
import warnings
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from newsletter.config import Secret, SmtpSettings
from newsletter.deliver.transport import SendResult, SmtpConnection, classify_refusal
from newsletter.errors import DeliveryError
from tests.harness.smtpserver import Recorder, free_port
from tests.harness.tlsfiles import make_certificate


@pytest.mark.parametrize(("code", "text", "outcome", "bounced"), [
    (450, "4.2.1 mailbox busy", "deferred", False),
    (451, "4.7.1 greylisted", "deferred", False),
    (421, "4.3.2 shutting down", "deferred", False),
    (550, "5.1.1 <x@example.org>: Recipient address rejected: User unknown", "failed", True),
    (550, "5.1.10 null MX", "failed", True),
    (550, "5.7.1 message refused as spam", "failed", False),
    (554, "5.7.1 blocked by policy", "failed", False),
    (550, "No such user here", "failed", True),          # no enhanced code: the words decide
    (550, "Mailbox unavailable", "failed", True),
    (550, "Relaying denied", "failed", False),
    (552, "5.2.2 mailbox full", "failed", False),
    (553, "sorry, that domain isn't in my list of allowed rcpthosts", "failed", False),
])
def test_classify_refusal(code: int, text: str, outcome: str, bounced: bool) -> None:
    result = classify_refusal(code, text)
    assert (result.outcome, result.bounced) == (outcome, bounced)
    assert result.code == code
    assert result.reconnect == (code == 421)


def test_reply_text_is_one_line_and_bounded() -> None:
    result = classify_refusal(451, "first\r\nsecond " + "x" * 2000)
    assert "\n" not in result.text and "\r" not in result.text and len(result.text) <= 500


def test_password_never_goes_unencrypted_to_a_remote_host() -> None:
    with pytest.raises(DeliveryError, match="unencrypted"):
        SmtpConnection(SmtpSettings(host="smtp.example.com", security="none", username="u", password=Secret("p")))
    SmtpConnection(SmtpSettings(host="127.0.0.1", security="none", username="u", password=Secret("p")))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


def test_tls_certificates_are_verified(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    recorder = Recorder()
    port = free_port()
    controller = Controller(recorder, hostname="127.0.0.1", port=port, server_hostname="localhost",
                            ssl_context=server_context)
    controller.start()
    try:
        settings = SmtpSettings(host="127.0.0.1", port=port, security="tls", timeout=5)

        async def send(context: ssl.SSLContext | None) -> SendResult:
            connection = SmtpConnection(settings, tls_context=context)
            try:
                return await connection.send("a@example.com", "b@example.com", b"Subject: x\r\n\r\nhi\r\n")
            finally:
                await connection.close()

        with pytest.raises(DeliveryError, match="certificate"):
            asyncio.run(send(None))  # self-signed: refused by default
        trusting = ssl.create_default_context(cafile=str(cert))
        assert asyncio.run(send(trusting)).outcome == "sent"
        assert len(recorder.received()) == 1
    finally:
        controller.stop()


MESSAGES = [
    b"Subject: plain\r\n\r\nhello\r\n",
    b"Subject: dots\r\n\r\n.starts with a dot\r\n..two dots\r\nmiddle . dot\r\n.\r\nend\r\n",
    b"Subject: long\r\n\r\n" + b"x" * 990 + b"\r\n" + (b"y" * 70 + b"\r\n") * 1000,
]


async def _send_all(port: int, pipelining: bool, messages: list[bytes]) -> tuple[bool, list[SendResult]]:
    connection = SmtpConnection(SmtpSettings(port=port, timeout=10), pipelining=pipelining)
    try:
        results = [await connection.send("a@example.com", f"r{n}@example.org", message)
                   for n, message in enumerate(messages)]
        return connection.pipelining, results
    finally:
        await connection.close()


@pytest.mark.parametrize("advertised", [True, False])
def test_pipelined_and_lock_step_deliver_identical_bytes(advertised: bool) -> None:
    from tests.harness.smtpserver import running_server

    for server in running_server():
        server.recorder.pipelining = advertised
        used, results = asyncio.run(_send_all(server.port, True, MESSAGES))
        assert used is advertised  # pipelining only when the server offers it
        lock_used, lock_results = asyncio.run(_send_all(server.port, False, MESSAGES))
        assert lock_used is False
        assert [r.outcome for r in results + lock_results] == ["sent"] * 6
        received = server.recorder.received()
        assert [m.data for m in received[:3]] == [m.data for m in received[3:]] == MESSAGES


def test_pipelined_bytes_through_smtp_sink_match_lock_step(tmp_path: Path) -> None:
    from tests.harness.smtpsink import SmtpSink

    sink = SmtpSink(tmp_path / "sink")
    try:
        used, results = asyncio.run(_send_all(sink.port, True, MESSAGES[:2]))
        assert used  # smtp-sink offers PIPELINING
        asyncio.run(_send_all(sink.port, False, MESSAGES[:2]))
        dumps = sink.dumps()
    finally:
        sink.stop()
    assert [r.outcome for r in results] == ["sent", "sent"]
    bodies = sorted(dump.message.as_bytes() for dump in dumps)
    assert len(bodies) == 4 and bodies[0] == bodies[1] and bodies[2] == bodies[3]


def test_pipelined_refusals_are_classified_and_the_session_goes_on() -> None:
    from tests.harness.smtpserver import running_server

    for server in running_server():
        server.recorder.pipelining = True
        server.recorder.fail_rcpt("r0@example.org", "550 5.1.1 no such user")
        server.recorder.fail_data("r1@example.org", "451 4.3.0 try later")
        server.recorder.fail_rcpt("r2@example.org", "452 4.2.2 over quota")
        before = server.recorder.connections  # the controller's own start-up probe counts too
        used, results = asyncio.run(_send_all(server.port, True, [MESSAGES[0]] * 4))
        assert used
        assert [(r.outcome, r.code, r.bounced) for r in results] == [
            ("failed", 550, True), ("deferred", 451, False), ("deferred", 452, False), ("sent", 250, False),
        ]
        assert server.recorder.connections == before + 1  # RSET after each refusal, same connection
        assert [m.rcpt for m in server.recorder.received()] == ["r3@example.org"]


def test_pipelined_sender_refusal_stops_the_run() -> None:
    from tests.harness.smtpserver import running_server

    for server in running_server():
        server.recorder.pipelining = True

        async def refuse_mail(*_: object) -> str:
            return "553 5.7.1 sender not allowed"

        server.recorder.handle_MAIL = refuse_mail  # type: ignore[attr-defined]
        with pytest.raises(DeliveryError, match="refused the sender") as caught:
            asyncio.run(_send_all(server.port, True, [MESSAGES[0]]))
        assert caught.value.fatal
        assert server.recorder.received() == []


def test_next_envelope_rides_with_the_final_dot() -> None:
    """``then``: one round trip a message; refusals on either side of the ride keep their place."""
    from tests.harness.smtpserver import running_server

    for server in running_server():
        server.recorder.pipelining = True
        server.recorder.fail_data("r1@example.org", "554 5.7.1 no thanks")
        server.recorder.fail_rcpt("r2@example.org", "451 4.7.1 greylisted")
        messages = [MESSAGES[0], MESSAGES[1], MESSAGES[0], MESSAGES[2], MESSAGES[1]]

        async def ride(port: int, messages: list[bytes]) -> list[SendResult]:
            connection = SmtpConnection(SmtpSettings(port=port, timeout=10))
            results = []
            try:
                for n, message in enumerate(messages):
                    following = (("a@example.com", f"r{n + 1}@example.org", len(messages[n + 1])) if n + 1 < len(messages)
                                 else None)
                    results.append(await connection.send("a@example.com", f"r{n}@example.org", message,
                                                         then=following))
            finally:
                await connection.close()
            return results

        before = server.recorder.connections
        results = asyncio.run(ride(server.port, messages))
        assert [(r.outcome, r.code) for r in results] == [
            ("sent", 250), ("failed", 554), ("deferred", 451), ("sent", 250), ("sent", 250),
        ]
        assert server.recorder.connections == before + 1
        received = {m.rcpt: m.data for m in server.recorder.received()}
        assert received == {"r0@example.org": MESSAGES[0], "r3@example.org": MESSAGES[2],
                            "r4@example.org": MESSAGES[1]}


def test_a_different_message_after_a_ride_starts_afresh() -> None:
    from tests.harness.smtpserver import running_server

    for server in running_server():
        server.recorder.pipelining = True

        async def switch(port: int) -> list[SendResult]:
            connection = SmtpConnection(SmtpSettings(port=port, timeout=10))
            try:
                first = await connection.send("a@example.com", "r0@example.org", MESSAGES[0],
                                              then=("a@example.com", "r1@example.org", len(MESSAGES[0])))
                second = await connection.send("a@example.com", "other@example.org", MESSAGES[1])
                return [first, second]
            finally:
                await connection.close()

        assert [r.outcome for r in asyncio.run(switch(server.port))] == ["sent", "sent"]
        assert {m.rcpt for m in server.recorder.received()} == {"r0@example.org", "other@example.org"}


@pytest.mark.parametrize("advertised", [True, False])
def test_no_reply_after_the_final_dot_is_uncertain_and_the_next_send_reconnects(advertised: bool) -> None:
    """The reply timeout fires (the session's watchdog) after the whole message went out: the server
    may have it (here it does, later), so it is ``uncertain``, not deferred for a second copy."""
    from tests.harness.smtpserver import running_server

    async def scenario(port: int) -> tuple[SendResult, SendResult, int]:
        connection = SmtpConnection(SmtpSettings(port=port, timeout=0.5, final_reply_timeout=0.5),
                                    pipelining=True)
        before = server.recorder.connections
        try:
            stalled = await connection.send("a@example.com", "slow@example.org", MESSAGES[0])
            server.recorder.data_delay = 0.0
            after = await connection.send("a@example.com", "next@example.org", MESSAGES[0])
            return stalled, after, server.recorder.connections - before
        finally:
            await connection.close()

    for server in running_server():
        server.recorder.pipelining = advertised
        server.recorder.data_delay = 5.0
        stalled, after, connections = asyncio.run(scenario(server.port))
        assert stalled.outcome == "uncertain" and stalled.reconnect
        assert "timed out" in stalled.text, stalled.text
        assert after.outcome == "sent"
        assert connections == 2  # the stalled connection was dropped, not reused
        assert "next@example.org" in [m.rcpt for m in server.recorder.received()]


class _ScriptedServer:
    """A real TCP server speaking just enough SMTP, which goes silent at a chosen command.

    ``silent_at`` is "greeting" or a command: a task cancelled while it waits there
    (the run's end cancels its workers) must not leave the client's socket open.
    """

    def __init__(self, silent_at: str) -> None:
        self.silent_at = silent_at
        self.waiting = asyncio.Event()
        self.client_went = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        if self.silent_at == "greeting":
            await self._silent_until_the_client_goes(reader)
            return
        writer.write(b"220 ready\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == self.silent_at[:4].encode():
                await self._silent_until_the_client_goes(reader)
                return
            if verb in (b"EHLO", b"HELO"):
                writer.write(b"250-here\r\n250 PIPELINING\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go on\r\n")
                while await reader.readline() not in (b".\r\n", b""):
                    pass
                writer.write(b"250 queued\r\n")
            else:
                writer.write(b"250 ok\r\n")

    async def _silent_until_the_client_goes(self, reader: asyncio.StreamReader) -> None:
        self.waiting.set()
        await reader.read()
        self.client_went.set()

    def close(self) -> None:
        for writer in self._writers:
            writer.transport.abort()  # the server's own sockets closed at once (TLS: no shutdown to wait for)


@pytest.mark.parametrize("silent_at", ["greeting", "EHLO", "RCPT", "QUIT"])
def test_a_task_cancelled_while_the_server_is_silent_leaves_no_socket_open(silent_at: str) -> None:
    """The run's end cancels a worker that is stuck; its connection must be closed, not left to the GC.

    Before the fix a cancel during connect() or a transaction left the transport open, and a later
    garbage collection (in some other test) warned ``unclosed transport``.
    """
    async def scenario() -> None:
        script = _ScriptedServer(silent_at)
        server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        connection = SmtpConnection(SmtpSettings(host="127.0.0.1", port=port, timeout=600))

        async def use() -> None:
            await connection.send("editor@example.org", "reader@example.org", b"Subject: x\r\n\r\nhi\r\n")
            await connection.close()

        try:
            task = asyncio.create_task(use())
            await asyncio.wait_for(script.waiting.wait(), 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(connection.close(), 10)  # what the worker's `finally` does after a cancel
            # The server, still up, sees the client close its end (not only when the GC finds the socket).
            await asyncio.wait_for(script.client_went.wait(), 10)
        finally:
            script.close()
            server.close()
            await server.wait_closed()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        asyncio.run(scenario())
        gc.collect()
    unclosed = [str(warning.message) for warning in caught if issubclass(warning.category, ResourceWarning)]
    assert unclosed == []


class _QuietAfterQuitTlsServer:
    """A TLS SMTP server in a thread of its own that answers QUIT, then neither reads nor closes.

    A client that closes TLS politely sends close_notify and waits for the server's: here it
    never comes, for as long as the test wants (until :meth:`stop`).
    """

    def __init__(self, cert: Path, key: str | Path) -> None:
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(cert, key)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.quit_answered = threading.Event()
        self._release = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        raw, _ = self._listener.accept()
        with self._context.wrap_socket(raw, server_side=True) as connection:
            lines = connection.makefile("rb")
            connection.sendall(b"220 ready\r\n")
            while line := lines.readline():
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    connection.sendall(b"250-here\r\n250 PIPELINING\r\n")
                elif verb == b"DATA":
                    connection.sendall(b"354 go on\r\n")
                    while lines.readline() not in (b".\r\n", b""):
                        pass
                    connection.sendall(b"250 queued\r\n")
                elif verb == b"QUIT":
                    connection.sendall(b"221 bye\r\n")
                    self.quit_answered.set()
                    self._release.wait(60)
                    lines.close()
                    return
                else:
                    connection.sendall(b"250 ok\r\n")

    def stop(self) -> None:
        self._release.set()
        self._thread.join(10)
        self._listener.close()


def test_a_tls_connection_closed_after_quit_leaves_no_socket_open(certificate: tuple[Path, Path]) -> None:
    """The run's event loop ends right after the last QUIT: the socket must be closed by then.

    Before the fix the session closed a TLS transport with close(), which starts the TLS
    shutdown and closes the socket only when the server's close_notify comes (or 30 s later);
    the loop ending first left it open, and a later garbage collection warned ``unclosed
    transport`` in whichever test ran then (the test_tls flake).
    """
    cert, key = certificate
    server = _QuietAfterQuitTlsServer(cert, key)

    async def scenario() -> SendResult:
        settings = SmtpSettings(host="127.0.0.1", port=server.port, security="tls", timeout=10)
        connection = SmtpConnection(settings, tls_context=ssl.create_default_context(cafile=str(cert)))
        result = await connection.send("editor@example.org", "reader@example.org", b"Subject: x\r\n\r\nhi\r\n")
        await connection.close()
        return result

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            assert asyncio.run(scenario()).outcome == "sent"
            assert server.quit_answered.is_set()
            gc.collect()
    finally:
        server.stop()
    unclosed = [str(warning.message) for warning in caught if issubclass(warning.category, ResourceWarning)]
    assert unclosed == []
