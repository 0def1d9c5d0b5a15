"""``/preferences/<token>`` over real HTTP (issue 16 item 5): the page, every answer (forged 400,
forgotten 410, suppressed 409, cross-site 403, a bad name 400), escaping, what a save does to the
database, the access log; and in Chromium from the link in a captured email.

The real application runs under uvicorn on a free port with an SQLite file; the seed issue is
dispatched through the project's outbox (a real SMTP server on 127.0.0.1) so that the footer's
links point at it ([sender] site_url).
"""

from __future__ import annotations

import email
import logging
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
import uvicorn

from newsletter.config import (
    DatabaseSettings,
    DispatchSettings,
    ListSettings,
    Secret,
    SenderSettings,
    Settings,
    SmtpSettings,
)
from newsletter.deliver.dispatch import DispatchOptions, dispatch
from newsletter.devtools.outbox import Outbox
from newsletter.store.consent import Consents
from newsletter.store.feedback import Feedback
from newsletter.store.ledger import Ledger
from newsletter.store.rights import DataRights
from newsletter.store.subscribers import Store, SubscriberRow
from newsletter.tokens import TokenSigner, split_keys
from newsletter.web.app import create_app
from tests.conftest import SEED_ISSUE
from tests.harness.smtpserver import free_port

KEY = "preferences-test-key-0123456789abcdef"
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin"}
LISTS = (
    ListSettings("default", "The Daily Briefing", "The day's news in five minutes."),
    ListSettings("weekly", "The Weekly Review", "Saturdays: the week <in> one read & a map."),
    ListSettings("staff", "Staff notes", "Only for the team.", signup=False),
)


@dataclass
class Site:
    settings: Settings
    base: str
    outbox: Outbox

    def token(self, address: str, list_name: str = "default") -> str:
        with Store.open(self.settings.database.path) as store:
            row = store.query("SELECT id FROM subscribers WHERE email_key = ?", (address,))[0]
            list_id = store.find_list(list_name)
        assert list_id is not None
        return TokenSigner(split_keys(KEY)).make(int(row[0]), list_id)

    def url(self, address: str, list_name: str = "default") -> str:
        return f"{self.base}/preferences/{self.token(address, list_name)}"

    def lists(self, address: str) -> dict[str, str]:
        with Store.open(self.settings.database.path) as store:
            rows = store.query("SELECT l.name, m.status FROM memberships m JOIN lists l ON l.id = m.list_id"
                               " JOIN subscribers s ON s.id = m.subscriber_id WHERE s.email_key = ?", (address,))
        return {str(row[0]): str(row[1]) for row in rows}

    def person(self, address: str) -> tuple[str, str]:
        """(name, status)."""
        with Store.open(self.settings.database.path) as store:
            row = store.query("SELECT name, status FROM subscribers WHERE email_key = ?", (address,))[0]
        return str(row[0]), str(row[1])

    def messages(self) -> dict[str, EmailMessage]:
        found: dict[str, EmailMessage] = {}
        for path in sorted((self.outbox.maildir / "new").iterdir()):
            message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
            assert isinstance(message, EmailMessage)
            found[str(message["Delivered-To"])] = message
        return found


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # a thread can't; the test stops it
        pass


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """Ada (on default and staff), Bob and Cleo on default; the seed issue dispatched to them."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    issues = tmp_path / "issues"
    issues.mkdir()
    shutil.copy(SEED_ISSUE, issues / SEED_ISSUE.name)
    outbox = Outbox(tmp_path / "outbox", port=0)
    outbox.start()
    settings = Settings(
        sender=SenderSettings(site_url=base),
        smtp=SmtpSettings(port=outbox.port, connections=1, timeout=10),
        database=DatabaseSettings(tmp_path / "news.db"),
        dispatch=DispatchSettings(wait_for_retries=0),
        issues_dir=issues,
        secret_key=Secret(KEY),
        lists=LISTS,
    )
    with Store.open(settings.database.path) as store:
        store.upsert_subscribers([SubscriberRow("ada@example.org", "Ada"), SubscriberRow("bob@example.org", "Bob"),
                                  SubscriberRow("cleo@example.org", "Cleo")], list_name="default")
        store.upsert_subscribers([SubscriberRow("ada@example.org")], list_name="staff")
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
        report = dispatch(settings, DispatchOptions(issue=str(issues / SEED_ISSUE.name)))
        assert report.exit_code == 0, report
        yield Site(settings, base, outbox)
    finally:
        server.should_exit = True
        thread.join(10)
        outbox.stop()


def _checkboxes(html: str) -> dict[str, bool]:
    """list name -> ticked, from the page's checkboxes."""
    found: dict[str, bool] = {}
    for tag in re.findall(r"<input[^>]*type=\"checkbox\"[^>]*>", html):
        value = re.search(r'value="([^"]*)"', tag)
        assert value is not None, tag
        found[value.group(1)] = re.search(r"\schecked[\s>]", tag) is not None
    return found


