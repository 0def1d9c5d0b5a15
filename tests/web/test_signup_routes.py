"""Signup over real HTTP: ``/subscribe`` (our form and one on another site), ``/api/subscribe``,
``/confirm/<token>``, and the double opt-in flow end to end in Chromium.

The real application runs under uvicorn on a free port with a real SQLite file; the
confirmation emails go through the project's outbox (a real SMTP server on 127.0.0.1 that
files each message in a Maildir), and the tests take the links from the messages there.
"""

from __future__ import annotations

import asyncio
import email
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import uvicorn
from aiosmtpd.smtp import SMTP, Envelope, Session

from newsletter.config import (
    DatabaseSettings,
    DispatchSettings,
    ListSettings,
    Secret,
    SenderSettings,
    Settings,
    SignupSettings,
    SmtpSettings,
)
from newsletter.deliver.dispatch import DispatchOptions, dispatch
from newsletter.devtools.outbox import Outbox
from newsletter.store.subscribers import Store, SubscriberRow
from newsletter.web.app import create_app
from newsletter.web.security import MAX_BODY
from tests.conftest import SEED_ISSUE
from tests.harness.smtpserver import Recorder, SmtpServer, free_port

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytest_plugins = ["tests.harness.pgserver"]

KEY = "signup-test-key-0123456789abcdef0"
NEWS = ListSettings("news", "Weekly news", "Every Friday, the week in five minutes.")
EVENTS = ListSettings("events", "Events near you", "What is on, once a month.")
HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
#: seconds to wait for something a background task does (a message to arrive): generous, not a speed claim
WAIT = 30.0


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # a thread can't; the test stops it
        pass


@dataclass
class Site:
    settings: Settings
    base: str
    outbox: Outbox

    def messages(self) -> list[EmailMessage]:
        """The captured messages, oldest first."""
        found = []
        for path in sorted((self.outbox.maildir / "new").iterdir(), key=lambda path: path.stat().st_mtime_ns):
            message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
            assert isinstance(message, EmailMessage)
            found.append(message)
        return found

    def messages_to(self, address: str) -> list[EmailMessage]:
        return [message for message in self.messages() if str(message["Delivered-To"]) == address]

    def wait_for_message(self, address: str, count: int = 1) -> list[EmailMessage]:
        """The messages to ``address`` once there are ``count`` (they are sent after the answer)."""
        deadline = time.monotonic() + WAIT
        while True:
            found = self.messages_to(address)
            if len(found) >= count or time.monotonic() > deadline:
                assert len(found) >= count, f"{len(found)} message(s) to {address}, expected {count}"
                return found
            time.sleep(0.02)

    def confirm_link(self, address: str) -> str:
        """The confirmation link in the newest message to ``address`` (its plain-text part)."""
        message = self.wait_for_message(address)[-1]
        text = message.get_body(("plain",))
        assert text is not None
        links = set(re.findall(rf"{re.escape(self.base)}/confirm/[A-Za-z0-9_.~-]+", text.get_content()))
        assert len(links) == 1, links
        return links.pop()

    def memberships(self, address: str) -> dict[str, str]:
        """List name -> membership status of ``address``."""
        with Store.open(self.settings.database.location) as store:
            rows = store.query("SELECT l.name, m.status FROM memberships m JOIN subscribers s ON s.id = m.subscriber_id"
                               " JOIN lists l ON l.id = m.list_id WHERE s.email = ?", (address,))
        return {str(row["name"]): str(row["status"]) for row in rows}

    def query(self, sql: str, *args: object) -> list[dict[str, object]]:
        with Store.open(self.settings.database.location) as store:
            return [dict(row) for row in store.query(sql, args)]

    def execute(self, sql: str, *args: object) -> None:
        with Store.open(self.settings.database.location) as store, store.transaction() as cursor:
            cursor.execute(sql, args)

    def mail_settled(self) -> None:
        """Wait until no confirmation or welcome waits to be sent (the background sends are done)."""
        deadline = time.monotonic() + WAIT
        while self.query("SELECT id FROM confirmations WHERE status IN ('queued', 'sending') UNION ALL"
                         " SELECT id FROM welcomes WHERE status IN ('queued', 'sending')"):
            assert time.monotonic() < deadline, "confirmation emails still waiting"
            time.sleep(0.02)

    def dispatch(self, issue: Path) -> None:
        report = dispatch(self.settings, DispatchOptions(issue=str(issue)))
        assert report.exit_code == 0, report

    def issue(self, list_name: str, slug: str = "2017-07-08-news") -> Path:
        path = self.settings.issues_dir / f"{slug}.md"
        text = SEED_ISSUE.read_text(encoding="utf-8")
        assert text.startswith("---\n") and "\nlist:" not in text.split("\n---\n", 1)[0]
        path.write_text(f"---\nlist: {list_name}\n" + text.removeprefix("---\n"), encoding="utf-8")
        return path


