"""Return paths (VERP) on the wire: each message's MAIL FROM names its delivery, signed; a real SMTP server records them."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from newsletter.config import SenderSettings, Settings, SmtpSettings
from newsletter.deliver.send_test import send_test
from newsletter.deliver.transport import SendResult, SmtpConnection
from newsletter.store.ledger import Ledger
from newsletter.store.subscribers import Store
from newsletter.tokens import ReturnPaths, SignedDelivery, split_keys
from tests.deliver.test_dispatch import KEY, SLUG, add_subscribers, make_settings, run
from tests.harness.smtpserver import SmtpServer, running_server

BOUNCES = "bounces@news.example.com"
MESSAGE = b"Subject: hi\r\n\r\nhello\r\n"


@pytest.fixture(params=["pipelined", "lock-step"])
def server(request: pytest.FixtureRequest) -> Iterator[SmtpServer]:
    for running in running_server():
        running.recorder.pipelining = request.param == "pipelined"
        yield running


def with_bounces(settings: Settings, **sender: str) -> Settings:
    return replace(settings, sender=replace(settings.sender, bounce_address=BOUNCES, **sender))


def deliveries(settings: Settings) -> dict[str, SignedDelivery]:
    """Each subscriber's address -> the (issue, subscriber) its delivery is, from the database."""
    with Store.open(settings.database.path) as store:
        record = Ledger(store).find_issue(SLUG)
        assert record is not None
        return {person.email: SignedDelivery(record.id, person.id) for person in store.subscribers()}


def test_each_message_goes_out_from_its_own_signed_return_path(tmp_path: Path, server: SmtpServer) -> None:
    """One connection, so the pipelined run sends every next envelope with the previous final dot:
    a riding envelope that carried the previous message's sender would not match the message
    it belongs to, and the connection would be dropped and opened again."""
    settings = with_bounces(make_settings(tmp_path, server.port, connections=1))
    emails = add_subscribers(settings, 60)
    before = server.recorder.connections  # the harness's own readiness probe
    report = run(settings)
    assert report.exit_code == 0, report  # type: ignore[attr-defined]
    received = server.recorder.received()
    assert sorted(message.rcpt for message in received) == sorted(emails)
    expected = deliveries(settings)
    paths = ReturnPaths(BOUNCES, split_keys(KEY))
    for message in received:
        delivery = expected[message.rcpt]
        assert paths.read(message.mail_from) == delivery, message.mail_from
        assert message.mail_from == paths.make(delivery.issue_id, delivery.subscriber_id)
        assert re.fullmatch(r"bounces\+[0-9a-z]+-[0-9a-z]+-[a-z2-7]{13}@news\.example\.com", message.mail_from)
        links = str(message.parsed()["List-Unsubscribe"])
        assert "<mailto:bounces+unsubscribe@news.example.com?subject=unsubscribe%20" in links, links
    assert len({message.mail_from for message in received}) == len(emails)
    assert server.recorder.connections == before + 1  # every riding envelope was the message's own


def test_several_connections_each_message_its_own_return_path(tmp_path: Path, server: SmtpServer) -> None:
    settings = with_bounces(make_settings(tmp_path, server.port, connections=4))
    add_subscribers(settings, 200)
    before = server.recorder.connections
    assert run(settings).exit_code == 0  # type: ignore[attr-defined]
    expected = deliveries(settings)
    paths = ReturnPaths(BOUNCES, split_keys(KEY))
    received = server.recorder.received()
    assert len(received) == 200
    assert all(paths.read(message.mail_from) == expected[message.rcpt] for message in received)
    assert server.recorder.connections == before + 4


def test_an_explicit_unsubscribe_mailto_still_wins(tmp_path: Path, server: SmtpServer) -> None:
    settings = with_bounces(make_settings(tmp_path, server.port), unsubscribe_mailto="out@news.example.com")
    add_subscribers(settings, 3)
    assert run(settings).exit_code == 0  # type: ignore[attr-defined]
    for message in server.recorder.received():
        assert message.mail_from.startswith("bounces+")
        assert "<mailto:out@news.example.com?subject=unsubscribe%20" in str(message.parsed()["List-Unsubscribe"])