def test_the_page_shows_the_reader_their_lists_and_the_lists_offered_and_changes_nothing(site: Site) -> None:
    page = httpx.get(site.url("ada@example.org"))
    assert page.status_code == 200
    assert "ada@example.org" in page.text and 'value="Ada"' in page.text
    # Their lists (staff too, though it isn't offered for signup) and every list offered, in the file's order.
    assert _checkboxes(page.text) == {"default": True, "weekly": False, "staff": True}
    assert "The Daily Briefing" in page.text and "Only for the team." in page.text
    assert "Saturdays: the week &lt;in&gt; one read &amp; a map." in page.text
    assert re.findall(r'name="shown" value="([^"]+)"', page.text) == ["default", "weekly", "staff"]
    # Bob is not on staff and it isn't offered: not on his page.
    assert _checkboxes(httpx.get(site.url("bob@example.org")).text) == {"default": True, "weekly": False}
    assert httpx.head(site.url("ada@example.org")).status_code == 200
    assert site.lists("ada@example.org") == {"default": "active", "staff": "active"}  # a GET changes nothing
    policy_header = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy_header and "script-src" not in policy_header
    assert "form-action 'self'" in policy_header
    assert page.headers["referrer-policy"] == "no-referrer" and page.headers["x-frame-options"] == "DENY"
    assert "set-cookie" not in page.headers
    assert httpx.get(f"{site.base}/preferences/").status_code == 200


def test_a_save_joins_leaves_renames_and_records_the_consent(site: Site) -> None:
    url = site.url("ada@example.org")
    saved = httpx.post(url, headers=SAME_ORIGIN, data={
        "name": "Ada Lovelace", "shown": ["default", "weekly", "staff"], "list": ["weekly", "staff"]})
    assert saved.status_code == 200, saved.text
    assert "Saved." in saved.text and "You now get The Weekly Review" in saved.text
    assert "no more issues of The Daily Briefing" in saved.text
    assert _checkboxes(saved.text) == {"default": False, "weekly": True, "staff": True}
    assert site.lists("ada@example.org") == {"default": "unsubscribed", "weekly": "active", "staff": "active"}
    assert site.person("ada@example.org") == ("Ada Lovelace", "active")
    with Store.open(site.settings.database.path) as store:
        subscriber_id = int(store.query("SELECT id FROM subscribers WHERE email_key = 'ada@example.org'")[0][0])
        (consent,) = Consents(store).of_subscriber(subscriber_id)
    assert (consent.list, consent.method, consent.source, consent.ip_prefix) == (
        "weekly", "form", "preferences page", "127.0.0.0/24")
    assert consent.confirmed_at == consent.requested_at
    # The default list's token still opens the page (a list left is still theirs to come back to).
    back = httpx.post(url, headers=SAME_ORIGIN, data={"shown": ["default"], "list": ["default"]})
    assert back.status_code == 200 and site.lists("ada@example.org")["default"] == "active"
    assert site.person("ada@example.org") == ("Ada Lovelace", "active")  # no name field: the name stays