def _start(settings: Settings, port: int) -> tuple[_Server, threading.Thread]:
    server = _Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, access_log=False,
                                    log_level="warning", lifespan="off", proxy_headers=False))  # as serve()
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(1000):
        if server.started or not thread.is_alive():
            break
        threading.Event().wait(0.01)
    assert server.started, "uvicorn did not start"
    return server, thread


@contextmanager
def running(tmp_path: Path, database: str | Path | None = None, **changes: object) -> Iterator[Site]:
    """The application for settings with two lists offered (``changes`` replace settings), its outbox, and
    one reader, ``old@example.org``, active on both lists since an import. ``database``: a PostgreSQL
    URL or an SQLite file (default: a new file)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    issues = tmp_path / "issues"
    issues.mkdir(exist_ok=True)
    outbox = Outbox(tmp_path / "outbox", port=0)
    outbox.start()
    settings = Settings(
        sender=SenderSettings(site_url=base),
        smtp=SmtpSettings(port=outbox.port, connections=2, timeout=10),
        database=(DatabaseSettings(url=database) if isinstance(database, str)
                  else DatabaseSettings(database or tmp_path / "news.db")),
        dispatch=DispatchSettings(wait_for_retries=0),
        issues_dir=issues,
        secret_key=Secret(KEY),
        lists=(NEWS, EVENTS),
        signup=SignupSettings(per_network_per_hour=0, per_hour=0),
    )
    settings = replace(settings, **changes)  # type: ignore[arg-type]
    with Store.open(settings.database.location) as store:
        for name in ("news", "events"):
            store.upsert_subscribers([SubscriberRow("old@example.org", "Old Reader")], list_name=name)
    server, thread = _start(settings, port)
    try:
        yield Site(settings, base, outbox)
    finally:
        server.should_exit = True
        thread.join(10)
        outbox.stop()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with running(tmp_path) as started:
        yield started


@pytest.fixture
def any_site(tmp_path: Path, database: str | Path) -> Iterator[Site]:
    """The same on each backend: an SQLite file, then a PostgreSQL database."""
    with running(tmp_path, database) as started:
        yield started


def _signup(site: Site, address: str, *lists: str, **extra: str) -> httpx.Response:
    return httpx.post(f"{site.base}/subscribe", data={"email": address, "list": list(lists), **extra})


# --- the form -------------------------------------------------------------------------------


def test_the_form_offers_every_signup_list_or_only_the_one_asked_for(site: Site) -> None:
    page = httpx.get(f"{site.base}/subscribe")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'action="/subscribe"' in page.text and "Weekly news" in page.text and "Events near you" in page.text
    assert page.text.count('type="checkbox"') == 2 and '<meta name="robots" content="index">' in page.text
    assert f'name="source" value="{site.base}/subscribe"' in page.text
    one = httpx.get(f"{site.base}/subscribe?list=events")
    assert 'type="checkbox"' not in one.text and '<input type="hidden" name="list" value="events">' in one.text
    assert "Weekly news" not in one.text and 'href="/subscribe"' in one.text  # the way to every list
    assert httpx.get(f"{site.base}/subscribe?list=nope").text == page.text
    assert httpx.head(f"{site.base}/subscribe").status_code == 200
    assert httpx.get(f"{site.base}/subscribe/").headers["location"] == "/subscribe"


def test_without_lists_signup_is_not_open(tmp_path: Path) -> None:
    with running(tmp_path, lists=(ListSettings("staff", "Staff", signup=False),)) as site:
        for response in (httpx.get(f"{site.base}/subscribe"), _signup(site, "ada@example.org", "staff"),
                         httpx.post(f"{site.base}/api/subscribe", json={"email": "ada@example.org"})):
            assert response.status_code == 404
        assert "Signup is not open" in httpx.get(f"{site.base}/subscribe").text
        assert site.memberships("ada@example.org") == {}


def test_a_signup_is_pending_and_its_confirmation_arrives(site: Site) -> None:
    response = _signup(site, "Ada@Example.ORG", "news", "events", name="Ada Lovelace",
                       source="https://blog.example/about")
    assert response.status_code == 200 and "Check your inbox" in response.text
    assert site.memberships("Ada@example.org") == {"news": "pending", "events": "pending"}
    message = site.wait_for_message("Ada@example.org")[0]
    assert site.confirm_link("Ada@example.org").startswith(f"{site.base}/confirm/")
    assert "List-Unsubscribe" not in message
    consents = site.query("SELECT c.method, c.source, c.ip_prefix, c.confirmed_at FROM consents c"
                          " JOIN subscribers s ON s.id = c.subscriber_id WHERE s.email = ?", "Ada@example.org")
    assert consents == [{"method": "form", "source": "https://blog.example/about", "ip_prefix": "127.0.0.0/24",
                         "confirmed_at": None}] * 2
    assert site.query("SELECT name FROM subscribers WHERE email = ?", "Ada@example.org") == [{"name": "Ada Lovelace"}]


def test_a_form_on_another_site_is_accepted_and_its_page_recorded(site: Site) -> None:
    response = httpx.post(f"{site.base}/subscribe", data={"email": "grace@example.org", "list": "news"},
                          headers={"Origin": "https://blog.example", "Sec-Fetch-Site": "cross-site",
                                   "Referer": "https://blog.example/post/1"})
    assert response.status_code == 200 and "Check your inbox" in response.text
    assert site.memberships("grace@example.org") == {"news": "pending"}
    assert site.query("SELECT source FROM consents") == [{"source": "https://blog.example/post/1"}]


def test_bad_input_gets_the_form_again_with_the_errors_and_what_was_typed(site: Site) -> None:
    response = _signup(site, HOSTILE, "nope", name=HOSTILE, source=HOSTILE)
    assert response.status_code == 400
    assert "<script>" not in response.text and "<img" not in response.text
    assert 'id="email-error"' in response.text and 'aria-invalid="true"' in response.text
    assert "There is no list &#39;nope&#39;" in response.text
    assert response.text.count("&lt;script&gt;alert(1)") == 3  # kept as typed: the address, the name, the source
    none = _signup(site, "ada@example.org")
    assert none.status_code == 400 and "Choose at least one list." in none.text
    assert site.query("SELECT id FROM subscribers WHERE email != 'old@example.org'") == []
    assert site.messages() == []


def test_the_same_answer_whatever_the_address_was(any_site: Site) -> None:
    """No enumeration: new, already waiting, already subscribed, bounced, or a bot: one page."""
    site = any_site  # each backend
    with Store.open(site.settings.database.location) as store:
        store.upsert_subscribers([SubscriberRow("bounced@example.org")], list_name="news")
    site.execute("UPDATE subscribers SET status = 'bounced' WHERE email = 'bounced@example.org'")
    answers = {}
    for case, address, extra in [("new", "x@example.org", {}), ("again", "x@example.org", {}),
                                 ("member", "old@example.org", {}), ("bounced", "bounced@example.org", {}),
                                 ("bot", "x@example.org", {"website": "https://spam.example"})]:
        response = _signup(site, address, "news", **extra)
        answers[case] = (response.status_code, response.text.replace(address, "ADDRESS"))
    assert len(set(answers.values())) == 1, answers
    site.mail_settled()
    assert [str(m["Delivered-To"]) for m in site.messages()] == ["x@example.org"]


def test_a_filled_honeypot_stores_nothing(site: Site) -> None:
    bot = _signup(site, "Bot@EXAMPLE.org", "news", website="https://spam.example")
    person = _signup(site, "Ada@EXAMPLE.org", "news")
    assert bot.status_code == person.status_code == 200 and "Check your inbox" in bot.text
    # The address normalised as for a person: the same page.
    assert bot.text.replace("Bot@example.org", "X") == person.text.replace("Ada@example.org", "X")
    assert site.memberships("Bot@example.org") == {} and site.memberships("Ada@example.org") == {"news": "pending"}
    assert len(site.query("SELECT id FROM consents")) == 1
    # Checked like any other signup: a bot can't tell the honeypot by a different answer to bad input.
    assert _signup(site, "not an address", "news", website="x").status_code == 400
    site.mail_settled()
    assert [str(message["Delivered-To"]) for message in site.messages()] == ["Ada@example.org"]


def test_the_network_limit_answers_429(tmp_path: Path) -> None:
    with running(tmp_path, signup=SignupSettings(per_network_per_hour=2, per_hour=0)) as site:
        answers = [_signup(site, f"r{n}@example.org", "news").status_code for n in range(4)]
        assert answers == [200, 200, 429, 429]
        assert "Too many signups" in _signup(site, "r9@example.org", "news").text
        api = httpx.post(f"{site.base}/api/subscribe", json={"email": "r10@example.org", "lists": ["news"]})
        assert api.status_code == 429 and api.json()["field"] is None
        assert site.memberships("r3@example.org") == {}


# --- the JSON API ---------------------------------------------------------------------------


def test_the_json_api(site: Site) -> None:
    url = f"{site.base}/api/subscribe"
    accepted = httpx.post(url, json={"email": "ada@example.org", "name": "Ada", "lists": ["events"]})
    assert accepted.status_code == 202 and accepted.json() == {"status": "pending"}
    assert accepted.headers["content-type"] == "application/json"
    assert site.memberships("ada@example.org") == {"events": "pending"}
    assert site.query("SELECT method FROM consents") == [{"method": "api"}]
    site.wait_for_message("ada@example.org")
    # Known, already waiting, already subscribed: the same answer.
    for address in ("ada@example.org", "old@example.org"):
        again = httpx.post(url, json={"email": address, "lists": ["events"]})
        assert (again.status_code, again.json()) == (202, {"status": "pending"})
    bad = httpx.post(url, json={"email": "not an address", "lists": ["events"]})
    assert bad.status_code == 400 and bad.json()["field"] == "email"
    assert bad.json()["error"].startswith("This is not an email address we can send to.")
    assert httpx.post(url, json={"email": "b@example.org"}).json() == {"error": "Choose at least one list.",
                                                                         "field": "lists"}
    assert httpx.post(url, content=b'{"email": 1}', headers={"Content-Type": "application/json"}).json() == {
        "error": "email must be a string", "field": "email"}
    form = httpx.post(url, data={"email": "c@example.org", "list": "news"})
    assert form.status_code == 415 and "application/json" in form.json()["error"]
    as_text = httpx.post(url, content=json.dumps({"email": "c@example.org"}), headers={"Content-Type": "text/plain"})
    assert as_text.status_code == 415
    assert site.memberships("c@example.org") == {} and site.memberships("b@example.org") == {}


@pytest.mark.parametrize("path", ["/subscribe", "/api/subscribe"])
def test_bodies_over_16_kib_are_refused(site: Site, path: str) -> None:
    padding = "x" * (MAX_BODY + 1)
    if path == "/subscribe":
        content = f"email=big%40example.org&list=news&name={padding}".encode()
        kind = "application/x-www-form-urlencoded"
    else:
        content = json.dumps({"email": "big@example.org", "lists": ["news"], "name": padding}).encode()
        kind = "application/json"
    url = f"{site.base}{path}"
    assert httpx.post(url, content=content, headers={"Content-Type": kind}).status_code == 413
    chunked = httpx.post(url, content=iter([content[:1000], content[1000:]]), headers={"Content-Type": kind})
    assert chunked.request.headers["transfer-encoding"] == "chunked" and chunked.status_code == 413
    assert site.memberships("big@example.org") == {}


# --- confirming -----------------------------------------------------------------------------


def test_get_confirms_nothing_and_the_post_confirms_once(any_site: Site) -> None:
    """Link scanners (Safe Links) open every URL in a message: only the button's POST confirms."""
    site = any_site  # each backend
    _signup(site, "ada@example.org", "news", "events")
    link = site.confirm_link("ada@example.org")
    for _ in range(3):  # a scanner, its retry, and a preview fetch
        scanned = httpx.get(link, headers={"User-Agent": "Microsoft Office Protocol Discovery"})
        assert scanned.status_code == 200
        assert httpx.head(link).status_code == 200
    assert "ada@example.org" in scanned.text and "Weekly news" in scanned.text and "Events near you" in scanned.text
    token = link.rsplit("/", 1)[1]
    assert f'<form method="post" action="/confirm/{token}">' in scanned.text
    assert scanned.text.count("<button") == 1
    assert site.memberships("ada@example.org") == {"news": "pending", "events": "pending"}
    confirmed = httpx.post(link)
    assert confirmed.status_code == 200 and "You are subscribed" in confirmed.text
    assert site.memberships("ada@example.org") == {"news": "active", "events": "active"}
    assert all(row["confirmed_at"] for row in site.query("SELECT confirmed_at FROM consents"))
    again = httpx.post(link)  # idempotent
    assert again.status_code == 200 and "You are subscribed" in again.text
    later = httpx.get(link)
    assert later.status_code == 200 and "You are already subscribed" in later.text and "<button" not in later.text


