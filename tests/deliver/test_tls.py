"""Transport security: STARTTLS is required when configured, certificates are checked unless
turned off for one named host, and no secret ever shows in what a failing run prints."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from newsletter.config import SmtpSettings, load_settings
from newsletter.deliver.transport import SendResult, SmtpConnection
from newsletter.errors import ConfigError, DeliveryError
from tests.conftest import SEED_ISSUE
from tests.harness.smtpserver import Recorder, free_port
from tests.harness.tlsfiles import make_certificate

MESSAGE = b"Subject: tls\r\n\r\nhello\r\n"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


@contextmanager
def _server(*, starttls: tuple[Path, Path] | None) -> Iterator[tuple[Recorder, int]]:
    """A recording aiosmtpd on 127.0.0.1, offering STARTTLS with ``starttls``'s (cert, key) when given."""
    recorder = Recorder()
    port = free_port()
    options: dict[str, object] = {}
    if starttls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*starttls)
        options = {"tls_context": context, "require_starttls": True}
    controller = Controller(recorder, hostname="127.0.0.1", port=port, ready_timeout=10, **options)  # type: ignore[arg-type]
    controller.start()
    try:
        yield recorder, port
    finally:
        controller.stop()


@pytest.fixture
def starttls_server(certificate: tuple[Path, Path]) -> Iterator[tuple[Recorder, int]]:
    with _server(starttls=certificate) as running:
        yield running


@pytest.fixture
def plain_server() -> Iterator[tuple[Recorder, int]]:
    with _server(starttls=None) as running:
        yield running


def _send(settings: SmtpSettings) -> SendResult:
    async def send() -> SendResult:
        connection = SmtpConnection(settings)
        try:
            return await connection.send("a@example.com", "b@example.org", MESSAGE)
        finally:
            await connection.close()

    return asyncio.run(send())


def test_starttls_is_required_not_optional(plain_server: tuple[Recorder, int]) -> None:
    recorder, port = plain_server
    settings = SmtpSettings(port=port, security="starttls", timeout=5)
    with pytest.raises(DeliveryError, match="does not offer STARTTLS") as raised:
        _send(settings)
    assert raised.value.fatal  # a run stops: every message would fail the same way
    assert recorder.received() == [] and recorder.rcpts_accepted == []


def test_starttls_certificate_is_checked_then_trusted_by_ca_file(starttls_server: tuple[Recorder, int],
                                                                 certificate: tuple[Path, Path]) -> None:
    recorder, port = starttls_server
    settings = SmtpSettings(port=port, security="starttls", timeout=5)
    with pytest.raises(DeliveryError, match="certificate"):
        _send(settings)  # self-signed: not trusted by the system's CAs
    assert recorder.received() == []
    assert _send(replace(settings, ca_file=certificate[0])).outcome == "sent"
    assert [message.rcpt for message in recorder.received()] == ["b@example.org"]


def test_certificate_checks_are_off_only_for_the_named_host(starttls_server: tuple[Recorder, int]) -> None:
    recorder, port = starttls_server
    named = SmtpSettings(port=port, security="starttls", timeout=5, tls_skip_verify_for="127.0.0.1")
    assert not named.verify_certificates
    assert _send(named).outcome == "sent"
    # The same switch naming another host leaves the checks on for this one.
    other = replace(named, tls_skip_verify_for="relay.internal")
    assert other.verify_certificates
    with pytest.raises(DeliveryError, match="certificate"):
        _send(other)
    assert len(recorder.received()) == 1


def test_config_refuses_skip_verify_for_another_host(tmp_path: Path) -> None:
    config = tmp_path / "newsletter.toml"
    config.write_text('[smtp]\nhost = "smtp.example.com"\nsecurity = "starttls"\n'
                      'tls_skip_verify_for = "relay.internal"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="only for the host it names"):
        load_settings(config, environ={})
    config.write_text('[smtp]\nhost = "relay.internal"\nsecurity = "starttls"\n'
                      'tls_skip_verify_for = "relay.internal"\nca_file = "missing.pem"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="ca_file"):
        load_settings(config, environ={})


class _RefuseEveryone:
    """An authenticator that says no: the run fails at login, where a password could leak."""

    def __call__(self, server: object, session: object, envelope: object, mechanism: str,
                 auth_data: object) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        return AuthResult(success=False, handled=False)


def test_no_secret_appears_in_what_a_failing_run_prints(tmp_path: Path) -> None:
    password = "pw-Zq8-unique-7731"
    secret_key = "sk-Yt4-unique-9905-abcdefghijklmnop"
    recorder = Recorder()
    port = free_port()
    controller = Controller(recorder, hostname="127.0.0.1", port=port, ready_timeout=10,
                            authenticator=_RefuseEveryone(), auth_require_tls=False)
    controller.start()
    try:
        shutil.copytree(SEED_ISSUE.parent, tmp_path / "issues", dirs_exist_ok=True)
        (tmp_path / "newsletter.toml").write_text(
            f'[smtp]\nhost = "127.0.0.1"\nport = {port}\nusername = "editor"\ntimeout = 5\n', encoding="utf-8")
        (tmp_path / "people.csv").write_text("email,name\nreader@example.org,Reader\n", encoding="utf-8")
        env = {**os.environ, "NEWSLETTER_SMTP_PASSWORD": password, "NEWSLETTER_SECRET_KEY": secret_key}
        env.pop("NEWSLETTER_CONFIG", None)
        seed = f"issues/{SEED_ISSUE.name}"
        commands = [
            ["subscribers", "import", "people.csv"],
            ["dispatch", "--issue", seed, "--json"],
            ["dispatch", "--issue", seed],
            ["send-test", seed, "--to", "me@example.org"],
            ["status", "--json"],
            ["status"],
        ]
        runs = [subprocess.run([sys.executable, "-m", "newsletter", *command], cwd=tmp_path, env=env,
                               capture_output=True, text=True, check=False, timeout=60) for command in commands]
        everything = "\n".join(run.stdout + run.stderr for run in runs)
        assert runs[1].returncode == runs[2].returncode == 1, everything  # login refused: an error, not "sent"
        assert "refused the login for 'editor'" in everything
        assert json.loads(runs[1].stdout)["exit_code"] == 1 and json.loads(runs[4].stdout)
        for secret in (password, secret_key):
            assert secret not in everything
            assert secret.encode() not in (tmp_path / "newsletter.db").read_bytes()
        assert recorder.received() == []
    finally:
        controller.stop()


def test_a_database_url_password_never_shows(tmp_path: Path) -> None:
    """A PostgreSQL URL with a password (from the environment only) that fails: named, never revealed."""
    password = "dbpw-Kq2-unique-4410"
    port = free_port()  # nothing listens there
    env = {key: value for key, value in os.environ.items() if not key.startswith("NEWSLETTER_")}
    env["NEWSLETTER_DATABASE_URL"] = f"postgresql://news:{password}@127.0.0.1:{port}/news"
    done = subprocess.run([sys.executable, "-m", "newsletter", "status", "--json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "can't connect" in done.stderr and "postgresql://news:***@127.0.0.1" in done.stderr
    assert password not in done.stdout + done.stderr
    config = tmp_path / "newsletter.toml"
    config.write_text(f'[database]\nurl = "postgresql://news:{password}@db.example.com/news"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="NEWSLETTER_DATABASE_URL") as refused:
        load_settings(config, environ={})
    assert password not in str(refused.value)