def test_only_the_lists_the_page_showed_and_the_reader_may_choose_are_touched(site: Site) -> None:
    url = site.url("bob@example.org")
    # 'staff' is not offered and Bob isn't on it; 'nowhere' is no list at all: a forged form can't join them.
    forged = httpx.post(url, headers=SAME_ORIGIN, data={"shown": ["default", "staff", "nowhere"],
                                                        "list": ["default", "staff", "nowhere"]})
    assert forged.status_code == 200
    assert site.lists("bob@example.org") == {"default": "active"}
    with Store.open(site.settings.database.path) as store:
        assert store.find_list("nowhere") is None
    # A list the page didn't show (Bob joined it since) is not left by a save that doesn't tick it.
    with Store.open(site.settings.database.path) as store:
        store.upsert_subscribers([SubscriberRow("bob@example.org")], list_name="weekly")
    httpx.post(url, headers=SAME_ORIGIN, data={"shown": ["default"], "list": ["default"]})
    assert site.lists("bob@example.org") == {"default": "active", "weekly": "active"}


@pytest.mark.parametrize("forge", ["flip-last", "other-subscriber", "garbage", "other-key", "empty-mac"])
def test_forged_altered_or_malformed_tokens_get_400_and_change_nothing(site: Site, forge: str) -> None:
    token = site.token("ada@example.org")
    subscriber, list_id, signature = token.split("-", 2)
    forged = {
        "flip-last": token[:-1] + ("A" if token[-1] != "A" else "B"),
        "other-subscriber": f"{int(subscriber) + 1}-{list_id}-{signature}",
        "garbage": "<script>alert(1)<script>",
        "other-key": f"{subscriber}-{list_id}-{'x' * len(signature)}",
        "empty-mac": f"{subscriber}-{list_id}-",
    }[forge]
    page = httpx.get(f"{site.base}/preferences/{forged}")
    post = httpx.post(f"{site.base}/preferences/{forged}", headers=SAME_ORIGIN,
                      data={"name": "Mallory", "shown": ["default", "weekly"], "list": ["weekly"]})
    assert (page.status_code, post.status_code) == (400, 400)
    for response in (page, post):
        assert "<script>alert" not in response.text and "ada@example.org" not in response.text
        assert "not valid" in response.text
    assert site.lists("ada@example.org") == {"default": "active", "staff": "active"}
    assert site.person("ada@example.org") == ("Ada", "active")


def test_a_token_for_a_membership_that_is_not_there_gets_400(site: Site) -> None:
    token = TokenSigner(split_keys(KEY)).make(1, 999)  # a real signature, a list Ada was never on
    assert httpx.get(f"{site.base}/preferences/{token}").status_code == 400


def test_a_forgotten_reader_gets_410_and_nothing_of_them(site: Site) -> None:
    url = site.url("cleo@example.org")
    with Store.open(site.settings.database.path) as store:
        assert DataRights(store).forget("cleo@example.org", split_keys(KEY)) == "forgotten"
    page = httpx.get(url)
    post = httpx.post(url, headers=SAME_ORIGIN, data={"name": "Cleo", "shown": ["default", "weekly"],
                                                      "list": ["default", "weekly"]})
    assert (page.status_code, post.status_code) == (410, 410)
    for response in (page, post):
        assert "erased" in response.text
        assert "forgotten.invalid" not in response.text and "Cleo" not in response.text
        assert "cleo" not in response.text
    with Store.open(site.settings.database.path) as store:
        row = store.query("SELECT name, status FROM subscribers WHERE email_key LIKE 'forgotten-%'")[0]
        assert (row[0], row[1]) == ("", "forgotten")
        assert store.find_list("weekly") is None and store.query("SELECT 1 FROM consents") == []