def test_confirming_sends_the_welcome_issue_once(tmp_path: Path) -> None:
    welcome = tmp_path / "welcome.md"
    shutil.copy(SEED_ISSUE, welcome)
    with running(tmp_path, lists=(replace(NEWS, welcome=welcome), EVENTS)) as site:
        _signup(site, "ada@example.org", "news", "events")
        link = site.confirm_link("ada@example.org")
        assert site.query("SELECT id FROM welcomes") == []  # not before the confirmation
        for _ in range(2):
            assert httpx.post(link).status_code == 200
        site.mail_settled()
        assert len(site.messages_to("ada@example.org")) == 2  # the confirmation, then one welcome
        assert site.query("SELECT status FROM welcomes") == [{"status": "sent"}]  # news only: events has none


def test_a_forgotten_reader_may_come_back_by_double_opt_in(site: Site) -> None:
    from newsletter.store.rights import DataRights
    from newsletter.tokens import split_keys

    keys = split_keys(KEY)
    with Store.open(site.settings.database.location) as store:
        DataRights(store).forget("old@example.org", keys)
    assert _signup(site, "old@example.org", "news").status_code == 200
    assert site.memberships("old@example.org") == {"news": "pending"}
    with Store.open(site.settings.database.location) as store:
        assert DataRights(store).was_forgotten("old@example.org", keys) is not None  # until they confirm
    httpx.post(site.confirm_link("old@example.org"))
    assert site.memberships("old@example.org") == {"news": "active"}
    with Store.open(site.settings.database.location) as store:
        assert DataRights(store).was_forgotten("old@example.org", keys) is None