def test_without_a_bounce_address_mail_from_is_the_from_address_as_before(tmp_path: Path, server: SmtpServer) -> None:
    settings = make_settings(tmp_path, server.port, connections=1)
    settings = replace(settings, sender=SenderSettings(reply_to="Desk <desk@news.example.com>"))
    add_subscribers(settings, 20)
    before = server.recorder.connections
    assert run(settings).exit_code == 0  # type: ignore[attr-defined]
    received = server.recorder.received()
    assert len(received) == 20
    assert {message.mail_from for message in received} == {"briefing@news.example.com"}
    for message in received:
        assert "<mailto:desk@news.example.com?subject=unsubscribe%20" in str(message.parsed()["List-Unsubscribe"])
    assert server.recorder.connections == before + 1


# --- the transport: a riding envelope has its own sender ----------------------------------


def test_the_next_envelope_rides_with_its_own_sender() -> None:
    """``then`` gives (sender, recipient, size): the envelope that goes with the final dot is that one's."""
    async def ride(port: int) -> list[SendResult]:
        connection = SmtpConnection(SmtpSettings(port=port, timeout=10))
        try:
            asked: list[tuple[str, str, int]] = []

            def following() -> tuple[str, str, int]:
                asked.append(("b+2@example.com", "r1@example.org", len(MESSAGE)))
                return asked[-1]

            first = await connection.send("b+1@example.com", "r0@example.org", MESSAGE, then=following)
            assert asked, "a pipelined connection asks for the next message as the final dot goes"
            second = await connection.send("b+2@example.com", "r1@example.org", MESSAGE,
                                           then=("b+3@example.com", "r2@example.org", len(MESSAGE)))
            third = await connection.send("b+3@example.com", "r2@example.org", MESSAGE)
            return [first, second, third]
        finally:
            await connection.close()

    for server in running_server():
        server.recorder.pipelining = True
        before = server.recorder.connections
        results = asyncio.run(ride(server.port))
        assert [result.outcome for result in results] == ["sent", "sent", "sent"]
        assert [(m.mail_from, m.rcpt) for m in server.recorder.received()] == [
            ("b+1@example.com", "r0@example.org"), ("b+2@example.com", "r1@example.org"),
            ("b+3@example.com", "r2@example.org")]
        assert server.recorder.connections == before + 1


@pytest.mark.parametrize("switch", ["sender", "recipient"])
def test_a_send_that_is_not_the_riding_envelope_starts_afresh(switch: str) -> None:
    """The envelope that went ahead must be the next send's own (sender and recipient): any other
    message would go under the wrong envelope, so the connection is dropped and a new one sends it."""
    async def mismatch(port: int) -> list[SendResult]:
        connection = SmtpConnection(SmtpSettings(port=port, timeout=10))
        try:
            first = await connection.send("b+1@example.com", "r0@example.org", MESSAGE,
                                          then=("b+2@example.com", "r1@example.org", len(MESSAGE)))
            sender, recipient = ("b+9@example.com", "r1@example.org") if switch == "sender" else \
                ("b+2@example.com", "r9@example.org")
            second = await connection.send(sender, recipient, MESSAGE)
            return [first, second]
        finally:
            await connection.close()

    for server in running_server():
        server.recorder.pipelining = True
        before = server.recorder.connections
        assert [result.outcome for result in asyncio.run(mismatch(server.port))] == ["sent", "sent"]
        expected = ("b+9@example.com", "r1@example.org") if switch == "sender" else ("b+2@example.com", "r9@example.org")
        assert [(m.mail_from, m.rcpt) for m in server.recorder.received()] == [
            ("b+1@example.com", "r0@example.org"), expected]
        assert server.recorder.connections == before + 2


# --- send-test -------------------------------------------------------------------------------


@pytest.mark.parametrize("bounce_address", [BOUNCES, ""])
def test_send_test_goes_out_from_the_bare_bounce_mailbox(tmp_path: Path, bounce_address: str) -> None:
    """A test is no delivery: no signed id, but a bounce of it still reaches the bounce mailbox."""
    for server in running_server():
        settings = make_settings(tmp_path, server.port)
        settings = replace(settings, sender=replace(settings.sender, bounce_address=bounce_address))
        results = send_test(settings.issues_dir / f"{SLUG}.md", ["me@example.com"], settings)
        assert [sent.result.outcome for sent in results] == ["sent"]
        (message,) = server.recorder.received()
        assert message.mail_from == (bounce_address or "briefing@news.example.com")
        mailto = "bounces+unsubscribe@news.example.com" if bounce_address else "briefing@news.example.com"
        assert f"<mailto:{mailto}?subject=unsubscribe%20test>" in str(message.parsed()["List-Unsubscribe"])
