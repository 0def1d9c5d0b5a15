"""The archive's Atom feed over real HTTP (``GET /issues/feed.xml``) and from ``archive build``.

Issues are dispatched through the project's outbox (a real SMTP server on 127.0.0.1), so the
ledger writes which went out and when; the real application runs under uvicorn on a free port,
and an independent reader (feedparser) reads what it answers.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import feedparser
import httpx
import pytest
import uvicorn
from click.testing import CliRunner

from newsletter.cli.commands import main
from newsletter.config import DatabaseSettings, DispatchSettings, Secret, SenderSettings, Settings, SmtpSettings
from newsletter.devtools.outbox import Outbox
from newsletter.store.subscribers import Store, SubscriberRow
from newsletter.web.app import create_app
from newsletter.web.archive import build_static
from newsletter.web.feed import FEED_LIMIT, atom_feed
from tests.conftest import SEED_ISSUE, write_issue
from tests.harness.smtpserver import free_port
from tests.web.test_app import KEY, PEOPLE, Site

SEED = SEED_ISSUE.stem
MARKUP = "markup"
PLAIN = "plain"
DRAFT = "draft"
#: the subject of the issue MARKUP: what an issue may hold that a feed reader must show as text
HOSTILE_SUBJECT = "Ties & tariffs <script>alert(1)</script> </title>"
#: when each issue went out, as the test sets them: newest is PLAIN, then MARKUP, then the seed
SENT = {
    SEED: dt.datetime(2024, 1, 5, 8, 30, tzinfo=dt.UTC),
    MARKUP: dt.datetime(2024, 2, 1, 9, 0, 15, tzinfo=dt.UTC),
    PLAIN: dt.datetime(2024, 3, 1, 7, 45, tzinfo=dt.UTC),
}


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # a thread can't; the test stops it
        pass


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """Three issues sent (at the times in SENT) and one never sent, with the server running."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    issues = tmp_path / "issues"
    issues.mkdir()
    shutil.copy(SEED_ISSUE, issues / SEED_ISSUE.name)
    write_issue(issues, "# Markup\n\nA <b>bold</b> claim & a caveat.\n", name=f"{MARKUP}.md",
                front=f'subject: "{HOSTILE_SUBJECT}"\ndate: 2024-02-01\npreheader: "Tea & <b>biscuits</b>"\n')
    write_issue(issues, "# Plain\n\nThe **first** paragraph, with [a link](https://example.org/) and `code`.\n\n"
                "The second paragraph.\n", name=f"{PLAIN}.md", front="subject: Plain words\ndate: 2024-03-01\n")
    write_issue(issues, "# Draft\n\nNot yet.\n", name=f"{DRAFT}.md", front="subject: A draft\ndate: 2024-04-01\n")
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
        for slug in SENT:
            result.dispatch(issues / f"{slug}.md")
        # The ledger wrote when each went out (now, within a second of each other): give them
        # days apart, so that the order and the dates the feed shows are the test's to know.
        with Store.open(settings.database.path) as store, store.transaction() as cursor:
            for slug, moment in SENT.items():
                cursor.execute("UPDATE issues SET first_sent_at = ? WHERE slug = ?",
                              (moment.isoformat(timespec="seconds"), slug))
        yield result
    finally:
        server.should_exit = True
        thread.join(10)
        outbox.stop()


def _feed(site: Site) -> httpx.Response:
    response = httpx.get(f"{site.base}/issues/feed.xml")
    assert response.status_code == 200, response.text
    return response


def _parsed(document: bytes) -> feedparser.FeedParserDict:
    parsed = feedparser.parse(document)
    assert not parsed.bozo, parsed.get("bozo_exception")
    assert parsed.version == "atom10"
    return parsed


def _moment(parsed_time: object) -> dt.datetime:
    assert parsed_time is not None
    return dt.datetime.fromtimestamp(calendar.timegm(parsed_time), dt.UTC)  # type: ignore[arg-type]


def test_the_feed_lists_the_sent_issues_newest_first_with_their_pages_and_dates(site: Site) -> None:
    response = _feed(site)
    assert response.headers["content-type"] == "application/atom+xml; charset=utf-8"
    # The same security headers as every other page of the archive.
    policy_header = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy_header and "script-src" not in policy_header
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert "set-cookie" not in response.headers
    parsed = _parsed(response.content)
    assert parsed.feed.title == site.settings.sender.from_name
    assert parsed.feed.id == f"{site.base}/issues/"
    links = {link["rel"]: link["href"] for link in parsed.feed.links}
    assert links == {"self": f"{site.base}/issues/feed.xml", "alternate": f"{site.base}/issues/"}
    assert _moment(parsed.feed.updated_parsed) == SENT[PLAIN]  # the newest entry
    # Newest first; the draft (never dispatched) is not in it.
    assert [entry.link for entry in parsed.entries] == [
        f"{site.base}/issues/{slug}/" for slug in (PLAIN, MARKUP, SEED)]
    for entry in parsed.entries:
        slug = entry.link.rstrip("/").rsplit("/", 1)[1]
        assert entry.id == entry.link
        assert _moment(entry.published_parsed) == SENT[slug]
        assert _moment(entry.updated_parsed) == SENT[slug]
        assert httpx.get(entry.link).status_code == 200  # every entry's page is online
    assert DRAFT not in response.text and "A draft" not in response.text
    titles = [entry.title for entry in parsed.entries]
    assert titles[0] == "Plain words" and titles[2].startswith("A big, beautiful handshake.")
    # The summary: the preheader, else the first paragraph, as plain text.
    assert parsed.entries[2].summary == ("Trump pressed Putin on election meddling in a meeting that ran two hours"
                                        " and 16 minutes.")
    assert parsed.entries[0].summary == "The first paragraph, with a link and code."
    # Nobody's data is in it.
    for private in ("ada@example.org", "Ada", "/unsubscribe/", "__nl"):
        assert private not in response.text