def test_confirming_after_the_address_bounced_says_it_gets_nothing(site: Site) -> None:
    _signup(site, "ada@example.org", "news")
    link = site.confirm_link("ada@example.org")
    site.execute("UPDATE subscribers SET status = 'bounced' WHERE email = 'ada@example.org'")
    response = httpx.post(link)
    assert response.status_code == 200 and "Your confirmation is recorded" in response.text
    assert "You are subscribed" not in response.text
    assert site.memberships("ada@example.org") == {"news": "pending"}


def test_a_cross_site_confirm_post_is_refused(site: Site) -> None:
    _signup(site, "ada@example.org", "news")
    link = site.confirm_link("ada@example.org")
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}):
        assert httpx.post(link, headers=headers).status_code == 403
    assert site.memberships("ada@example.org") == {"news": "pending"}
    assert httpx.post(link, headers={"Sec-Fetch-Site": "same-origin", "Origin": site.base}).status_code == 200
    assert site.memberships("ada@example.org") == {"news": "active"}


@pytest.mark.parametrize("forge", ["flip", "garbage", "unsubscribe-token", "empty"])
def test_forged_confirm_tokens_get_400_and_change_nothing(site: Site, forge: str) -> None:
    from newsletter.tokens import TokenSigner, split_keys

    _signup(site, "ada@example.org", "news")
    link = site.confirm_link("ada@example.org")
    token = link.rsplit("/", 1)[1]
    forged = {
        "flip": token[:-1] + ("A" if token[-1] != "A" else "B"),
        "garbage": "not-a-token",
        "unsubscribe-token": TokenSigner(split_keys(KEY)).make(1, 1),  # another purpose's MAC
        "empty": "-",
    }[forge]
    for response in (httpx.get(f"{site.base}/confirm/{forged}"), httpx.post(f"{site.base}/confirm/{forged}")):
        assert response.status_code == 400 and "This link is not valid" in response.text
    assert site.memberships("ada@example.org") == {"news": "pending"}


