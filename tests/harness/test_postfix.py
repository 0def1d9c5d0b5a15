"""tests/harness/postfix.py: a private Postfix relays to a test SMTP server and delivers the DSNs it makes.

A message with a VERP return path goes into the instance's smtpd; the relay (aiosmtpd) refuses
one recipient with 550 5.1.1 and another with 452 4.2.2 and takes the third. Postfix bounces
both refusals at once (the 4xx one because ``maximal_queue_lifetime = 0``) and delivers its
RFC 3464 reports into the bounce Maildir, addressed to the full VERP address. The system's own
Postfix files are never touched, and stop() ends the master and every daemon it started.
"""

from __future__ import annotations

import os
import smtplib
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.harness.postfix import BOUNCE_DOMAIN, PostfixServer
from tests.harness.smtpserver import SmtpServer

pytest_plugins = ["tests.harness.postfix"]

VERP = f"bounces+1a-2b-abcdefghijklm@{BOUNCE_DOMAIN}"


def send(server: PostfixServer, rcpts: list[str], *, sender: str = VERP, message_id: str = "<m1@news.test>") -> None:
    message = (f"From: The Briefing <briefing@news.test>\r\nTo: reader@example.com\r\nMessage-ID: {message_id}\r\n"
               "Subject: Issue 1\r\n\r\nHello.\r\n").encode()
    with smtplib.SMTP(server.host, server.port, timeout=30) as client:
        refused = client.sendmail(sender, rcpts, message)
    assert refused == {}  # Postfix takes them all; the refusals come later, by mail


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


def report_fields(message: EmailMessage) -> dict[str, str]:
    """The per-recipient fields of a DSN's message/delivery-status part (one recipient per report here)."""
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    status = next(part for part in message.walk() if part.get_content_type() == "message/delivery-status")
    blocks = status.get_payload()
    assert isinstance(blocks, list) and len(blocks) == 2  # per-message fields, then one recipient
    return {key.lower(): str(value) for key, value in blocks[1].items()}


def test_refusals_come_back_as_dsns_to_the_verp_address(relay: SmtpServer, postfix: PostfixServer) -> None:
    relay.recorder.fail_rcpt("gone@example.com", "550 5.1.1 <gone@example.com>: no such user")
    relay.recorder.fail_rcpt("full@example.com", "452 4.2.2 <full@example.com>: mailbox full")
    send(postfix, ["gone@example.com", "full@example.com", "ok@example.com"])

    files = postfix.wait_for_mail(2)
    postfix.wait_until_idle()
    assert len(postfix.maildir_files()) == 2, files  # one DSN per refused recipient, nothing else
    assert [(r.mail_from, r.rcpt) for r in relay.recorder.received()] == [(VERP, "ok@example.com")]

    by_recipient = {}
    for message in postfix.messages():
        assert message["Delivered-To"] == VERP
        assert message["X-Original-To"] == VERP
        assert message["To"] == VERP
        assert message["Return-Path"] == "<>"
        fields = report_fields(message)
        by_recipient[fields["final-recipient"]] = fields
        original = next(part for part in message.walk() if part.get_content_type() == "message/rfc822")
        assert original.get_payload(0)["Message-ID"] == "<m1@news.test>"
    gone, full = by_recipient["rfc822; gone@example.com"], by_recipient["rfc822; full@example.com"]
    assert (gone["action"], gone["status"]) == ("failed", "5.1.1")
    assert "550 5.1.1" in gone["diagnostic-code"]
    assert (full["action"], full["status"]) == ("failed", "4.2.2")
    assert "452 4.2.2" in full["diagnostic-code"]


def test_deferred_mail_stays_queued_until_flushed(relay: SmtpServer) -> None:
    # With a queue lifetime, a 4xx refusal is deferred (no DSN); postqueue -f retries it now.
    relay.recorder.fail_rcpt("busy@example.com", "451 4.3.0 try again")
    with PostfixServer(relay.port, settings={"maximal_queue_lifetime": "1d", "bounce_queue_lifetime": "1d"}) as server:
        send(server, ["busy@example.com"])
        wait_for(lambda: "status=deferred" in server.log_text(), "the first try to be deferred")
        assert len(server.queue_ids()) == 1
        assert server.maildir_files() == []
        server.flush()
        assert relay.recorder.wait_for(1)
        server.wait_until_idle()
        assert server.maildir_files() == []  # delivered on the retry: no DSN


def test_mail_for_the_bare_bounce_mailbox_lands_in_the_same_maildir(relay: SmtpServer, postfix: PostfixServer) -> None:
    send(postfix, [f"bounces@{BOUNCE_DOMAIN}", f"bounces+unsubscribe@{BOUNCE_DOMAIN}"], sender="reader@example.com")
    postfix.wait_for_mail(2)
    assert sorted(m["X-Original-To"] for m in postfix.messages()) == [
        f"bounces+unsubscribe@{BOUNCE_DOMAIN}", f"bounces@{BOUNCE_DOMAIN}"]
    assert relay.recorder.received() == []


def test_stop_ends_every_daemon_and_leaves_the_system_postfix_alone(relay: SmtpServer) -> None:
    system = [Path("/etc/postfix"), Path("/var/spool/postfix")]
    before = {path: path.stat().st_mtime_ns for path in system if path.exists()}
    server = PostfixServer(relay.port).start()
    master, directory = server.pid, server.dir
    assert directory is not None
    children = [pid for pid in _all_pids() if _parent(pid) == master]
    assert children  # qmgr, pickup, ... run as the master's children
    server.stop()
    assert not Path(f"/proc/{master}").exists() or _state(master) in ("Z", "X")
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or _state(pid) in ("Z", "X")
    assert not directory.exists()
    assert {path: path.stat().st_mtime_ns for path in system if path.exists()} == before


def _all_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _stat(pid: int) -> list[str]:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text.rsplit(")", 1)[1].split()


def _parent(pid: int) -> int:
    fields = _stat(pid)
    return int(fields[1]) if fields else 0


def _state(pid: int) -> str:
    fields = _stat(pid)
    return fields[0] if fields else "X"


@pytest.mark.skipif(os.geteuid() == 0, reason="only says what happens without root")
def test_needs_root() -> None:
    with pytest.raises(RuntimeError, match="needs root"):
        PostfixServer(25)
