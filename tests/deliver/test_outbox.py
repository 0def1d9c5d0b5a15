"""The outbox end to end: confirmation emails and welcome issues through a real SMTP server on 127.0.0.1
(aiosmtpd, faults injected on its side), the store on an SQLite file and on a real PostgreSQL server.

Every message is parsed with the strict policy, its DKIM signature verified with dkimpy, and the
confirmation link taken from the message itself.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import dkim  # type: ignore[import-untyped]
import pytest

from newsletter.compose.dkim import generate_key
from newsletter.config import (
    DatabaseSettings,
    DispatchSettings,
    DkimSettings,
    ListSettings,
    Secret,
    SenderSettings,
    Settings,
    SmtpSettings,
)
from newsletter.deliver.outbox import send_outbox_now
from newsletter.errors import ConfigError
from newsletter.store.signups import SignupRequest, Signups
from newsletter.store.subscribers import Store
from newsletter.tokens import TokenSigner, split_keys
from tests.conftest import write_issue
from tests.harness.smtpserver import Received, SmtpServer, free_port, running_server

pytest_plugins = ["tests.harness.pgserver"]

KEY = "outbox-test-key-0123456789abcdef"
SELECTOR = "nl2026"
DOMAIN = "news.example.com"
STRICT = policy.default.clone(raise_on_defect=True)
NOW = dt.datetime.now(dt.UTC)
WELCOME = """\
---
subject: "Welcome to The Daily Briefing"
date: 2024-01-02
preheader: "What to expect, and when"
---
# Welcome, {{ name | reader }}

