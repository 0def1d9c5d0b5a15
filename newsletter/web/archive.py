"""The web archive: every sent issue's web version and an index of them, as HTML strings.

``newsletter serve`` answers ``/issues/`` and ``/issues/<slug>/`` with these; ``newsletter
archive build DIR`` writes the same pages as static files. An issue's web version is its
email with no recipient in it: no name, no address, no unsubscribe link (the template's
``web`` flag swaps the footer for a link to all issues).
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import jinja2

from newsletter.compose.message import fill_html
from newsletter.config import Settings
from newsletter.issue.parse import parse_issue, slug_from_path
from newsletter.language import DEFAULT_LANGUAGE, Language, local_date, parse_language
from newsletter.models import Recipient
from newsletter.render.engine import render_issue
from newsletter.render.i18n import Wording, configure_environment, wording_for
from newsletter.store.engine import Database

__all__ = [
    "ArchiveEntry",
    "INDEX_SQL",
    "SLUG_SQL",
    "available",
    "build_static",
    "find_issue_file",
    "index_page",
    "issue_source",
    "page",
    "sent_issue",
    "sent_issue_source",
    "sent_issues",
    "web_recipient",
    "web_version",
    "wording",
]

_PAGES = jinja2.Environment(
    loader=jinja2.PackageLoader("newsletter.web", "pages"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    extensions=["jinja2.ext.i18n"],  # {% trans %}: page() passes the site's language's gettext
)
configure_environment(_PAGES, Wording(parse_language(DEFAULT_LANGUAGE)))


@dataclass(frozen=True)
class ArchiveEntry:
    """One sent issue in the archive."""

    slug: str
    subject: str
    #: when its first message went out (ISO 8601, UTC)
    first_sent: str
    #: whether the ledger kept the issue's text as sent (not for issues dispatched before it did)
    kept: bool = False

    def date_text(self, language: Language, date_format: str = "full") -> str:
        """The day it went out, as a reader of ``language`` writes it (``Friday, July 7, 2017``)."""
        try:
            day = dt.datetime.fromisoformat(self.first_sent).date()
        except ValueError:
            return self.first_sent
        return local_date(day, language, date_format)


def wording(settings: Settings) -> Wording:
    """The catalogs of the site's language (``[sender] language``), ``[templates] dir``'s own first."""
    return wording_for(parse_language(settings.sender.language), settings.templates_dir)


def page(template: str, settings: Settings, **values: object) -> str:
    """One of the small pages in ``newsletter/web/pages`` (autoescaped), with the sender's name and address,
    in ``[sender] language`` (its ``lang`` and direction, and its words: :func:`wording`)."""
    language = parse_language(settings.sender.language)
    return _PAGES.get_template(template).render(
        sender_name=settings.sender.from_name, postal_address=settings.sender.postal_address,
        lang=language.tag, dir=language.direction, **wording(settings).template_functions(), **values
    )


#: what the archive reads of an issue: one row of ``issues`` each (``first_sent_at`` is written by the
#: ledger when the issue's first message is marked sent), never its deliveries
_ENTRY = "SELECT slug, subject, first_sent_at, source_text IS NOT NULL AS kept FROM issues"
#: the index: one row per issue that went out (issues are few; no delivery is read)
INDEX_SQL = f"{_ENTRY} WHERE first_sent_at IS NOT NULL ORDER BY first_sent_at DESC, slug"
#: one issue's page (with its text as sent): a search of the slug's unique index, for unknown slugs too
SLUG_SQL = ("SELECT slug, subject, first_sent_at, source_text IS NOT NULL AS kept, source_text FROM issues"
            " WHERE slug = ? AND first_sent_at IS NOT NULL")


def sent_issues(database: str | Path) -> list[ArchiveEntry]:
    """Issues that at least one subscriber got, newest first (``database``: a file or a postgresql:// URL)."""
    if isinstance(database, Path) and not database.exists():
        return []
    with Database.open(database) as store:
        rows = store.query(INDEX_SQL)
    return [_entry(row) for row in rows]


def sent_issue(database: str | Path, slug: str) -> ArchiveEntry | None:
    """The issue ``slug`` if at least one subscriber got it: one indexed lookup, whatever the ledger holds."""
    found = _sent_issue(database, slug)
    return None if found is None else found[0]


def sent_issue_source(database: str | Path, slug: str, issues_dir: Path) -> tuple[str, str] | None:
    """The text of the sent issue ``slug`` and a name for it (see :func:`issue_source`), from the same one
    lookup as :func:`sent_issue`; None when it was never sent or its text is gone."""
    found = _sent_issue(database, slug)
    if found is None:
        return None
    entry, text = found
    return (text, f"{slug}.md") if text is not None else issue_source(database, entry, issues_dir)


def _sent_issue(database: str | Path, slug: str) -> tuple[ArchiveEntry, str | None] | None:
    if isinstance(database, Path) and not database.exists():
        return None
    with Database.open(database) as store:
        rows = store.query(SLUG_SQL, (slug,))
    if not rows:
        return None
    text = rows[0]["source_text"]
    return _entry(rows[0]), None if text is None else str(text)


def _entry(row: Any) -> ArchiveEntry:
    return ArchiveEntry(str(row["slug"]), str(row["subject"]), str(row["first_sent_at"]), bool(row["kept"]))


def available(entry: ArchiveEntry, issues_dir: Path) -> bool:
    """Whether ``entry`` can be shown: its text is in the ledger, or its file is still there."""
    return entry.kept or find_issue_file(issues_dir, entry.slug) is not None


def issue_source(database: str | Path, entry: ArchiveEntry, issues_dir: Path) -> tuple[str, str] | None:
    """The text of ``entry``'s issue and a name for it: as sent (kept in the ledger), else its file now."""
    if entry.kept:
        with Database.open(database) as store:
            rows = store.query("SELECT source_text FROM issues WHERE slug = ?", (entry.slug,))
        if rows and rows[0][0] is not None:
            return str(rows[0][0]), f"{entry.slug}.md"
    path = find_issue_file(issues_dir, entry.slug)
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except (OSError, UnicodeDecodeError):
        return None


def find_issue_file(issues_dir: Path, slug: str) -> Path | None:
    """The issue file in ``issues_dir`` whose slug is ``slug``, if there is one."""
    if not issues_dir.is_dir():
        return None
    exact = issues_dir / f"{slug}.md"
    if exact.is_file():
        return exact
    return next((path for path in sorted(issues_dir.glob("*.md")) if slug_from_path(str(path)) == slug), None)


def web_recipient(settings: Settings) -> Recipient:
    """Nobody in particular: what the web version's merge fields are filled with (their fallbacks)."""
    return Recipient(email="", name="", unsubscribe_url=f"{settings.sender.site_url}/unsubscribe/")


def web_version(text: str, source: str, settings: Settings) -> str:
    """The issue (``text``, named ``source``) as a web page: the email's HTML with no recipient data in it."""
    issue = parse_issue(text, source=source)
    rendered = render_issue(issue, sender=settings.sender, templates_dir=settings.templates_dir, web=True)
    html = fill_html(rendered, web_recipient(settings))
    # The page names the archive's feed, for browsers and feed readers that look for one. An absolute
    # URL: served and built pages are the same bytes, and the email's own links are absolute too.
    # (The email template is not touched: the emails must not point at a feed.)
    link = (f'<link rel="alternate" type="application/atom+xml" title="{escape(settings.sender.from_name)}"'
            f' href="{escape(settings.sender.site_url)}/issues/feed.xml">')
    head_end = html.find("</head>")
    return html if head_end < 0 else f"{html[:head_end]}{link}\n{html[head_end:]}"


def index_page(entries: list[ArchiveEntry], settings: Settings, *, prefix: str = "/issues/") -> str:
    """The list of sent issues; links are ``prefix + slug + "/"``."""
    language = parse_language(settings.sender.language)
    issues = [{"href": f"{prefix}{entry.slug}/", "subject": entry.subject,
               "date": entry.date_text(language, settings.sender.date_format)} for entry in entries]
    return page("archive.html", settings, issues=issues, robots="index", feed_href=f"{prefix}feed.xml")


def build_static(out_dir: Path, settings: Settings) -> list[Path]:
    """Write the archive as static files: ``issues/index.html``, ``issues/<slug>/index.html`` and the
    Atom feed ``issues/feed.xml`` (the same bytes as ``newsletter serve`` answers).

    Everything is rendered first, then written (each file atomically), so a broken issue
    file leaves ``out_dir`` as it was. An issue is shown as it was sent (the ledger keeps
    its text); one sent before the ledger did, and whose file is gone, is left out. Returns the files written.
    """
    # Imported here: the feed module builds on this one's entries.
    from newsletter.web.feed import atom_feed, feed_items

    entries = sent_issues(settings.database.location)
    pages: dict[Path, bytes] = {}
    kept: list[ArchiveEntry] = []
    for entry in entries:
        found = issue_source(settings.database.location, entry, settings.issues_dir)
        if found is None:
            continue
        pages[Path("issues") / entry.slug / "index.html"] = web_version(*found, settings).encode("utf-8")
        kept.append(entry)
    # Relative links, so that the folder works wherever it is served from.
    pages[Path("issues") / "index.html"] = index_page(kept, settings, prefix="./").encode("utf-8")
    pages[Path("issues") / "feed.xml"] = atom_feed(feed_items(settings.database.location, settings.issues_dir),
                                                   settings)
    written = []
    for relative, data in pages.items():
        target = out_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(target, data)
        written.append(target)
    return written


def _write_atomically(path: Path, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