@pytest.mark.parametrize("kind", ["bounced", "complained"])
def test_a_suppressed_address_can_not_join(site: Site, kind: str) -> None:
    url = site.url("bob@example.org")
    with Store.open(site.settings.database.path) as store:
        (bob,) = store.subscribers(emails=["bob@example.org"])
        if kind == "bounced":
            store.mark_bounced(bob.id)
        else:
            issue_id = Ledger(store).open_issue(slug="s", list_name="default", subject="S", content_hash="h",
                                                domain="example.com").id
            assert Feedback(store).record_feedback(issue_id=issue_id, subscriber_id=bob.id, kind="complaint",
                                                   status=None, diagnostic="", fingerprint="arf") == "complained"
    page = httpx.get(url)
    assert page.status_code == 200
    assert ("reported as spam" if kind == "complained" else "undeliverable") in page.text
    assert 'name="shown"' not in page.text and page.text.count("disabled") == 2  # no box can be ticked
    before = site.lists("bob@example.org")
    join = httpx.post(url, headers=SAME_ORIGIN, data={"shown": ["default", "weekly"], "list": ["default", "weekly"]})
    assert join.status_code == 409 and "Saved." not in join.text
    assert site.lists("bob@example.org") == before and site.person("bob@example.org") == ("Bob", kind)
    with Store.open(site.settings.database.path) as store:
        assert store.query("SELECT 1 FROM consents") == []


def test_cross_site_form_posts_are_refused(site: Site) -> None:
    url = site.url("ada@example.org")
    data = {"name": "Mallory", "shown": ["default", "weekly"], "list": ["weekly"]}
    by_fetch_site = httpx.post(url, data=data, headers={"Sec-Fetch-Site": "cross-site"})
    same_site = httpx.post(url, data=data, headers={"Sec-Fetch-Site": "same-site"})  # a sibling subdomain
    by_origin = httpx.post(url, data=data, headers={"Origin": "https://evil.example"})
    assert by_fetch_site.status_code == same_site.status_code == by_origin.status_code == 403
    assert site.lists("ada@example.org") == {"default": "active", "staff": "active"}
    assert site.person("ada@example.org") == ("Ada", "active")
    # The site's own origin is accepted.
    own = httpx.post(url, data={"name": "Ada", "shown": ["default"], "list": ["default"]},
                     headers={"Origin": site.base})
    assert own.status_code == 200


def test_names_are_escaped_and_a_name_too_long_gets_the_form_back_with_the_error(site: Site) -> None:
    url = site.url("ada@example.org")
    evil = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
    saved = httpx.post(url, headers=SAME_ORIGIN, data={"name": evil, "shown": ["default"], "list": ["default"]})
    assert saved.status_code == 200
    assert site.person("ada@example.org")[0] == evil  # stored as typed: it is text
    for page in (saved, httpx.get(url)):
        assert "<script>" not in page.text and "<img src=x" not in page.text
        assert 'value="&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;"' in page.text
    # A line break or a control character can't reach the name.
    httpx.post(url, headers=SAME_ORIGIN, data={"name": "Ada\r\nBcc: x@example.org\x1b[2J"})
    assert site.person("ada@example.org")[0] == "Ada Bcc: x@example.org [2J"
    long = "<b>" + "x" * 300
    refused = httpx.post(url, headers=SAME_ORIGIN, data={"name": long, "shown": ["default", "weekly"],
                                                         "list": ["default", "weekly"]})
    assert refused.status_code == 400
    assert 'aria-invalid="true"' in refused.text and 'id="name-error"' in refused.text and "200 characters" in refused.text
    assert f'value="&lt;b&gt;{"x" * 300}"' in refused.text  # what was typed, kept, escaped
    assert site.person("ada@example.org")[0] == "Ada Bcc: x@example.org [2J"  # nothing half-done
    assert "weekly" not in site.lists("ada@example.org")


def test_the_access_log_never_shows_a_preferences_token(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    token = site.token("ada@example.org")
    with caplog.at_level(logging.INFO, logger="newsletter.access"):
        httpx.get(f"{site.base}/preferences/{token}")
        httpx.post(f"{site.base}/preferences/{token}", headers=SAME_ORIGIN, data={"shown": ["default"]})
        deadline = time.monotonic() + 10
        while True:
            lines = [record.getMessage() for record in caplog.records if record.name == "newsletter.access"]
            if len(lines) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.01)
    assert len(lines) == 2 and all("/preferences/<token>" in line for line in lines), lines
    assert not any(token in line or token[-10:] in line for line in lines)