Every weekday morning, the news in five minutes.
"""


@dataclasses.dataclass(frozen=True)
class Dkim:
    path: Path
    record: str


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory: pytest.TempPathFactory) -> Dkim:
    path = tmp_path_factory.mktemp("dkim") / "dkim.pem"
    return Dkim(path, generate_key(path))


@pytest.fixture
def server() -> Iterator[SmtpServer]:
    yield from running_server()


@pytest.fixture
def settings(tmp_path: Path, database: str | Path, server: SmtpServer, dkim_key: Dkim) -> Settings:
    issues = tmp_path / "issues"
    issues.mkdir()
    welcome = write_issue(issues, WELCOME.split("---\n", 2)[2], front=WELCOME.split("---\n", 2)[1], name="welcome.md")
    return Settings(
        sender=SenderSettings(reply_to=f"editors@{DOMAIN}", bounce_address=f"bounces@{DOMAIN}"),
        smtp=SmtpSettings(port=server.port, timeout=10),
        database=DatabaseSettings(database) if isinstance(database, Path) else DatabaseSettings(url=database),
        dispatch=DispatchSettings(retry_initial=60, retry_max=600, give_up_after_hours=24),
        dkim=DkimSettings(selector=SELECTOR, domain=DOMAIN),
        lists=(ListSettings("briefing", "The Daily Briefing", "The day's news in five minutes.", welcome),
               ListSettings("weekly", "The Weekly")),
        issues_dir=issues,
        secret_key=Secret(KEY),
        dkim_key_file=dkim_key.path,
    )


def sign_up(settings: Settings, email: str, *lists: str, name: str = "", now: dt.datetime | None = None) -> int:
    with Store.open(settings.database.location) as store:
        outcome = Signups(store, settings.signup).request(
            SignupRequest(email, lists or ("briefing",), "form", name=name, source="https://example.org/join",
                          ip="203.0.113.7"), now=now)
    assert outcome.status == "queued" and outcome.confirmation_id is not None, outcome
    return outcome.confirmation_id


def confirm(settings: Settings, confirmation_id: int) -> str:
    welcome_lists = [item.name for item in settings.lists if item.welcome is not None]
    with Store.open(settings.database.location) as store:
        return Signups(store, settings.signup).confirm(confirmation_id, welcome_lists=welcome_lists).status


def row(settings: Settings, table: str, row_id: int) -> dict[str, object]:
    with Store.open(settings.database.location) as store:
        found = store.query(f"SELECT status, attempts, message_id, last_error, next_attempt_at FROM {table}"
                            " WHERE id = ?", (row_id,))
    return dict(zip(("status", "attempts", "message_id", "last_error", "next_attempt_at"), found[0], strict=True))


def parsed(message: Received) -> EmailMessage:
    result = BytesParser(policy=STRICT).parsebytes(message.data)
    assert isinstance(result, EmailMessage) and not result.defects
    return result


def verifies(data: bytes, record: str) -> bool:
    name = f"{SELECTOR}._domainkey.{DOMAIN}.".encode("ascii")
    return bool(dkim.verify(data, dnsfunc=lambda qname, timeout=5: record.encode("ascii") if qname == name else None))


def confirm_links(mail: EmailMessage) -> tuple[str, list[str]]:
    """The link of the text part (the line after "Confirm your subscription:") and every confirm link of the HTML."""
    text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    lines = text.splitlines()
    link = lines[lines.index("Confirm your subscription:") + 1]
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    return link, re.findall(r'href="([^"]*/confirm/[^"]*)"', html)


# --- the confirmation email --------------------------------------------------------------------


def test_the_confirmation_arrives_strictly_parsed_signed_and_its_link_confirms(settings: Settings, server: SmtpServer,
                                                                               dkim_key: Dkim) -> None:
    confirmation = sign_up(settings, "ann@example.org", "briefing", "weekly")
    summary = send_outbox_now(settings, [confirmation])
    assert (summary.sent, summary.deferred, summary.failed, summary.notes) == (1, 0, 0, [])
    (message,) = server.recorder.received()
    assert (message.mail_from, message.rcpt) == (f"bounces@{DOMAIN}", "ann@example.org")  # the bare bounce mailbox
    mail = parsed(message)
    assert mail["From"] == f"The Briefing <briefing@{DOMAIN}>" and mail["To"] == "ann@example.org"
    assert mail["Reply-To"] == f"editors@{DOMAIN}"
    assert mail["Subject"] == "Confirm your subscription to The Briefing"
    assert mail["Auto-Submitted"] == "auto-generated"
    for name in ("List-Id", "List-Unsubscribe", "List-Unsubscribe-Post"):
        assert mail[name] is None, f"{name}: a confirmation is not a list's message"
    assert verifies(message.data, dkim_key.record)
    assert not verifies(message.data.replace(b"The Daily Briefing", b"The Daily Phishing", 1), dkim_key.record)
    body = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "The Daily Briefing" in body and "The Weekly" in body and "ann@example.org" in body
    link, html_links = confirm_links(mail)
    assert set(html_links) == {link}
    assert link.startswith("https://news.example.com/confirm/")
    token = TokenSigner(split_keys(KEY)).verify_confirm(link.rsplit("/", 1)[1])
    assert token is not None and token.confirmation_id == confirmation
    assert token.expires == (NOW + dt.timedelta(days=settings.signup.pending_days)).date()
    assert f"This link works until {token.expires:%A}, {token.expires:%B} {token.expires.day}, {token.expires.year}." \
        in body
    recorded = row(settings, "confirmations", confirmation)
    assert recorded["status"] == "sent" and f"<{recorded['message_id']}>" == mail["Message-ID"]
    # Sent once: another pass (by ids or not) finds nothing to send.
    assert send_outbox_now(settings, [confirmation]).handled == 0
    assert send_outbox_now(settings).handled == 0
    assert len(server.recorder.received()) == 1
    assert confirm(settings, token.confirmation_id) == "confirmed"


def test_what_the_visitor_typed_never_reaches_the_inbox(settings: Settings, server: SmtpServer) -> None:
    """Signup forms are abused to carry spam to someone else's inbox in the name field: it isn't shown."""
    sign_up(settings, "victim@example.org", name="Cheap pills at https://spam.example.net/buy")
    assert send_outbox_now(settings).sent == 1
    (message,) = server.recorder.received()
    assert b"spam.example" not in message.data and b"Cheap pills" not in message.data
    assert b"example.org/join" not in message.data  # nor the form's page
    assert parsed(message)["To"] == "victim@example.org"


def test_a_crashed_sender_s_claim_is_sent_once_after_its_lease(settings: Settings, server: SmtpServer) -> None:
    """A sender that claimed a mail and died before recording it: the mail goes once its lease has passed."""
    recent = sign_up(settings, "recent@example.org")
    crashed = sign_up(settings, "crashed@example.org", now=NOW - dt.timedelta(hours=1))
    with Store.open(settings.database.location) as store:
        signups = Signups(store, settings.signup)
        assert [mail.id for mail in signups.claim_mail(ids=[recent])] == [recent]  # dies now: its lease runs
        assert [mail.id for mail in signups.claim_mail(ids=[crashed], now=NOW - dt.timedelta(hours=1))] == [crashed]
    assert row(settings, "confirmations", recent)["status"] == "sending"
    summary = send_outbox_now(settings)
    assert (summary.sent, summary.handled) == (1, 1)
    assert [message.rcpt for message in server.recorder.received()] == ["crashed@example.org"]
    assert send_outbox_now(settings, [recent, crashed]).handled == 0  # the other one's lease still runs
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    assert send_outbox_now(settings, now=later).sent == 1  # its sender is presumed dead now
    assert send_outbox_now(settings, now=later).handled == 0
    assert server.recorder.by_recipient() == {"crashed@example.org": 1, "recent@example.org": 1}


def test_a_temporary_failure_is_deferred_with_backoff_then_sent(settings: Settings, server: SmtpServer) -> None:
    confirmation = sign_up(settings, "grey@example.org")
    server.recorder.fail_rcpt("grey@example.org", "451 4.7.1 greylisted, try again later")
    before = dt.datetime.now(dt.UTC).timestamp()
    summary = send_outbox_now(settings, [confirmation])
    assert (summary.sent, summary.deferred) == (0, 1)
    assert summary.problems == ["grey@example.org: deferred: 451 4.7.1 greylisted, try again later"]
    waiting = row(settings, "confirmations", confirmation)
    assert waiting["status"] == "queued" and "451 4.7.1" in str(waiting["last_error"])
    assert before + 0.8 * 60 <= float(str(waiting["next_attempt_at"])) <= before + 1.2 * 60 + 30  # retry_initial
    assert send_outbox_now(settings).handled == 0  # not due yet
    summary = send_outbox_now(settings, now=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2))
    assert summary.sent == 1
    assert server.recorder.by_recipient() == {"grey@example.org": 1}
    assert row(settings, "confirmations", confirmation)["attempts"] == 2


def test_a_permanent_failure_fails_at_once(settings: Settings, server: SmtpServer) -> None:
    confirmation = sign_up(settings, "nobody@example.org")
    server.recorder.fail_rcpt("nobody@example.org", "550 5.1.1 no such user")
    summary = send_outbox_now(settings, [confirmation])
    assert (summary.sent, summary.deferred, summary.failed) == (0, 0, 1)
    failed = row(settings, "confirmations", confirmation)
    assert failed["status"] == "failed" and "550 5.1.1 no such user" in str(failed["last_error"])
    assert send_outbox_now(settings, now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)).handled == 0
    assert server.recorder.received() == []


def test_a_relay_that_is_away_leaves_the_mail_queued(settings: Settings, server: SmtpServer) -> None:
    first, second = sign_up(settings, "a@example.org"), sign_up(settings, "b@example.org")
    away = dataclasses.replace(settings, smtp=dataclasses.replace(settings.smtp, port=free_port()))
    summary = send_outbox_now(away)
    assert (summary.sent, summary.deferred) == (0, 1), summary  # the first one; the second isn't even claimed
    assert len(summary.notes) == 1 and summary.notes[0].startswith("stopped: can't connect to 127.0.0.1:")
    assert row(away, "confirmations", first)["status"] == "queued"
    assert row(away, "confirmations", second)["status"] == "queued"
    summary = send_outbox_now(settings, now=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2))
    assert summary.sent == 2
    assert server.recorder.by_recipient() == {"a@example.org": 1, "b@example.org": 1}


def test_given_up_after_give_up_after_hours(settings: Settings, server: SmtpServer) -> None:
    confirmation = sign_up(settings, "grey@example.org")
    server.recorder.fail_rcpt("grey@example.org", *["451 4.7.1 greylisted"] * 3)
    assert send_outbox_now(settings, [confirmation]).deferred == 1
    summary = send_outbox_now(settings, now=NOW + dt.timedelta(hours=25))
    assert (summary.deferred, summary.failed) == (0, 1)
    assert str(row(settings, "confirmations", confirmation)["last_error"]).startswith("gave up after 24 h: 451")


def test_without_a_secret_key_nothing_is_sent_and_nothing_is_stuck(settings: Settings, server: SmtpServer) -> None:
    confirmation = sign_up(settings, "ann@example.org")
    with pytest.raises(ConfigError, match="NEWSLETTER_SECRET_KEY"):
        send_outbox_now(dataclasses.replace(settings, secret_key=Secret("")))
    assert row(settings, "confirmations", confirmation)["status"] == "queued"  # not left 'sending' for its lease
    assert send_outbox_now(settings, now=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2)).sent == 1
    assert send_outbox_now(dataclasses.replace(settings, secret_key=Secret(""))).handled == 0  # nothing to send


# --- the welcome issue --------------------------------------------------------------------------


def test_the_welcome_issue_goes_once_even_when_confirmed_twice(settings: Settings, server: SmtpServer,
                                                               dkim_key: Dkim) -> None:
    confirmation = sign_up(settings, "ann@example.org", "briefing", "weekly", name="Ann Reader")
    assert send_outbox_now(settings, [confirmation]).sent == 1
    assert confirm(settings, confirmation) == "confirmed"
    assert confirm(settings, confirmation) == "already"
    summary = send_outbox_now(settings)
    assert (summary.sent, summary.failed) == (1, 0)  # briefing has a welcome; weekly has none
    assert confirm(settings, confirmation) == "already"
    assert send_outbox_now(settings).handled == 0
    confirmation_message, welcome = server.recorder.received()
    mail = parsed(welcome)
    assert mail["Subject"] == "Welcome to The Daily Briefing"
    assert mail["To"] == "Ann Reader <ann@example.org>"
    assert mail["List-Id"] == f"The Briefing <briefing.{DOMAIN}>"  # the list it welcomes to
    assert mail["Auto-Submitted"] is None  # an issue, not a notice
    assert verifies(welcome.data, dkim_key.record)
    text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "Welcome, Ann Reader" in text
    # Not in the archive: no "view in browser" link to a page that isn't there.
    assert "View this issue in your browser" not in text + html and "/issues/" not in text + html
    url = str(mail["List-Unsubscribe"]).split("<", 1)[1].split(">", 1)[0]
    token = TokenSigner(split_keys(KEY)).verify(url.rsplit("/", 1)[1])
    # The footer's "Manage your subscription" works in the welcome as in every issue (same token).
    preferences = url.replace("/unsubscribe/", "/preferences/")
    assert preferences in text and f'href="{preferences}"' in html and "Manage your subscription" in html
    with Store.open(settings.database.location) as store:
        (person,) = store.subscribers(emails=["ann@example.org"])
        assert token is not None and (token.subscriber_id, token.list_id) == (person.id, store.find_list("briefing"))
        assert store.query("SELECT count(*) FROM issues")[0][0] == 0  # not an issue of the ledger


def test_a_broken_welcome_file_waits_for_its_fix(settings: Settings, server: SmtpServer) -> None:
    confirmation = sign_up(settings, "ann@example.org")
    assert send_outbox_now(settings, [confirmation]).sent == 1
    welcome = settings.lists[0].welcome
    assert welcome is not None
    good = welcome.read_text(encoding="utf-8")
    welcome.write_text(good.replace("date: 2024-01-02", "date: 2024-02-30"), encoding="utf-8")
    confirm(settings, confirmation)
    summary = send_outbox_now(settings)
    assert (summary.sent, summary.deferred) == (0, 1)
    assert summary.notes == [f"{welcome}:3: date '2024-02-30' does not exist (day is out of range for month)"]
    welcome.write_text(good, encoding="utf-8")
    assert send_outbox_now(settings, now=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2)).sent == 1
    assert [parsed(message)["Subject"] for message in server.recorder.received()][-1] == "Welcome to The Daily Briefing"


def test_a_list_whose_welcome_was_removed_fails_its_queued_welcome(settings: Settings, server: SmtpServer) -> None:
    confirmation = sign_up(settings, "ann@example.org")
    send_outbox_now(settings, [confirmation])
    confirm(settings, confirmation)
    without = dataclasses.replace(settings, lists=(dataclasses.replace(settings.lists[0], welcome=None),))
    summary = send_outbox_now(without)
    assert (summary.sent, summary.failed) == (0, 1)
    assert summary.problems == ["ann@example.org: failed: list 'briefing' has no welcome issue ([lists.briefing] welcome)"]


def test_one_connection_for_the_whole_pass(settings: Settings, server: SmtpServer) -> None:
    for number in range(5):
        sign_up(settings, f"r{number}@example.org")
    before = server.recorder.connections  # aiosmtpd's controller connects once itself, to see it is up
    assert send_outbox_now(settings).sent == 5
    assert server.recorder.connections - before == 1
