"""The outbox against a real server on 127.0.0.1 (port 0): smtplib in, mailbox.Maildir and strict parsing out."""

from __future__ import annotations

import asyncio
import mailbox
import signal
import smtplib
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest

from newsletter.devtools.outbox import MAX_MESSAGE_BYTES, Outbox, serve_outbox
from newsletter.errors import ConfigError

SENDER = "briefing@news.example.com"
LONG_LINE = b"x" * 998  # the longest line RFC 5321 allows (1000 octets with CRLF)


def raw_message(body: bytes, *, subject: str = "Test issue") -> bytes:
    """A message as compose writes it: CRLF line ends, quoted-printable body with '=2E' for a leading dot."""
    head = (
        f"From: The Briefing <{SENDER}>\r\n"
        "To: Ann Reader <ann@example.org>\r\n"
        f"Subject: {subject}\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: text/plain; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body


BODY = (
    b"Hello Ann,\r\n"
    b"=2E starts this line, encoded as compose does it\r\n"
    b".a raw leading dot, dot-stuffed on the wire and unstuffed by the server\r\n"
    b"..two dots\r\n"
    b".\r\n"
    b"Caf=C3=A9 and a trailing space=20\r\n"
    b"\r\n"
    + LONG_LINE + b"\r\n"
    b"-- \r\n"
    b"The end.\r\n"
)


def send(outbox: Outbox, message: bytes, recipients: list[str], *, sender: str = SENDER) -> None:
    with smtplib.SMTP(outbox.host, outbox.port, timeout=30) as client:
        refused = client.sendmail(sender, recipients, message)
    assert refused == {}


def stored(outbox: Outbox) -> list[bytes]:
    """The bytes of every message in the Maildir, read through mailbox.Maildir."""
    box = mailbox.Maildir(outbox.maildir, create=False)
    return [box.get_bytes(key) for key in box.keys()]


def parse(data: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox", port=0) as running:
        yield running


def test_port_zero_binds_a_real_port_and_creates_the_maildir(outbox: Outbox) -> None:
    assert outbox.running and outbox.port != 0
    assert all((outbox.maildir / part).is_dir() for part in ("cur", "new", "tmp"))
    assert outbox.count() == 0
    with smtplib.SMTP(outbox.host, outbox.port, timeout=30) as client:
        code, _ = client.ehlo()
        features = client.esmtp_features
        too_big = client.mail(SENDER, [f"SIZE={MAX_MESSAGE_BYTES + 1}"])
    assert code == 250
    assert int(features["size"]) == MAX_MESSAGE_BYTES >= 10 * 1024 * 1024
    assert too_big[0] == 552
    assert "8bitmime" in features
    assert "smtputf8" not in features


def test_message_is_stored_byte_for_byte_with_trace_headers(outbox: Outbox) -> None:
    message = raw_message(BODY)
    send(outbox, message, ["ann@example.org"])

    assert outbox.count() == 1
    files = list((outbox.maildir / "new").iterdir())
    assert len(files) == 1 and not any((outbox.maildir / "cur").iterdir()) and not any((outbox.maildir / "tmp").iterdir())
    data = files[0].read_bytes()
    assert data == b"Return-Path: <briefing@news.example.com>\r\nDelivered-To: ann@example.org\r\n" + message
    assert stored(outbox) == [data]

    parsed = parse(data)
    assert parsed["Return-Path"] == f"<{SENDER}>"
    assert parsed["Delivered-To"] == "ann@example.org"
    assert parsed["Subject"] == "Test issue"
    text = parsed.get_content()
    assert ". starts this line" in text.splitlines()[1]
    assert "Café and a trailing space " in text
    assert LONG_LINE.decode() in text.splitlines()


def test_eight_bit_body_arrives_intact(outbox: Outbox) -> None:
    body = "Grüße aus Köln — “quoted”\r\n".encode()
    message = raw_message(body).replace(b"quoted-printable", b"8bit")
    with smtplib.SMTP(outbox.host, outbox.port, timeout=30) as client:
        client.sendmail(SENDER, ["ann@example.org"], message, mail_options=["BODY=8BITMIME"])
    [data] = stored(outbox)
    assert data.endswith(b"\r\n\r\n" + body)
    assert parse(data).get_content().splitlines() == ["Grüße aus Köln — “quoted”"]


def test_each_recipient_gets_a_file_of_its_own(outbox: Outbox) -> None:
    recipients = ["ann@example.org", "bob@example.net", "carol@example.com"]
    message = raw_message(BODY)
    send(outbox, message, recipients)

    assert outbox.count() == 3
    files = stored(outbox)
    assert sorted(parse(data)["Delivered-To"] for data in files) == recipients
    for data in files:
        head, _, rest = data.partition(b"\r\n")
        assert head == f"Return-Path: <{SENDER}>".encode()
        assert rest.split(b"\r\n", 1)[1] == message


def test_bounce_with_null_sender_has_empty_return_path(outbox: Outbox) -> None:
    send(outbox, raw_message(b"Bounce\r\n"), ["ann@example.org"], sender="")
    [data] = stored(outbox)
    assert data.startswith(b"Return-Path: <>\r\nDelivered-To: ann@example.org\r\n")


def test_concurrent_deliveries_from_20_threads(outbox: Outbox) -> None:
    clients = 20
    all_connected = threading.Barrier(clients, timeout=30)

    def deliver(index: int) -> None:
        with smtplib.SMTP(outbox.host, outbox.port, timeout=30) as client:
            client.ehlo()
            all_connected.wait()  # 20 open sessions, then all send at once
            client.sendmail(SENDER, [f"reader{index}@example.org"], raw_message(f"Message {index}\r\n".encode()))

    with ThreadPoolExecutor(max_workers=clients) as pool:
        for future in [pool.submit(deliver, index) for index in range(clients)]:
            future.result()

    assert outbox.count() == clients
    files = stored(outbox)
    assert len(set(files)) == clients
    for data in files:
        parsed = parse(data)
        index = parsed["Delivered-To"].removeprefix("reader").removesuffix("@example.org")
        assert parsed.get_content().splitlines() == [f"Message {index}"]
    assert sorted(parse(data)["Delivered-To"] for data in files) == sorted(
        f"reader{index}@example.org" for index in range(clients)
    )


def test_large_message(outbox: Outbox) -> None:
    line = b"y" * 74 + b"=\r\n"  # a soft-broken quoted-printable line
    body = line * (10 * 1024 * 1024 // len(line)) + b"end\r\n"
    message = raw_message(body)
    assert len(message) > 10 * 1024 * 1024
    send(outbox, message, ["ann@example.org"])
    [data] = stored(outbox)
    assert data.endswith(b"\r\n\r\n" + body)


def test_line_over_the_rfc_limit_is_refused_and_nothing_stored(outbox: Outbox) -> None:
    with smtplib.SMTP(outbox.host, outbox.port, timeout=30) as client:
        with pytest.raises(smtplib.SMTPDataError) as caught:
            client.sendmail(SENDER, ["ann@example.org"], raw_message(LONG_LINE + b"xx\r\n"))  # 1000 octets
        assert caught.value.smtp_code == 500
        client.sendmail(SENDER, ["ann@example.org"], raw_message(LONG_LINE + b"\r\n"))  # same session goes on
    [data] = stored(outbox)
    assert data.endswith(b"\r\n\r\n" + LONG_LINE + b"\r\n")


def test_failed_write_is_a_temporary_error_not_a_lost_message(outbox: Outbox) -> None:
    (outbox.maildir / "tmp").rmdir()  # the Maildir can no longer take a file
    with smtplib.SMTP(outbox.host, outbox.port, timeout=30) as client:
        with pytest.raises(smtplib.SMTPDataError) as caught:
            client.sendmail(SENDER, ["ann@example.org", "bob@example.net"], raw_message(b"Hi\r\n"))
    assert caught.value.smtp_code == 451
    assert b"Can't store the message" in caught.value.smtp_error
    assert outbox.count() == 0


def test_port_in_use_is_a_one_line_config_error(outbox: Outbox, tmp_path: Path) -> None:
    second = Outbox(tmp_path / "second", port=outbox.port)
    with pytest.raises(ConfigError) as caught:
        second.start()
    message = str(caught.value)
    assert message == message.strip() and "\n" not in message
    assert f"127.0.0.1:{outbox.port}" in message and "already in use" in message
    assert isinstance(caught.value.__cause__, OSError)
    assert not second.running
    send(outbox, raw_message(b"Still serving\r\n"), ["ann@example.org"])  # the first one is untouched
    assert outbox.count() == 1


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "192.0.2.1"])
def test_non_loopback_host_is_refused(tmp_path: Path, host: str) -> None:
    with pytest.raises(ConfigError, match="only listens on a loopback address") as caught:
        Outbox(tmp_path / "outbox", host=host, port=0).start()
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "outbox").exists()


