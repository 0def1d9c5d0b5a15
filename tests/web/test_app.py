"""``newsletter serve`` over real HTTP: RFC 8058 one-click unsubscribe, the unsubscribe page in
Chromium, forged tokens, the archive, security headers, limits, and logs without tokens.

Each test dispatches the seed issue through the project's outbox (a real SMTP server on
127.0.0.1) and runs the real application under uvicorn on a free port; the links in the
captured messages point at it ([sender] site_url).
"""

from __future__ import annotations

import email
import logging
import os
import re
import resource
import selectors
import shutil
import signal
import socket
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
from typing import cast

import httpx
import pytest
import uvicorn

from newsletter.cli.commands import main
from newsletter.config import DatabaseSettings, DispatchSettings, Secret, SenderSettings, Settings, SmtpSettings
from newsletter.deliver.dispatch import DispatchOptions, dispatch
from newsletter.devtools.outbox import Outbox
from newsletter.store.feedback import Feedback
from newsletter.store.ledger import Ledger
from newsletter.store.subscribers import Store, SubscriberRow
from newsletter.tokens import TokenSigner, split_keys
from newsletter.web.app import create_app
from newsletter.web.archive import build_static
from newsletter.web.server import OPEN_FILES_WANTED
from tests.conftest import SEED_ISSUE
from tests.harness.smtpserver import free_port

KEY = "web-test-key-0123456789abcdef0123"
SLUG = SEED_ISSUE.stem
PEOPLE = [("ada@example.org", "Ada Lovelace"), ("grace@example.org", "Grace Hopper"),
          ("alan@example.org", "Alan Turing")]


@dataclass
class Site:
    settings: Settings
    base: str
    outbox: Outbox

    def messages(self) -> dict[str, EmailMessage]:
        """The captured messages, by recipient."""
        found: dict[str, EmailMessage] = {}
        for path in sorted((self.outbox.maildir / "new").iterdir()):
            message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
            assert isinstance(message, EmailMessage)
            found[str(message["Delivered-To"])] = message
        return found

    def one_click_url(self, address: str) -> str:
        header = str(self.messages()[address]["List-Unsubscribe"])
        url = re.search(r"<(https?://[^>]+)>", header)
        assert url is not None, header
        return url.group(1)

    def membership(self, address: str) -> str:
        with Store.open(self.settings.database.path) as store:
            rows = store.query("SELECT m.status FROM memberships m JOIN subscribers s ON s.id = m.subscriber_id"
                               " WHERE s.email = ?", (address,))
        return str(rows[0]["status"])

    def dispatch(self, issue: Path) -> None:
        report = dispatch(self.settings, DispatchOptions(issue=str(issue)))
        assert report.exit_code == 0, report


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # a thread can't; the test stops it
        pass


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    issues = tmp_path / "issues"
    issues.mkdir()
    shutil.copy(SEED_ISSUE, issues / SEED_ISSUE.name)
    outbox = Outbox(tmp_path / "outbox", port=0)
    outbox.start()
    settings = Settings(
        sender=SenderSettings(site_url=base),
        smtp=SmtpSettings(port=outbox.port, connections=2, timeout=10),
        database=DatabaseSettings(tmp_path / "news.db"),
        dispatch=DispatchSettings(wait_for_retries=0),
        issues_dir=issues,
        secret_key=Secret(KEY),
    )
    with Store.open(settings.database.path) as store:
        store.upsert_subscribers([SubscriberRow(address, name) for address, name in PEOPLE], list_name="default")
    server = _Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, access_log=False,
                                    log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(1000):
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.01)
        assert server.started, "uvicorn did not start"
        result = Site(settings, base, outbox)
        result.dispatch(issues / SEED_ISSUE.name)
        yield result
    finally:
        server.should_exit = True
        thread.join(10)
        outbox.stop()