def test_an_issue_that_reached_nobody_is_not_in_the_feed(site: Site) -> None:
    # Dispatched, but its first message never went out (the ledger has no first_sent_at).
    with Store.open(site.settings.database.path) as store, store.transaction() as cursor:
        cursor.execute("UPDATE issues SET first_sent_at = NULL WHERE slug = ?", (MARKUP,))
    parsed = _parsed(_feed(site).content)
    assert [entry.link for entry in parsed.entries] == [f"{site.base}/issues/{slug}/" for slug in (PLAIN, SEED)]


def test_markup_in_a_subject_or_summary_comes_out_as_text(site: Site) -> None:
    response = _feed(site)
    raw = response.text
    assert "<script>" not in raw and "<b>" not in raw and "</title> </title>" not in raw
    assert "Ties &amp; tariffs &lt;script&gt;alert(1)&lt;/script&gt; &lt;/title&gt;" in raw
    entry = _parsed(response.content).entries[1]
    assert entry.title == HOSTILE_SUBJECT
    assert entry.title_detail.type == "text/plain"
    assert entry.summary == "Tea & <b>biscuits</b>"
    assert entry.summary_detail.type == "text/plain"


def test_the_archive_pages_link_the_feed(site: Site) -> None:
    pattern = r'<link rel="alternate" type="application/atom\+xml" title="The Briefing" href="([^"]+)">'
    index = httpx.get(f"{site.base}/issues/")
    found = re.search(pattern, index.text)
    assert found is not None, index.text
    assert found.group(1) == "/issues/feed.xml"
    assert httpx.get(f"{site.base}{found.group(1)}").content == _feed(site).content
    page = httpx.get(f"{site.base}/issues/{SEED}/")
    found = re.search(pattern, page.text)
    assert found is not None and found.group(1) == f"{site.base}/issues/feed.xml"
    # Only the web version names the feed; the email itself does not.
    html_part = site.messages()["ada@example.org"].get_body(("html",))
    assert html_part is not None and "feed.xml" not in html_part.get_content()


def test_archive_build_writes_the_same_feed(site: Site, tmp_path: Path) -> None:
    served = _feed(site).content
    written = build_static(tmp_path / "public", site.settings)
    assert tmp_path / "public" / "issues" / "feed.xml" in written
    assert (tmp_path / "public" / "issues" / "feed.xml").read_bytes() == served
    index = (tmp_path / "public" / "issues" / "index.html").read_text(encoding="utf-8")
    assert 'type="application/atom+xml" title="The Briefing" href="./feed.xml"' in index
    # And through the command line.
    config = tmp_path / "site.toml"
    config.write_text(f'[sender]\nsite_url = "{site.base}"\n\n[database]\npath = "news.db"\n\n[issues]\ndir = "issues"\n',
                      encoding="utf-8")
    result = CliRunner().invoke(main, ["--config", str(config), "archive", "build", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "wrote 3 issue page(s), the index and feed.xml" in result.output
    assert (tmp_path / "out" / "issues" / "feed.xml").read_bytes() == served


def test_an_archive_with_no_issue_sent_has_a_valid_empty_feed(tmp_path: Path) -> None:
    settings = Settings(sender=SenderSettings(site_url="https://news.example.com"),
                        database=DatabaseSettings(tmp_path / "none.db"), issues_dir=tmp_path)
    written = build_static(tmp_path / "public", settings)
    document = (tmp_path / "public" / "issues" / "feed.xml").read_bytes()
    assert tmp_path / "public" / "issues" / "feed.xml" in written
    parsed = _parsed(document)
    assert parsed.entries == [] and parsed.feed.title == "The Briefing"
    assert document == atom_feed([], settings)  # the same every time: nothing in it moves


def test_the_feed_holds_the_latest_fifty_issues(site: Site) -> None:
    # 60 more issues as the ledger records them once sent (text kept, first_sent_at written), in 2025.
    text = "---\nsubject: Old news\ndate: 2025-01-01\n---\n# Old\n\nOld news.\n"
    with Store.open(site.settings.database.path) as store, store.transaction() as cursor:
        for number in range(60):
            moment = dt.datetime(2025, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=number)
            cursor.execute("INSERT INTO issues (slug, list_name, subject, content_hash, created_at, source_text,"
                           " first_sent_at) VALUES (?, 'default', ?, 'x', ?, ?, ?)",
                           (f"old-{number:02d}", f"Old news {number}", moment.isoformat(), text, moment.isoformat()))
    parsed = _parsed(_feed(site).content)
    assert len(parsed.entries) == FEED_LIMIT == 50
    assert [entry.title for entry in parsed.entries] == [f"Old news {number}" for number in range(59, 9, -1)]
    assert _moment(parsed.feed.updated_parsed) == dt.datetime(2025, 3, 1, tzinfo=dt.UTC)  # day 59 of 2025
