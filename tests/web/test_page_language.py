"""The web pages speak ``[sender] language``: ``lang`` and direction on every page, dates in the archive."""

from __future__ import annotations

import dataclasses
import re

import feedparser

from newsletter.config import Settings
from newsletter.web.archive import ArchiveEntry, index_page, page
from newsletter.web.feed import FeedItem, atom_feed

ENTRY = ArchiveEntry(slug="2017-07-07-hello", subject="Hallo", first_sent="2017-07-07T06:00:00+00:00")


def settings_in(language: str) -> Settings:
    settings = Settings()
    return dataclasses.replace(settings, sender=dataclasses.replace(settings.sender, language=language))


def html_tag(html: str) -> str:
    found = re.search(r"<html[^>]*>", html)
    assert found is not None
    return found[0]


def test_pages_are_english_by_default() -> None:
    html = index_page([ENTRY], Settings())
    assert html_tag(html) == '<html lang="en" dir="ltr">'
    assert "Friday, July 7, 2017" in html


def test_pages_take_the_sender_language_and_its_direction() -> None:
    german = index_page([ENTRY], settings_in("de"))
    assert html_tag(german) == '<html lang="de" dir="ltr">'
    assert "Freitag, 7. Juli 2017" in german
    hebrew = index_page([ENTRY], settings_in("he"))
    assert html_tag(hebrew) == '<html lang="he" dir="rtl">'
    assert "יום שישי, 7 ביולי 2017" in hebrew
    assert html_tag(page("message.html", settings_in("ar"), heading="h", text="t", link="")) == \
        '<html lang="ar" dir="rtl">'


def test_the_feed_names_its_language() -> None:
    document = atom_feed([FeedItem(ENTRY, "")], settings_in("de"))
    assert b'xml:lang="de"' in document
    parsed = feedparser.parse(document)
    assert not parsed.bozo and parsed.feed.language == "de"
