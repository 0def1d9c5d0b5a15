"""``subscribers add --pending`` and what ``dispatch`` does first (the outbox, the purge), through the CLI
(click's runner) against a real SMTP server on 127.0.0.1 and a real SQLite file."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from newsletter.cli.commands import main
from newsletter.config import load_settings
from newsletter.store.signups import SignupRequest, Signups
from newsletter.store.subscribers import Store, SubscriberRow
from newsletter.tokens import TokenSigner, split_keys
from tests.conftest import write_issue
from tests.harness.smtpserver import SmtpServer, free_port, running_server

KEY = "pending-test-key-0123456789"
CONFIG = """\
[sender]
from = "The Briefing <briefing@news.example.com>"
[smtp]
host = "127.0.0.1"
port = {port}
security = "none"
timeout = 10
[database]
path = "news.db"
[issues]
dir = "issues"
[dispatch]
retry_initial = 0.001
retry_max = 0.002
wait_for_retries = 0
[lists.briefing]
title = "The Daily Briefing"
welcome = "issues/welcome.md"
[lists.weekly]
title = "The Weekly"
"""


@pytest.fixture
def server() -> Iterator[SmtpServer]:
    yield from running_server()


@pytest.fixture
def workdir(tmp_path: Path, server: SmtpServer) -> Path:
    (tmp_path / "issues").mkdir()
    # A welcome issue with a send_at in the past, in the issues folder: dispatch must not send it to the list.
    write_issue(tmp_path / "issues", "# Welcome\n\nHello.\n", name="welcome.md",
                front="subject: Welcome\ndate: 2024-01-02\nsend_at: 2024-01-02T06:00:00Z\nlist: briefing\n")
    configure(tmp_path, server.port)
    return tmp_path


def configure(workdir: Path, port: int) -> None:
    (workdir / "newsletter.toml").write_text(CONFIG.format(port=port), encoding="utf-8")


def cli(workdir: Path, *args: str, key: str = KEY) -> Result:
    return CliRunner().invoke(main, ["--config", str(workdir / "newsletter.toml"), *args],
                              env={"NEWSLETTER_SECRET_KEY": key, "NEWSLETTER_DKIM_KEY_FILE": ""})


def memberships(workdir: Path) -> list[tuple[str, str, str]]:
    with Store.open(workdir / "news.db") as store:
        return [tuple(row) for row in store.query(
            "SELECT s.email, l.name, m.status FROM memberships m JOIN subscribers s ON s.id = m.subscriber_id"
            " JOIN lists l ON l.id = m.list_id ORDER BY s.email, l.name")]


def test_add_pending_sends_a_confirmation_and_keeps_them_pending(workdir: Path, server: SmtpServer) -> None:
    result = cli(workdir, "subscribers", "add", "Ann@Example.org", "--name", "Ann", "--list", "briefing", "--pending",
                 "--consent", "asked at the book fair")
    assert result.exit_code == 0, result.output
    assert result.stdout == "Ann@example.org: pending on list 'briefing'; confirmation email sent\n"
    (message,) = server.recorder.received()
    assert message.rcpt == "Ann@example.org"
    mail = message.parsed()
    assert mail["Subject"] == "Confirm your subscription to The Daily Briefing" and mail["List-Unsubscribe"] is None
    link = next(line for line in mail.get_body(("plain",)).get_content().splitlines()  # type: ignore[union-attr]
                if "/confirm/" in line)
    assert TokenSigner(split_keys(KEY)).verify_confirm(link.rsplit("/", 1)[1]) is not None
    assert memberships(workdir) == [("Ann@example.org", "briefing", "pending")]
    show = json.loads(cli(workdir, "subscribers", "show", "ann@example.org", "--json").stdout)
    (consent,) = show["consent"]
    assert (consent["list"], consent["method"], consent["source"], consent["confirmed_at"]) == \
        ("briefing", "cli", "asked at the book fair", None)
    # Within confirm_every_hours, another list joins the confirmation already sent: no second email.
    again = cli(workdir, "subscribers", "add", "ann@example.org", "--list", "weekly", "--pending")
    assert again.exit_code == 0, again.output
    assert "asks for it too (no new email)" in again.stdout
    assert len(server.recorder.received()) == 1


def test_add_pending_to_someone_on_the_list_sends_nothing(workdir: Path, server: SmtpServer) -> None:
    with Store.open(workdir / "news.db") as store:
        store.upsert_subscribers([SubscriberRow("bob@example.org")], list_name="briefing")
    result = cli(workdir, "subscribers", "add", "bob@example.org", "--list", "briefing", "--pending")
    assert result.exit_code == 0, result.output
    assert "already on list 'briefing'" in result.stdout
    assert server.recorder.received() == []


def test_add_pending_with_the_relay_away_exits_1_and_dispatch_sends_it_later(workdir: Path,
                                                                             server: SmtpServer) -> None:
    configure(workdir, free_port())
    result = cli(workdir, "subscribers", "add", "ann@example.org", "--list", "briefing", "--pending")
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: the confirmation to ann@example.org is queued but was not sent"
                           " (ann@example.org: deferred: can't connect to 127.0.0.1:"), line
    assert line.endswith("; `newsletter dispatch` sends it once the relay takes it"), line
    assert memberships(workdir) == [("ann@example.org", "briefing", "pending")]  # kept, with its email queued
    configure(workdir, server.port)
    result = cli(workdir, "dispatch")
    assert result.exit_code == 0, result.output
    assert "outbox: 1 sent, 0 deferred, 0 failed" in result.stderr.splitlines()
    assert [message.rcpt for message in server.recorder.received()] == ["ann@example.org"]


@pytest.mark.parametrize("args, message", [
    (["--field", "city=Leeds"], "--field can't go with --pending"),
    (["--list", "Not A List"], "list name"),
    (["--consent", "two\nlines"], "--consent"),
])
def test_add_pending_refuses_bad_input_and_stores_nothing(workdir: Path, server: SmtpServer, args: list[str],
                                                          message: str) -> None:
    result = cli(workdir, "subscribers", "add", "ann@example.org", "--pending", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert not (workdir / "news.db").exists() or memberships(workdir) == []
    assert server.recorder.received() == []


def test_add_pending_without_a_key_stores_nothing(workdir: Path, server: SmtpServer) -> None:
    result = cli(workdir, "subscribers", "add", "ann@example.org", "--list", "briefing", "--pending", key="")
    assert result.exit_code == 2, result.output
    assert "NEWSLETTER_SECRET_KEY" in result.stderr
    assert not (workdir / "news.db").exists() or memberships(workdir) == []


def test_dispatch_purges_then_flushes_the_outbox_one_line_each(workdir: Path, server: SmtpServer) -> None:
    now = dt.datetime.now(dt.UTC)
    with Store.open(workdir / "news.db") as store:
        signups = Signups(store, load_settings(workdir / "newsletter.toml").signup)
        old = signups.request(SignupRequest("old@example.org", ("briefing",), "form"), now=now - dt.timedelta(days=10))
        new = signups.request(SignupRequest("new@example.org", ("briefing",), "form"), now=now)
    assert old.status == new.status == "queued"
    result = cli(workdir, "dispatch")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[0].startswith("signups: purged 1 unconfirmed membership(s), 1 subscriber(s) left with nothing,"
                               " 1 expired confirmation(s)"), lines
    assert lines[1:] == ["outbox: 1 sent, 0 deferred, 0 failed", "nothing is due"]  # the welcome file isn't an issue
    assert [message.rcpt for message in server.recorder.received()] == ["new@example.org"]
    assert memberships(workdir) == [("new@example.org", "briefing", "pending")]
    again = cli(workdir, "dispatch")
    assert (again.exit_code, again.stderr) == (0, "nothing is due\n")
    as_json = json.loads(cli(workdir, "dispatch", "--json").stdout)
    assert as_json["outbox"] == {"sent": 0, "deferred": 0, "failed": 0, "uncertain": 0, "notes": []}
    assert as_json["purged"]["confirmations"] == 0 and as_json["exit_code"] == 0


def test_dispatch_with_the_relay_away_says_so_and_exits_3(workdir: Path, server: SmtpServer) -> None:
    with Store.open(workdir / "news.db") as store:
        Signups(store, load_settings(workdir / "newsletter.toml").signup).request(SignupRequest("ann@example.org", ("briefing",), "api"))
    configure(workdir, free_port())
    result = cli(workdir, "dispatch")
    assert result.exit_code == 3, result.output
    lines = result.stderr.splitlines()
    assert lines[0] == "outbox: 0 sent, 1 deferred, 0 failed"
    assert lines[1].startswith("outbox: stopped: can't connect to 127.0.0.1:")
    dry = cli(workdir, "dispatch", "--dry-run")  # a dry run sends nothing, the outbox's mail neither
    assert (dry.exit_code, dry.stderr) == (0, "nothing is due\n")