@pytest.mark.parametrize("host", ["localhost", "::1", "127.0.0.2"])
def test_other_loopback_hosts_are_accepted(tmp_path: Path, host: str) -> None:
    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    outbox = Outbox(tmp_path / "outbox", host=host, port=0)
    try:
        outbox.start()
    except ConfigError as exc:  # e.g. a container without an IPv6 loopback
        if "assign requested address" in str(exc):
            pytest.skip(str(exc))
        raise
    try:
        send(outbox, raw_message(b"Hi\r\n"), ["ann@example.org"])
        assert outbox.count() == 1
    finally:
        outbox.stop()


def test_remote_host_when_explicitly_allowed(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox", host="0.0.0.0", port=0, allow_remote=True) as outbox:
        with smtplib.SMTP("127.0.0.1", outbox.port, timeout=30) as client:
            client.sendmail(SENDER, ["ann@example.org"], raw_message(b"Hi\r\n"))
        assert outbox.count() == 1


@pytest.mark.parametrize("port", [-1, 65536])
def test_port_out_of_range(tmp_path: Path, port: int) -> None:
    with pytest.raises(ConfigError, match="from 0 to 65535"):
        Outbox(tmp_path / "outbox", port=port).start()


def test_a_directory_that_is_not_a_maildir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ConfigError, match="isn't a Maildir"):
        Outbox(tmp_path, port=0).start()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_stop_disconnects_clients_frees_the_port_and_restart_keeps_the_mail(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox", port=0)
    with outbox:
        send(outbox, raw_message(b"First\r\n"), ["ann@example.org"])
        first_port = outbox.port
        connected = smtplib.SMTP(outbox.host, outbox.port, timeout=30)
        connected.ehlo()
    with connected, pytest.raises(smtplib.SMTPServerDisconnected):
        connected.noop()
    assert not outbox.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", first_port), timeout=30).close()
    outbox.stop()  # a second stop is harmless

    with outbox:
        send(outbox, raw_message(b"Second\r\n"), ["ann@example.org"])
        assert outbox.count() == 2
    assert sorted(parse(data).get_content().strip() for data in stored(outbox)) == ["First", "Second"]


def test_start_twice_is_refused(outbox: Outbox) -> None:
    with pytest.raises(RuntimeError, match="already running"):
        outbox.start()
    assert outbox.running


@pytest.mark.asyncio
async def test_async_context_manager(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "outbox", port=0) as outbox:
        assert outbox.running
        await asyncio.gather(
            *(asyncio.to_thread(send, outbox, raw_message(f"Async {i}\r\n".encode()), ["ann@example.org"]) for i in range(5))
        )
        assert outbox.count() == 5
    assert not outbox.running


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_outbox_runs_until_a_signal_and_stops_cleanly(tmp_path: Path, signum: signal.Signals) -> None:
    before = signal.getsignal(signum)
    seen: list[Outbox] = []

    def ready(outbox: Outbox) -> None:
        seen.append(outbox)
        send(outbox, raw_message(b"Served\r\n"), ["ann@example.org"])
        signal.raise_signal(signum)

    serve_outbox(tmp_path / "outbox", port=0, ready=ready)  # returns instead of raising

    [outbox] = seen
    assert not outbox.running and outbox.port != 0
    assert outbox.count() == 1
    assert signal.getsignal(signum) is before
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", outbox.port), timeout=30).close()


def test_serve_outbox_stops_on_keyboard_interrupt(tmp_path: Path) -> None:
    seen: list[Outbox] = []

    def ready(outbox: Outbox) -> None:
        seen.append(outbox)
        raise KeyboardInterrupt

    serve_outbox(tmp_path / "outbox", port=0, ready=ready)
    assert len(seen) == 1 and not seen[0].running


def test_serve_outbox_refuses_remote_and_restores_handlers(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(ConfigError, match="loopback"):
        serve_outbox(tmp_path / "outbox", host="0.0.0.0", port=0)
    assert signal.getsignal(signal.SIGTERM) is before


def test_serve_outbox_port_in_use(outbox: Outbox, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"127.0.0.1:{outbox.port}: the port is already in use"):
        serve_outbox(tmp_path / "second", port=outbox.port)


def test_serve_outbox_lets_other_errors_of_ready_through_after_stopping(tmp_path: Path) -> None:
    seen: list[Outbox] = []

    def ready(outbox: Outbox) -> None:
        seen.append(outbox)
        raise ValueError("printing failed")

    with pytest.raises(ValueError, match="printing failed"):
        serve_outbox(tmp_path / "outbox", port=0, ready=ready)
    assert not seen[0].running


def test_serve_outbox_needs_the_main_thread(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            serve_outbox(tmp_path / "outbox", port=0)
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(errors) == 1 and "main thread" in str(errors[0])