def test_the_page_passes_the_accessibility_checks_the_emails_get(site: Site) -> None:
    from newsletter.preflight.accessibility import check_accessibility

    for response in (httpx.get(site.url("ada@example.org")),
                     httpx.post(site.url("ada@example.org"), headers=SAME_ORIGIN, data={"name": "x" * 300})):
        findings = [finding for finding in check_accessibility(response.text) if finding.severity != "info"]
        assert findings == [], findings
    page = httpx.get(site.url("ada@example.org")).text
    # Every box has its label; the lists are one group with a name.
    for number in range(1, 4):
        assert f'<label for="list-{number}">' in page and f'id="list-{number}"' in page
    assert "<fieldset>" in page and "<legend>Your lists</legend>" in page and '<label class="field" for="name">' in page


@pytest.mark.browser
def test_preferences_changed_in_chromium_from_a_captured_message(site: Site) -> None:
    """The footer link of a delivered email, opened in a real browser on a 375 px phone screen: the
    reader renames themselves, joins a list and leaves one; the database says exactly that, and the
    next issue of the list they left skips them."""
    from playwright.sync_api import sync_playwright

    from tests.harness.browser import CHROMIUM, FLAGS

    delivered = site.messages()["ada@example.org"]
    html_part, text_part = delivered.get_body(("html",)), delivered.get_body(("plain",))
    assert html_part is not None and text_part is not None
    links = re.findall(r'href="([^"]+/preferences/[^"]+)"', html_part.get_content())
    assert links == [site.url("ada@example.org")]  # one, with the same token as the unsubscribe link
    assert links[0] in text_part.get_content()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 375, "height": 800})
            page.goto(links[0])
            assert "ada@example.org" in page.inner_text("main")
            assert page.evaluate("document.documentElement.scrollWidth") <= 375  # nothing wider than the phone
            assert page.get_by_label("The Daily Briefing").is_checked()
            assert not page.get_by_label("The Weekly Review").is_checked()
            page.get_by_label("Your name").fill("Ada King")
            page.get_by_label("The Weekly Review").check()
            page.get_by_label("The Daily Briefing").uncheck()
            assert site.lists("ada@example.org") == {"default": "active", "staff": "active"}  # not saved yet
            page.get_by_role("button", name="Save").click()
            page.wait_for_selector("text=Saved.")
            assert "You now get The Weekly Review" in page.inner_text("main")
            assert page.get_by_label("The Weekly Review").is_checked()
            assert not page.get_by_label("The Daily Briefing").is_checked()
            assert page.get_by_label("Your name").input_value() == "Ada King"
        finally:
            browser.close()
    assert site.lists("ada@example.org") == {"default": "unsubscribed", "weekly": "active", "staff": "active"}
    assert site.person("ada@example.org") == ("Ada King", "active")
    with Store.open(site.settings.database.path) as store:
        consents = store.query("SELECT l.name, c.method, c.source FROM consents c JOIN lists l ON l.id = c.list_id")
    assert [tuple(row) for row in consents] == [("weekly", "form", "preferences page")]
    second = site.settings.issues_dir / "2017-07-08-second.md"
    second.write_text(SEED_ISSUE.read_text(encoding="utf-8"), encoding="utf-8")
    before = set((site.outbox.maildir / "new").iterdir())
    report = dispatch(site.settings, DispatchOptions(issue=str(second)))
    assert report.exit_code == 0, report
    new = set((site.outbox.maildir / "new").iterdir()) - before
    recipients = {str(email.message_from_bytes(path.read_bytes(), policy=policy.default)["Delivered-To"])
                  for path in new}
    assert recipients == {"bob@example.org", "cleo@example.org"}