def test_rfc8058_one_click_post_unsubscribes_exactly_that_subscriber(site: Site) -> None:
    url = site.one_click_url("grace@example.org")
    assert url.startswith(f"{site.base}/unsubscribe/")
    response = httpx.post(url, data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    assert "set-cookie" not in response.headers
    assert site.membership("grace@example.org") == "unsubscribed"
    assert site.membership("ada@example.org") == site.membership("alan@example.org") == "active"
    again = httpx.post(url, data={"List-Unsubscribe": "One-Click"})  # idempotent
    assert again.status_code == 200 and site.membership("grace@example.org") == "unsubscribed"


def test_one_click_as_multipart_form_data(site: Site) -> None:
    url = site.one_click_url("alan@example.org")
    response = httpx.post(url, files={"List-Unsubscribe": (None, "One-Click")})
    assert response.status_code == 200
    assert site.membership("alan@example.org") == "unsubscribed"


@pytest.mark.parametrize("forge", ["flip-last", "other-subscriber", "garbage", "other-key", "empty-mac"])
def test_forged_altered_or_malformed_tokens_get_400_and_change_nothing(site: Site, forge: str) -> None:
    url = site.one_click_url("ada@example.org")
    token = url.rsplit("/", 1)[1]
    subscriber, list_id, signature = token.split("-", 2)
    forged = {
        "flip-last": token[:-1] + ("A" if token[-1] != "A" else "B"),
        "other-subscriber": f"{int(subscriber) + 1}-{list_id}-{signature}",
        "garbage": "<script>alert(1)<script>",
        "other-key": f"{subscriber}-{list_id}-{'x' * len(signature)}",
        "empty-mac": f"{subscriber}-{list_id}-",
    }[forge]
    post = httpx.post(f"{site.base}/unsubscribe/{forged}", data={"List-Unsubscribe": "One-Click"})
    page = httpx.get(f"{site.base}/unsubscribe/{forged}")
    form = httpx.post(f"{site.base}/unsubscribe/{forged}", data={"action": "unsubscribe"})
    assert (post.status_code, page.status_code, form.status_code) == (400, 400, 400)
    assert "<script>alert" not in page.text
    assert [site.membership(address) for address, _ in PEOPLE] == ["active"] * 3


def test_get_only_shows_a_page_and_the_button_unsubscribes_then_resubscribes(site: Site) -> None:
    url = site.one_click_url("ada@example.org")
    with httpx.Client() as client:
        page = client.get(url)
        assert page.status_code == 200
        assert "ada@example.org" in page.text and "default" in page.text
        assert site.membership("ada@example.org") == "active"  # a link scanner's GET changes nothing
        done = client.post(url, data={"action": "unsubscribe"}, headers={"Sec-Fetch-Site": "same-origin"})
        assert done.status_code == 200 and "You are unsubscribed" in done.text
        assert site.membership("ada@example.org") == "unsubscribed"
        back = client.post(url, data={"action": "resubscribe"}, headers={"Sec-Fetch-Site": "same-origin"})
        assert back.status_code == 200 and "Welcome back" in back.text
        assert site.membership("ada@example.org") == "active"


def test_cross_site_form_posts_are_refused(site: Site) -> None:
    url = site.one_click_url("ada@example.org")
    forged = httpx.post(url, data={"action": "unsubscribe"}, headers={"Sec-Fetch-Site": "cross-site"})
    by_origin = httpx.post(url, data={"action": "unsubscribe"}, headers={"Origin": "https://evil.example"})
    assert forged.status_code == by_origin.status_code == 403
    assert site.membership("ada@example.org") == "active"


def test_security_headers_limits_and_no_stack_traces(site: Site) -> None:
    url = site.one_click_url("ada@example.org")
    for response in (httpx.get(url), httpx.get(f"{site.base}/issues/"), httpx.get(f"{site.base}/nowhere")):
        policy_header = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy_header and "script-src" not in policy_header  # no script at all
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "set-cookie" not in response.headers
    assert httpx.get(f"{site.base}/nowhere").status_code == 404
    huge = httpx.post(url, content=b"List-Unsubscribe=One-Click&" + b"x" * 100_000,
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert huge.status_code == 413
    assert site.membership("ada@example.org") == "active"
    # A broken database: the client gets a plain 500, the log gets the traceback.
    site.settings.database.path.write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        Path(f"{site.settings.database.path}{suffix}").unlink(missing_ok=True)
    broken = httpx.get(url)
    assert broken.status_code == 500
    assert "Traceback" not in broken.text and "sqlite" not in broken.text.lower() and "File " not in broken.text


def test_access_log_never_shows_a_token(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    url = site.one_click_url("ada@example.org")
    token = url.rsplit("/", 1)[1]
    with caplog.at_level(logging.INFO, logger="newsletter.access"):
        httpx.get(url)
        httpx.post(url, data={"List-Unsubscribe": "One-Click"})
        lines = _access_lines(caplog, 2)
    assert len(lines) == 2 and all("/unsubscribe/<token>" in line for line in lines), lines
    assert not any(token in line or token[-10:] in line for line in lines)



def _access_lines(caplog: pytest.LogCaptureFixture, count: int) -> list[str]:
    """The access log's lines once there are ``count`` (or after 10 s): the server logs a request
    after sending its answer, so the client may have the answer first."""
    deadline = time.monotonic() + 10
    while True:
        lines = [record.getMessage() for record in caplog.records if record.name == "newsletter.access"]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.01)


def test_an_oversized_chunked_body_gets_413(site: Site) -> None:
    """No Content-Length to refuse up front: the body is counted as it streams in."""
    url = site.one_click_url("ada@example.org")

    def body() -> Iterator[bytes]:
        yield b"List-Unsubscribe=One-Click&x="
        for _ in range(20):
            yield b"x" * 1024

    response = httpx.post(url, content=body(), headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 413
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert site.membership("ada@example.org") == "active"
    # Just under the cap, streamed the same way, the one-click POST works.
    small = httpx.post(url, content=iter([b"List-Unsubscribe=One-Click&x=", b"x" * 8000]),
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert small.status_code == 200 and site.membership("ada@example.org") == "unsubscribed"


def test_slash_redirects_stay_on_this_site_whatever_the_host_header(site: Site) -> None:
    """A redirect names no host: the Host header is the client's to choose (and says nothing of https)."""
    token = site.one_click_url("ada@example.org").rsplit("/", 1)[1]
    evil = {"Host": "evil.example"}
    for path, location in [
        (f"/unsubscribe/{token}/", f"/unsubscribe/{token}"),
        ("/issues", "/issues/"),
        ("/issues?page=2", "/issues/?page=2"),
        (f"/issues/{SLUG}", f"/issues/{SLUG}/"),
        ("/unsubscribe", "/unsubscribe/"),
        ("/", "/issues/"),
    ]:
        response = httpx.get(f"{site.base}{path}", headers=evil)
        assert response.is_redirect, (path, response.status_code)
        assert response.headers["location"] == location, path
    # A one-click POST to the address with a slash is sent on, as a POST, to this site.
    moved = httpx.post(f"{site.base}/unsubscribe/{token}/", data={"List-Unsubscribe": "One-Click"}, headers=evil)
    assert moved.status_code in (307, 308) and moved.headers["location"] == f"/unsubscribe/{token}"
    followed = httpx.post(f"{site.base}/unsubscribe/{token}/", data={"List-Unsubscribe": "One-Click"},
                          follow_redirects=True)
    assert followed.status_code == 200 and site.membership("ada@example.org") == "unsubscribed"
    # What matches no route is not redirected anywhere (no "//host" from a path that starts "//").
    assert httpx.get(f"{site.base}//evil.example/", headers=evil).status_code == 404


def test_the_access_log_escapes_control_characters_and_cuts_long_paths(site: Site,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    forged = '/issues/x%0d%0a127.0.0.1 "GET /forged" 200 0.1 ms%1b[2J%e2%80%aeevil'
    with caplog.at_level(logging.INFO, logger="newsletter.access"):
        assert httpx.get(f"{site.base}{forged}").status_code == 404
        assert httpx.get(f"{site.base}/issues/{'a' * 10_000}/").status_code == 404
        lines = _access_lines(caplog, 2)
    assert len(lines) == 2, lines
    first, long = lines
    assert not any(char in first for char in "\r\n\x1b\u202e"), first
    # The path as a URL would carry it: line breaks, quotes, escape sequences and a bidi override as %XX.
    assert re.fullmatch(r'127\.0\.0\.1 "GET /issues/x%0D%0A127\.0\.0\.1%20%22GET%20/forged%22%20200%200\.1%20ms'
                        r'%1B%5B2J%E2%80%AEevil" 404 [0-9.]+ ms', first), first
    # The first 200 characters, and the length.
    assert re.fullmatch(r'127\.0\.0\.1 "GET /issues/a{192}\.\.\.\(10009 chars\)" 404 [0-9.]+ ms', long), long


def test_the_archive_lists_sent_issues_without_anyone_s_data(site: Site, tmp_path: Path) -> None:
    index = httpx.get(f"{site.base}/issues/")
    assert index.status_code == 200
    assert f'href="/issues/{SLUG}/"' in index.text
    issue = httpx.get(f"{site.base}/issues/{SLUG}/")
    assert issue.status_code == 200 and "Face to face" in issue.text
    delivered = site.messages()["ada@example.org"]
    token = site.one_click_url("ada@example.org").rsplit("/", 1)[1]
    for private in ("ada@example.org", "Ada", token, "grace@example.org", "/unsubscribe/", "__nl"):
        assert private not in issue.text
    assert "The web version of The Briefing" in issue.text and f'href="{site.base}/issues/"' in issue.text
    # The "view in browser" link of every email points at this page.
    html_part = delivered.get_body(("html",))
    assert html_part is not None
    assert f'href="{site.base}/issues/{SLUG}/"' in html_part.get_content()
    assert httpx.get(f"{site.base}/issues/never-sent/").status_code == 404
    # The static export is the same pages.
    written = build_static(tmp_path / "public", site.settings)
    assert {path.relative_to(tmp_path / "public").as_posix() for path in written} == {
        "issues/index.html", f"issues/{SLUG}/index.html", "issues/feed.xml"}
    assert (tmp_path / "public" / "issues" / SLUG / "index.html").read_text(encoding="utf-8") == issue.text
    assert f'href="./{SLUG}/"' in (tmp_path / "public" / "issues" / "index.html").read_text(encoding="utf-8")


def test_archive_build_command(site: Site, tmp_path: Path) -> None:
    from click.testing import CliRunner

    config = tmp_path / "site.toml"
    config.write_text(f'[sender]\nsite_url = "{site.base}"\n\n[database]\npath = "news.db"\n\n[issues]\ndir = "issues"\n',
                      encoding="utf-8")
    result = CliRunner().invoke(main, ["--config", str(config), "archive", "build", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "issues" / SLUG / "index.html").is_file()


def test_an_unsubscribed_subscriber_is_skipped_by_the_next_issue(site: Site) -> None:
    httpx.post(site.one_click_url("grace@example.org"), data={"List-Unsubscribe": "One-Click"})
    second = site.settings.issues_dir / "2017-07-08-second.md"
    second.write_text(SEED_ISSUE.read_text(encoding="utf-8"), encoding="utf-8")
    before = len(site.messages())
    site.dispatch(second)
    recipients = [str(message["Delivered-To"]) for message in _all_messages(site)][before:]
    assert sorted(recipients) == ["ada@example.org", "alan@example.org"]


def _all_messages(site: Site) -> list[EmailMessage]:
    found = []
    for path in sorted((site.outbox.maildir / "new").iterdir(), key=lambda path: path.stat().st_mtime_ns):
        message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        assert isinstance(message, EmailMessage)
        found.append(message)
    return found


def test_settings_without_a_secret_key_are_refused(tmp_path: Path) -> None:
    from newsletter.errors import ConfigError

    with pytest.raises(ConfigError, match="NEWSLETTER_SECRET_KEY"):
        create_app(replace(Settings(), database=DatabaseSettings(tmp_path / "x.db")))


@pytest.mark.browser
def test_unsubscribe_in_chromium_from_a_captured_message(site: Site) -> None:
    """The link in the email's HTML, opened in a real browser: one click, a confirmation, and the
    database says exactly that subscriber left; the next issue skips them."""
    from playwright.sync_api import sync_playwright

    from tests.harness.browser import CHROMIUM, FLAGS

    html_part = site.messages()["alan@example.org"].get_body(("html",))
    assert html_part is not None
    links = re.findall(r'href="([^"]+/unsubscribe/[^"]+)"', html_part.get_content())
    assert len(links) == 1
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(links[0])
            assert "alan@example.org" in page.inner_text("main")
            assert site.membership("alan@example.org") == "active"
            page.get_by_role("button", name="Unsubscribe").click()
            page.wait_for_selector("text=You are unsubscribed")
            assert page.get_by_role("button", name=re.compile("Subscribe again")).is_visible()
        finally:
            browser.close()
    assert [site.membership(address) for address, _ in PEOPLE] == ["active", "active", "unsubscribed"]
    second = site.settings.issues_dir / "2017-07-08-second.md"
    second.write_text(SEED_ISSUE.read_text(encoding="utf-8"), encoding="utf-8")
    before = len(_all_messages(site))
    site.dispatch(second)
    assert sorted(str(m["Delivered-To"]) for m in _all_messages(site)[before:]) == ["ada@example.org",
                                                                                    "grace@example.org"]


def test_the_archive_shows_an_issue_as_it_was_sent_even_after_its_file_changed(site: Site) -> None:
    source = site.settings.issues_dir / SEED_ISSUE.name
    source.write_text(source.read_text(encoding="utf-8").replace("Face to face", "Edited later"), encoding="utf-8")
    page = httpx.get(f"{site.base}/issues/{SLUG}/")
    assert page.status_code == 200 and "Face to face" in page.text and "Edited later" not in page.text
    source.unlink()
    assert "Face to face" in httpx.get(f"{site.base}/issues/{SLUG}/").text
    assert f'href="/issues/{SLUG}/"' in httpx.get(f"{site.base}/issues/").text


def test_resubscribing_after_a_removal_from_everything_brings_back_only_that_list(site: Site) -> None:
    with Store.open(site.settings.database.path) as store:
        store.upsert_subscribers([SubscriberRow("ada@example.org")], list_name="offers")
        assert store.unsubscribe("ada@example.org")  # the operator: `subscribers remove ada@example.org`
    url = site.one_click_url("ada@example.org")  # the default list's link, in an old issue
    back = httpx.post(url, data={"action": "resubscribe"}, headers={"Sec-Fetch-Site": "same-origin"})
    assert back.status_code == 200 and "Welcome back" in back.text
    with Store.open(site.settings.database.path) as store:
        (ada,) = store.subscribers(emails=["ada@example.org"])
        assert ada.status == "active" and ada.lists == ("default",)  # not "offers": the removal still holds there
        assert [person.email for person in store.subscribers(list_name="offers")] == []


def test_a_bounced_address_is_not_resubscribed_by_the_button(site: Site) -> None:
    url = site.one_click_url("grace@example.org")
    with Store.open(site.settings.database.path) as store:
        (grace,) = store.subscribers(emails=["grace@example.org"])
        store.mark_bounced(grace.id)
    page = httpx.get(url)
    assert page.status_code == 200 and "We can't send to this address" in page.text
    assert 'value="resubscribe"' not in page.text  # no button that can't work
    back = httpx.post(url, data={"action": "resubscribe"}, headers={"Sec-Fetch-Site": "same-origin"})
    assert back.status_code == 409 and "Welcome back" not in back.text and "undeliverable" in back.text
    with Store.open(site.settings.database.path) as store:
        assert [person.status for person in store.subscribers(emails=["grace@example.org"])] == ["bounced"]
        assert store.count(list_name="default") == {"active": 2, "unsubscribed": 0, "bounced": 1}


def test_an_address_that_complained_is_not_resubscribed_by_the_button(site: Site) -> None:
    url = site.one_click_url("grace@example.org")
    with Store.open(site.settings.database.path) as store:
        (grace,) = store.subscribers(emails=["grace@example.org"])
        issue_id = Ledger(store).open_issue(slug="s", list_name="default", subject="S", content_hash="h",
                                            domain="example.com").id
        assert Feedback(store).record_feedback(issue_id=issue_id, subscriber_id=grace.id, kind="complaint",
                                               status=None, diagnostic="", fingerprint="arf") == "complained"
    page = httpx.get(url)
    assert page.status_code == 200 and "reported as spam" in page.text and "undeliverable" not in page.text
    assert 'value="resubscribe"' not in page.text
    back = httpx.post(url, data={"action": "resubscribe"}, headers={"Sec-Fetch-Site": "same-origin"})
    assert back.status_code == 409 and "Welcome back" not in back.text and "reported as spam" in back.text
    with Store.open(site.settings.database.path) as store:
        assert [person.status for person in store.subscribers(emails=["grace@example.org"])] == ["complained"]
        assert store.subscribers(list_name="default", emails=["grace@example.org"]) == []


def test_the_link_of_a_forgotten_reader_shows_nothing_of_them(site: Site) -> None:
    """After `subscribers forget`, an old link names nobody: no placeholder address, no 'undeliverable'."""
    from newsletter.store.rights import DataRights

    url = site.one_click_url("grace@example.org")
    with Store.open(site.settings.database.path) as store:
        assert DataRights(store).forget("grace@example.org", split_keys(KEY)) == "forgotten"
    page = httpx.get(url)
    assert page.status_code == 410 and "erased" in page.text
    assert "forgotten.invalid" not in page.text and "undeliverable" not in page.text and "grace" not in page.text
    back = httpx.post(url, data={"action": "resubscribe"}, headers={"Sec-Fetch-Site": "same-origin"})
    assert back.status_code == 410 and "Welcome back" not in back.text
    one_click = httpx.post(url, data={"List-Unsubscribe": "One-Click"})
    assert one_click.status_code == 200  # RFC 8058: the sender's answer to a one-click POST is success
    with Store.open(site.settings.database.path) as store:
        assert store.subscribers(list_name="default", emails=["grace@example.org"]) == []


def test_a_one_click_unsubscribe_does_not_wait_behind_archive_pages(site: Site,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """40 archive requests in flight, each held inside the archive's own work by a gate this test opens
    only after the one-click POST has been answered (it once waited for all of them, 123 s)."""
    import concurrent.futures

    from newsletter.web import app as webapp
    from newsletter.web import archive

    gate = threading.Event()
    entered = threading.Semaphore(0)
    original = archive.sent_issues

    def held(database: str | Path) -> list[archive.ArchiveEntry]:
        entered.release()
        gate.wait(120)
        return original(database)

    monkeypatch.setattr(archive, "sent_issues", held)
    # Wait until every thread the archive may take is held (before archive pages had threads of their own,
    # they took all 40 of the pool the unsubscribe routes share).
    holding = min(40, getattr(webapp, "ARCHIVE_THREADS", 40))
    url = site.one_click_url("alan@example.org")
    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        pages = [pool.submit(httpx.get, f"{site.base}/issues/", timeout=180) for _ in range(40)]
        try:
            for _ in range(holding):
                assert entered.acquire(timeout=60), "the archive requests never arrived"
            response = httpx.post(url, data={"List-Unsubscribe": "One-Click"}, timeout=30)
            assert response.status_code == 200 and response.text == "Unsubscribed.\n"
            assert site.membership("alan@example.org") == "unsubscribed"
            assert not any(page.done() for page in pages)  # all 40 still held
        finally:
            gate.set()
        assert [page.result().status_code for page in pages] == [200] * 40


# --- a real `newsletter serve` process under idle and slow clients ----------------------------

SERVE_DEADLINE = 60.0  # seconds for start-up and for the server to close what it must: generous, not a speed claim


@dataclass
class Served:
    base: str
    port: int
    pid: int
    database: Path
    one_click_url: str
    log: Path


@contextmanager
def newsletter_serve(tmp_path: Path) -> Iterator[Served]:
    """``newsletter serve`` as its own process (started with a soft limit of 256 open files),
    with one subscriber on one list; stopped with SIGTERM."""
    database = tmp_path / "news.db"
    with Store.open(database) as store:
        store.upsert_subscribers([SubscriberRow("ada@example.org", "Ada")], list_name="default")
        row = store.query("SELECT subscriber_id, list_id FROM memberships")[0]
    token = TokenSigner(split_keys(KEY)).make(int(row["subscriber_id"]), int(row["list_id"]))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = tmp_path / "serve.toml"
    config.write_text(f'[sender]\nsite_url = "{base}"\n\n[database]\npath = "news.db"\n', encoding="utf-8")
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "newsletter", "--config", str(config), "serve", "--port", str(port)]
    with log.open("w") as output, subprocess.Popen(
        ["sh", "-c", 'ulimit -Sn 256 && exec "$@"', "sh", *command], cwd=tmp_path, stdout=output,
        stderr=subprocess.STDOUT, env={**os.environ, "NEWSLETTER_SECRET_KEY": KEY},
    ) as process:
        try:
            deadline = time.monotonic() + SERVE_DEADLINE
            while True:
                assert process.poll() is None, log.read_text(encoding="utf-8")
                assert time.monotonic() < deadline, "newsletter serve did not start"
                try:
                    if httpx.get(f"{base}/unsubscribe/", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            yield Served(base, port, process.pid, database, f"{base}/unsubscribe/{token}", log)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=SERVE_DEADLINE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                pytest.fail("newsletter serve did not stop on SIGTERM")


def _closed_by_server(sockets: list[socket.socket], deadline: float) -> set[socket.socket]:
    """The sockets the server closed before ``deadline`` (what it answered first is read and dropped)."""
    closed: set[socket.socket] = set()
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        while len(closed) < len(sockets) and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                sock = cast(socket.socket, key.fileobj)
                try:
                    if sock.recv(65536):
                        continue
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    pass
                selector.unregister(sock)
                closed.add(sock)
    return closed


def _open_files_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text(encoding="utf-8").splitlines():
        if line.startswith("Max open files"):
            soft, hard = (resource.RLIM_INFINITY if value == "unlimited" else int(value) for value in line.split()[3:5])
            return soft, hard
    raise AssertionError("no open-files line in /proc/PID/limits")


@pytest.mark.slow
def test_idle_and_half_sent_connections_neither_lock_out_a_one_click_post_nor_stay_open(tmp_path: Path) -> None:
    """Slowloris against `newsletter serve`: 300 silent sockets, 300 that send half a request
    header and stop, and a few that stall in a body or after one byte of a next request. A mail
    provider's one-click POST still answers 200 while they are open, and the server closes
    every one of them by itself."""
    with newsletter_serve(tmp_path) as served:
        address = ("127.0.0.1", served.port)
        idle = [socket.create_connection(address) for _ in range(300)]
        half_header = []
        for number in range(300):
            sock = socket.create_connection(address)
            sock.sendall(b"POST /unsubscribe/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow-" + str(number).encode())
            half_header.append(sock)
        half_body = []
        for _ in range(10):
            sock = socket.create_connection(address)
            sock.sendall(b"POST /unsubscribe/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/"
                         b"x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nList-Unsubscribe=")
            half_body.append(sock)
        # A whole request and the first byte of the next: a byte stops uvicorn's keep-alive timer.
        one_more_byte = []
        for _ in range(10):
            sock = socket.create_connection(address)
            sock.sendall(b"GET /unsubscribe/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nG")
            one_more_byte.append(sock)
        stalled = idle + half_header + half_body + one_more_byte
        try:
            response = httpx.post(served.one_click_url, data={"List-Unsubscribe": "One-Click"}, timeout=SERVE_DEADLINE)
            assert response.status_code == 200, response.text
            with Store.open(served.database) as store:
                assert store.query("SELECT status FROM memberships")[0]["status"] == "unsubscribed"
            closed = _closed_by_server(stalled, time.monotonic() + SERVE_DEADLINE)
            assert len(closed) == len(stalled), (
                f"still open after {SERVE_DEADLINE:.0f} s: {len(set(idle) - closed)} idle,"
                f" {len(set(half_header) - closed)} half-sent headers, {len(set(half_body) - closed)} half-sent"
                f" bodies, {len(set(one_more_byte) - closed)} after one byte")
            # The server took what it needed to hold 600 sockets: its limit was 256 files.
            soft, hard = _open_files_limit(served.pid)
            assert soft == (OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_WANTED))
            assert httpx.get(f"{served.base}/unsubscribe/", timeout=SERVE_DEADLINE).status_code == 200
        finally:
            for sock in stalled:
                sock.close()
    output = served.log.read_text(encoding="utf-8")
    assert "Traceback" not in output and "Exceeded concurrency limit" not in output, output