def test_an_expired_link_offers_to_sign_up_again(site: Site) -> None:
    import datetime as dt

    from newsletter.tokens import TokenSigner, split_keys

    _signup(site, "ada@example.org", "news")
    site.wait_for_message("ada@example.org")
    confirmation_id = int(str(site.query("SELECT id FROM confirmations")[0]["id"]))
    old = TokenSigner(split_keys(KEY)).make_confirm(confirmation_id, dt.date.today() - dt.timedelta(days=1))
    for response in (httpx.get(f"{site.base}/confirm/{old}"), httpx.post(f"{site.base}/confirm/{old}")):
        assert response.status_code == 410
        assert "This link has expired" in response.text and 'href="/subscribe"' in response.text
    # The database says so too, whatever the token says.
    site.execute("UPDATE confirmations SET expires_at = '2000-01-01T00:00:00+00:00'")
    link = site.confirm_link("ada@example.org")
    assert httpx.get(link).status_code == 410 and httpx.post(link).status_code == 410
    assert site.memberships("ada@example.org") == {"news": "pending"}


def test_the_access_log_shows_no_confirm_token(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    _signup(site, "ada@example.org", "news")
    link = site.confirm_link("ada@example.org")
    token = link.rsplit("/", 1)[1]
    with caplog.at_level(logging.INFO, logger="newsletter.access"):
        httpx.get(link)
        httpx.post(link)
        deadline = time.monotonic() + WAIT
        while len(lines := [r.getMessage() for r in caplog.records if r.name == "newsletter.access"]) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert all("/confirm/<token>" in line for line in lines) and not any(token[-12:] in line for line in lines), lines


class _HeldRecorder(Recorder):
    """The test SMTP server's handler, keeping every message's DATA waiting until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.data_started.set()
        await asyncio.get_running_loop().run_in_executor(None, self.release.wait, WAIT)
        return await super().handle_DATA(server, session, envelope)


def test_the_answer_and_its_log_line_do_not_wait_for_the_email(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The confirmation email goes out after the answer: with the relay holding it in DATA, the reader
    has their page and the access log its line (with the answer's time), and the email arrives later."""
    held = _HeldRecorder()
    relay = SmtpServer()
    relay.recorder = relay.controller.handler = held
    relay.start()
    try:
        with running(tmp_path, smtp=SmtpSettings(port=relay.port, connections=1, timeout=WAIT)) as site, \
                caplog.at_level(logging.INFO, logger="newsletter.access"):
            response = _signup(site, "ada@example.org", "news")
            assert response.status_code == 200 and "Check your inbox" in response.text
            assert held.data_started.wait(WAIT)  # the email is on its way, held in DATA
            deadline = time.monotonic() + WAIT
            while not (lines := [r.getMessage() for r in caplog.records if '"POST /subscribe"' in r.getMessage()]):
                assert time.monotonic() < deadline, "no access-log line while the email is being sent"
                time.sleep(0.01)
            assert held.received() == []
            held.release.set()
            assert held.wait_for(1, timeout=WAIT)
            site.mail_settled()
        assert len(lines) == 1 and lines[0].endswith(" ms") and " 200 " in lines[0]
    finally:
        held.release.set()
        relay.stop()


def test_with_the_relay_away_the_answer_is_the_same_and_dispatch_sends_the_email_later(tmp_path: Path) -> None:
    """``serve`` can't reach the relay: the reader gets the usual page, the confirmation waits in the
    outbox, and the next ``newsletter dispatch`` sends it; its link then works."""
    with running(tmp_path, smtp=SmtpSettings(port=free_port(), connections=1, timeout=5)) as site:  # nobody there
        response = _signup(site, "ada@example.org", "news")
        assert response.status_code == 200 and "Check your inbox" in response.text
        deadline = time.monotonic() + WAIT
        while site.query("SELECT id FROM confirmations WHERE status = 'queued' AND attempts >= 1") == []:
            assert time.monotonic() < deadline, site.query("SELECT status, attempts FROM confirmations")
            time.sleep(0.02)
        assert site.messages() == []
        site.execute("UPDATE confirmations SET next_attempt_at = 0")  # its retry is due (time passed)
        relay_back = replace(site.settings, smtp=SmtpSettings(port=site.outbox.port, connections=1, timeout=10))
        assert dispatch(relay_back, DispatchOptions()).exit_code == 0
        assert httpx.post(site.confirm_link("ada@example.org")).status_code == 200
        assert site.memberships("ada@example.org") == {"news": "active"}


def test_a_thousand_signups_for_one_victim_send_one_email(any_site: Site) -> None:
    """A signup form used to mail-bomb someone: 1,000 POSTs (limits per network and hour off, so that
    every one is accepted), the same answer to each, and the victim gets one email."""
    site = any_site  # each backend
    answers = set()
    with httpx.Client(base_url=site.base) as client:
        for n in range(1000):
            response = client.post("/subscribe", data={"email": "victim@example.org", "list": ["news", "events"][n % 2:],
                                                       "name": f"Bomber {n}"})
            answers.add((response.status_code, response.text))
    assert len(answers) == 1 and next(iter(answers))[0] == 200
    site.mail_settled()
    assert len(site.messages_to("victim@example.org")) == 1
    assert site.query("SELECT COUNT(*) AS n FROM confirmations") == [{"n": 1}]
    assert site.query("SELECT name FROM subscribers WHERE email = 'victim@example.org'") == [{"name": "Bomber 0"}]


# --- Chromium -------------------------------------------------------------------------------


@contextmanager
def _chromium(**context: object) -> Iterator[Page]:
    """A page in Debian's Chromium (no JavaScript needed by any signup page: it runs with none)."""
    from playwright.sync_api import sync_playwright

    from tests.harness.browser import CHROMIUM, FLAGS

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield browser.new_context(java_script_enabled=False, **context).new_page()  # type: ignore[arg-type]
        finally:
            browser.close()


def _recipients(site: Site, before: int) -> list[str]:
    return sorted(str(message["Delivered-To"]) for message in site.messages()[before:])


@pytest.mark.browser
def test_signup_in_chromium_confirm_from_the_email_and_the_next_issue_reaches_only_the_confirmed(site: Site) -> None:
    """Issue 16 item 8: Chromium fills /subscribe; the confirmation arrives at the capture SMTP server;
    Chromium opens its link and presses the button; a dispatch then reaches the new reader, and not a
    reader who signed up too but never confirmed."""
    with _chromium() as page:
        page.goto(f"{site.base}/subscribe")
        page.get_by_label("Email address").fill("ada@example.org")
        page.get_by_label("Your name").fill("Ada Lovelace")
        page.get_by_label("Weekly news").check()
        page.get_by_role("button", name="Subscribe").click()
        page.wait_for_selector("text=Check your inbox")
        assert "ada@example.org" in page.inner_text("main")
        assert site.memberships("ada@example.org") == {"news": "pending"}
        _signup(site, "never@example.org", "news")  # signs up, never confirms
        link = site.confirm_link("ada@example.org")
        page.goto(link)
        assert "ada@example.org" in page.inner_text("main") and "Weekly news" in page.inner_text("main")
        assert site.memberships("ada@example.org") == {"news": "pending"}  # opening the link did nothing
        page.get_by_role("button", name="Confirm your subscription").click()
        page.wait_for_selector("text=You are subscribed")
    assert site.memberships("ada@example.org") == {"news": "active"}
    assert site.memberships("never@example.org") == {"news": "pending"}
    site.mail_settled()
    before = len(site.messages())
    site.dispatch(site.issue("news"))
    assert _recipients(site, before) == ["ada@example.org", "old@example.org"]
    delivered = site.messages_to("ada@example.org")[-1]
    assert "List-Unsubscribe" in delivered and str(delivered["To"]) == "Ada Lovelace <ada@example.org>"


@pytest.mark.browser
def test_signup_through_the_json_api_then_confirm_in_chromium(site: Site) -> None:
    url = f"{site.base}/api/subscribe"
    assert httpx.post(url, json={"email": "grace@example.org", "lists": ["events"]}).status_code == 202
    assert httpx.post(url, json={"email": "never@example.org", "lists": ["events"]}).status_code == 202
    link = site.confirm_link("grace@example.org")
    with _chromium() as page:
        page.goto(link)
        assert site.memberships("grace@example.org") == {"events": "pending"}
        page.get_by_role("button", name="Confirm your subscription").click()
        page.wait_for_selector("text=You are subscribed")
    assert site.memberships("grace@example.org") == {"events": "active"}
    site.mail_settled()
    before = len(site.messages())
    site.dispatch(site.issue("events"))
    assert _recipients(site, before) == ["grace@example.org", "old@example.org"]



# --- behind a reverse proxy: a real `newsletter serve` process -------------------------------


@contextmanager
def _serve_process(tmp_path: Path, *options: str) -> Iterator[str]:
    """``newsletter serve`` with ``options`` as its own process (SMTP down: emails stay queued); its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = tmp_path / "serve.toml"
    config.write_text(f'[sender]\nsite_url = "{base}"\n\n[database]\npath = "news.db"\n\n'
                      f'[smtp]\nport = {free_port()}\n\n[signup]\nper_network_per_hour = 1\n\n'
                      '[lists.news]\ntitle = "Weekly news"\n', encoding="utf-8")
    log = tmp_path / f"serve-{port}.log"
    command = [sys.executable, "-m", "newsletter", "--config", str(config), "serve", "--port", str(port), *options]
    with log.open("w") as output, subprocess.Popen(command, cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT,
                                                   env={**os.environ, "NEWSLETTER_SECRET_KEY": KEY}) as process:
        try:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, log.read_text(encoding="utf-8")
                assert time.monotonic() < deadline, "newsletter serve did not start"
                try:
                    if httpx.get(f"{base}/subscribe", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            yield base
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)


def test_behind_a_named_proxy_limits_and_consents_see_the_reader_s_network(tmp_path: Path) -> None:
    """``serve --proxy ADDR`` believes X-Forwarded-For from that address only: one network's limit
    (1 an hour here) doesn't stop another's, and the consent keeps the reader's /24, not the proxy's."""

    def signup(base: str, address: str, forwarded_for: str) -> int:
        return httpx.post(f"{base}/subscribe", data={"email": address},
                          headers={"X-Forwarded-For": forwarded_for}).status_code

    with _serve_process(tmp_path, "--proxy", "127.0.0.1") as base:
        assert signup(base, "a@example.org", "203.0.113.9") == 200
        assert signup(base, "b@example.org", "203.0.113.77") == 429  # the same /24
        assert signup(base, "c@example.org", "198.51.100.7") == 200
    with _serve_process(tmp_path, "--proxy", "10.0.0.0/8") as base:  # not the address requests come from
        assert signup(base, "d@example.org", "192.0.2.1") == 200  # counted as 127.0.0.1: its first
        assert signup(base, "e@example.org", "192.0.2.200") == 429
    with Store.open(tmp_path / "news.db") as store:
        rows = store.query("SELECT s.email, c.ip_prefix FROM consents c JOIN subscribers s ON s.id = c.subscriber_id"
                           " ORDER BY s.email")
    assert [(row["email"], row["ip_prefix"]) for row in rows] == [
        ("a@example.org", "203.0.113.0/24"), ("c@example.org", "198.51.100.0/24"), ("d@example.org", "127.0.0.0/24")]
