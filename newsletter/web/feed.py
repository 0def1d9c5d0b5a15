"""The archive's Atom feed (RFC 4287): the latest sent issues, newest first, built with feedgen.

``newsletter serve`` answers ``/issues/feed.xml`` with it and ``newsletter archive build DIR``
writes the same bytes to ``DIR/issues/feed.xml``. Each entry is one sent issue: its subject,
its archive page (the link and the id), when its first message went out, and a summary in
plain text (the preheader, else the first paragraph). The feed names no reader: it is built
from the ``issues`` rows alone, never the deliveries.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feedgen.feed import FeedGenerator

from newsletter.config import Settings
from newsletter.errors import NewsletterError
from newsletter.issue.parse import inline_text, parse_issue
from newsletter.language import parse_language
from newsletter.models import Issue, Paragraph
from newsletter.store.engine import Database
from newsletter.web.archive import ArchiveEntry, find_issue_file

__all__ = [
    "FEED_LIMIT",
    "FEED_SQL",
    "FeedItem",
    "MEDIA_TYPE",
    "SUMMARY_CHARS",
    "atom_feed",
    "feed_items",
    "feed_url",
    "summary",
]

#: the feed's Content-Type (RFC 4287 section 7)
MEDIA_TYPE = "application/atom+xml; charset=utf-8"
#: how many issues the feed holds: the latest ones (feed readers keep what they saw before)
FEED_LIMIT = 50
#: a summary longer than this is cut at a word and ends with "…"
SUMMARY_CHARS = 500
#: the feed's rows: the latest issues that went out, with their text as sent, from ``issues`` alone
#: (one row per issue, as the archive index reads; never the deliveries)
FEED_SQL = ("SELECT slug, subject, first_sent_at, source_text FROM issues WHERE first_sent_at IS NOT NULL"
            f" ORDER BY first_sent_at DESC, slug LIMIT {FEED_LIMIT}")
#: the feed's ``updated`` when no issue went out yet: fixed, so that an empty feed never changes
_NEVER = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class FeedItem:
    """One entry of the feed: a sent issue and its summary in plain text ("" when it has none)."""

    entry: ArchiveEntry
    summary: str


def feed_url(settings: Settings) -> str:
    """Where the feed is: ``[sender] site_url`` + ``/issues/feed.xml``."""
    return f"{settings.sender.site_url}/issues/feed.xml"


def feed_items(database: str | Path, issues_dir: Path,
               summaries: MutableMapping[str, str] | None = None) -> list[FeedItem]:
    """The latest :data:`FEED_LIMIT` sent issues, newest first, with their summaries.

    An issue's text is the one the ledger kept as sent, else its file in ``issues_dir`` now; an
    issue with neither is left out (the archive shows no page for it). ``summaries`` caches the
    summary of each text by its digest, so that a server parses each issue once.
    """
    if isinstance(database, Path) and not database.exists():
        return []
    with Database.open(database) as store:
        rows = store.query(FEED_SQL)
    items = []
    for row in rows:
        text, source = _text(row, issues_dir)
        if text is None:
            continue
        entry = ArchiveEntry(str(row["slug"]), str(row["subject"]), str(row["first_sent_at"]),
                             row["source_text"] is not None)
        if summaries is None:
            items.append(FeedItem(entry, summary(text, source)))
            continue
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        found = summaries.get(digest)
        if found is None:
            summaries[digest] = found = summary(text, source)
        items.append(FeedItem(entry, found))
    return items


def _text(row: Any, issues_dir: Path) -> tuple[str | None, str]:
    slug = str(row["slug"])
    if row["source_text"] is not None:
        return str(row["source_text"]), f"{slug}.md"
    path = find_issue_file(issues_dir, slug)
    if path is None:
        return None, ""
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except (OSError, UnicodeDecodeError):
        return None, ""


def summary(text: str, source: str = "<issue>") -> str:
    """The issue ``text``'s summary in plain text: its preheader, else its first paragraph ("" when the
    text no longer parses: the entry goes out without one)."""
    try:
        issue = parse_issue(text, source=source)
    except NewsletterError:
        return ""
    found = issue.preheader or _first_paragraph(issue)
    found = " ".join(found.split())
    if len(found) <= SUMMARY_CHARS:
        return found
    cut = found[:SUMMARY_CHARS].rsplit(" ", 1)[0]
    return f"{cut}…"


def _first_paragraph(issue: Issue) -> str:
    for section in issue.sections:
        for block in section.blocks:
            if isinstance(block, Paragraph):
                return inline_text(block.content)
    return ""


def atom_feed(items: list[FeedItem], settings: Settings) -> bytes:
    """The Atom document for ``items`` (newest first), UTF-8. Links are absolute, under ``[sender] site_url``.

    Titles and summaries are text: feedgen escapes them, so an issue's ``<`` or ``&`` reads as
    itself and no markup from an issue gets into a reader's page.
    """
    site = settings.sender.site_url
    name = settings.sender.from_name
    feed = FeedGenerator()
    feed.id(f"{site}/issues/")
    feed.title(name)
    feed.author({"name": name})  # RFC 4287 4.1.1: a feed whose entries name no author names one
    feed.link(href=feed_url(settings), rel="self", type="application/atom+xml")
    feed.link(href=f"{site}/issues/", rel="alternate", type="text/html")
    feed.generator("newsletter")
    feed.language(parse_language(settings.sender.language).tag)  # xml:lang on the feed: its titles' language
    newest = _NEVER
    for item in items:
        sent = _moment(item.entry.first_sent)
        if sent is None:
            continue
        newest = max(newest, sent)
        page = f"{site}/issues/{item.entry.slug}/"
        entry = feed.add_entry(order="append")
        entry.id(page)  # the page's address: the same for as long as the issue is online
        entry.title(item.entry.subject)
        entry.link(href=page, rel="alternate", type="text/html")
        entry.published(sent)
        entry.updated(sent)
        if item.summary:
            entry.summary(item.summary)
    feed.updated(newest)
    document: bytes = feed.atom_str(pretty=True)
    return document


def _moment(value: str) -> dt.datetime | None:
    """``first_sent_at`` (ISO 8601, written in UTC) as an aware datetime; None if it is not one."""
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)
