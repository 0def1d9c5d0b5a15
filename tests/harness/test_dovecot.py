"""tests/harness/dovecot.py: a private Dovecot IMAP server, and the server behaviour the IMAP tests rely on.

It speaks IMAP over TLS (its certificate checked against ``ca_file``), STARTTLS or plain on
127.0.0.1, logs in the one static user, keeps mail in its own Maildir++ (a folder ``x`` is
``.x``), announces MOVE unless told not to, drops connections on request while staying up,
and stop() ends the master and everything it started.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from tests.harness.dovecot import PASSWORD, USER, DovecotServer

pytest_plugins = ["tests.harness.dovecot"]

MESSAGE = b"From: a@example.com\r\nSubject: one\r\n\r\nbody\r\n"


@pytest.mark.parametrize("security", ["tls", "starttls", "none"])
def test_serves_imap_and_keeps_mail_in_its_maildir(security: str) -> None:
    with DovecotServer(security=security) as server:  # type: ignore[arg-type]
        server.append("INBOX", MESSAGE)
        server.append("processed", MESSAGE.replace(b"one", b"two"))
        client = server.client()
        try:
            assert client.select_folder("INBOX")[b"EXISTS"] == 1
            assert client.has_capability("MOVE")
            assert sorted(name for _, _, name in client.list_folders()) == ["INBOX", "processed"]
        finally:
            client.logout()
        assert server.folder_messages("INBOX") == [MESSAGE.replace(b"\r\n", b"\n")]  # Dovecot stores LF
        assert server.folder_exists("processed")
        assert (server.maildir / ".processed" / "maildirfolder").exists()


@pytest.mark.slow  # ~6 s: Dovecot's master waits for the login process of the refused handshake at shutdown
def test_tls_certificate_is_checked_and_a_wrong_password_is_refused(dovecot: DovecotServer) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        IMAPClient(dovecot.host, dovecot.port, ssl=True, ssl_context=ssl.create_default_context(), timeout=10)
    assert dovecot.ca_file is not None
    context = ssl.create_default_context(cafile=str(dovecot.ca_file))
    client = IMAPClient(dovecot.host, dovecot.port, ssl=True, ssl_context=context, timeout=10)
    with pytest.raises(LoginError):
        client.login(USER, PASSWORD + "x")
    client.login(USER, PASSWORD)
    client.logout()


def test_without_move() -> None:
    with DovecotServer(security="none", without_move=True) as server:
        client = server.client()
        try:
            assert not client.has_capability("MOVE")
            assert client.has_capability("UIDPLUS")
        finally:
            client.logout()


def test_kill_sessions_drops_connections_and_the_server_stays_up(dovecot: DovecotServer) -> None:
    client = dovecot.client()
    client.select_folder("INBOX")
    assert dovecot.kill_sessions() == 1
    with pytest.raises((OSError, IMAPClient.AbortError)):
        client.noop()
    client.shutdown()
    again = dovecot.client()
    assert again.select_folder("INBOX")[b"EXISTS"] == 0
    again.logout()


def test_stop_ends_the_master_and_removes_its_directory() -> None:
    server = DovecotServer().start()
    pid, directory = server.pid, server.dir
    assert directory is not None and directory.is_dir()
    server.stop()
    assert not Path(f"/proc/{pid}").exists()
    assert not directory.exists()
