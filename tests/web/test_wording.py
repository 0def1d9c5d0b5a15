"""The web pages' words in ``[sender] language``, over real HTTP: the templates', the messages', the form
errors', the plain-text answers' and the 500 page's; and a pseudo-language that shows none is left out.

The real application runs under uvicorn on a free port with a real SQLite file and the project's
outbox (as in tests/web/test_signup_routes.py, whose helpers these are).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po, write_po

from newsletter.config import (
    DatabaseSettings,
    DispatchSettings,
    Secret,
    SenderSettings,
    Settings,
    SignupSettings,
    SmtpSettings,
)
from newsletter.devtools.outbox import Outbox
from newsletter.render.engine import default_templates_dir
from newsletter.render.i18n import catalog_path
from newsletter.store.subscriber_files import MAX_NAME
from newsletter.store.subscribers import Store, SubscriberRow
from newsletter.tokens import TokenSigner, split_keys
from tests.harness.htmltext import squash, visible_text
from tests.harness.smtpserver import free_port
from tests.web.test_signup_routes import EVENTS, HOSTILE, KEY, NEWS, Site, _start

SAME_SITE = {"Sec-Fetch-Site": "same-origin"}


@contextmanager
def serving(tmp_path: Path, *, language: str = "en", templates_dir: Path | None = None) -> Iterator[Site]:
    """The application with ``[sender] language`` (and ``[templates] dir``), two lists offered, and one reader,
    ``old@example.org``, on both."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    issues = tmp_path / "issues"
    issues.mkdir(parents=True, exist_ok=True)
    outbox = Outbox(tmp_path / "outbox", port=0)
    outbox.start()
    settings = Settings(
        sender=SenderSettings(site_url=base, language=language),
        smtp=SmtpSettings(port=outbox.port, connections=2, timeout=10),
        database=DatabaseSettings(tmp_path / "news.db"),
        dispatch=DispatchSettings(wait_for_retries=0),
        issues_dir=issues,
        secret_key=Secret(KEY),
        lists=(NEWS, EVENTS),
        signup=SignupSettings(per_network_per_hour=0, per_hour=0),
        templates_dir=templates_dir,
    )
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


def token(site: Site, list_name: str = "news") -> str:
    """``old@example.org``'s unsubscribe and preferences token for ``list_name``."""
    row = site.query("SELECT s.id AS subscriber, l.id AS list FROM subscribers s, lists l"
                     " WHERE s.email = 'old@example.org' AND l.name = ?", list_name)[0]
    return TokenSigner(split_keys(KEY)).make(int(str(row["subscriber"])), int(str(row["list"])))


def title(html: str) -> str:
    found = re.search(r"<title>(.*?)</title>", html, re.S)
    assert found is not None
    return squash(found[1])


def break_the_database(site: Site) -> None:
    path = site.settings.database.path
    path.write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def test_the_pages_speak_german_with_sender_language_de(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with serving(tmp_path, language="de") as site:
        form = httpx.get(f"{site.base}/subscribe")
        assert '<html lang="de" dir="ltr">' in form.text and title(form.text) == "The Briefing abonnieren"
        shown = visible_text(form.text)
        assert "E-Mail-Adresse" in shown and "Ihr Name (optional)" in shown and "Abonnieren" in shown
        assert "Wir schicken Ihnen eine E-Mail mit einem Bestätigungslink." in shown
        bad = httpx.post(f"{site.base}/subscribe", data={"email": "", "list": ["nope"], "name": HOSTILE})
        assert bad.status_code == 400
        shown = visible_text(bad.text)
        assert "Bitte prüfen Sie die unten markierten Felder." in shown  # two errors: the plural
        assert "Bitte geben Sie Ihre E-Mail-Adresse ein." in shown
        assert "Hier gibt es keine Liste 'nope', für die man sich anmelden kann." in shown
        assert "<script>" not in bad.text and "&lt;script&gt;" in bad.text
        one = httpx.post(f"{site.base}/subscribe", data={"email": "x@example.org"})
        assert "Bitte prüfen Sie das unten markierte Feld." in visible_text(one.text)

        sent = httpx.post(f"{site.base}/subscribe", data={"email": "ann@example.org", "list": ["news", "events"]})
        assert sent.status_code == 200 and title(sent.text) == "Sehen Sie in Ihr Postfach"
        message = site.wait_for_message("ann@example.org")[0]
        assert message["Subject"] == "Bitte bestätigen Sie Ihr Abonnement von The Briefing"
        assert message["Content-Language"] == "de"
        text = message.get_body(("plain",))
        assert text is not None and "\nAbonnement bestätigen:\r\n" in text.get_content()
        link = site.confirm_link("ann@example.org")
        ready = httpx.get(link)
        assert "<h1>Abonnement bestätigen</h1>" in ready.text
        assert "ann@example.org erhält dann:" in visible_text(ready.text)
        done = httpx.post(link, headers=SAME_SITE)
        assert "<h1>Sie sind angemeldet</h1>" in done.text
        assert "ann@example.org erhält The Briefing ab der nächsten Ausgabe:" in visible_text(done.text)

        unsubscribe = f"{site.base}/unsubscribe/{token(site)}"
        assert "<h1>Von The Briefing abmelden?</h1>" in httpx.get(unsubscribe).text
        left = httpx.post(unsubscribe, data={"action": "unsubscribe"}, headers=SAME_SITE)
        assert "<h1>Sie sind abgemeldet</h1>" in left.text
        assert "old@example.org erhält keine Ausgaben von news mehr." in visible_text(left.text)
        back = httpx.post(unsubscribe, data={"action": "resubscribe"}, headers=SAME_SITE)
        assert "<h1>Willkommen zurück</h1>" in back.text

        preferences = f"{site.base}/preferences/{token(site)}"
        page = httpx.get(preferences)
        assert "<h1>Ihr Abonnement</h1>" in page.text and "<legend>Ihre Listen</legend>" in page.text
        too_long = httpx.post(preferences, data={"name": "x" * (MAX_NAME + 1), "shown": ["news"]}, headers=SAME_SITE)
        assert too_long.status_code == 400 and f"Höchstens {MAX_NAME} Zeichen, bitte." in too_long.text
        saved = httpx.post(preferences, data={"name": "Alt", "shown": ["news", "events"]}, headers=SAME_SITE)
        assert "Sie erhalten keine Ausgaben von Events near you und Weekly news mehr." in visible_text(saved.text)

        forged = httpx.post(unsubscribe, data={"action": "unsubscribe"}, headers={"Sec-Fetch-Site": "cross-site"})
        assert forged.status_code == 403 and forged.text == "Formulare von anderen Websites werden nicht angenommen.\n"
        missing = httpx.get(f"{site.base}/nowhere")
        assert missing.status_code == 404 and "<h1>Nicht gefunden</h1>" in missing.text
        assert "Alle Ausgaben" in missing.text
        archive = httpx.get(f"{site.base}/issues/")
        assert title(archive.text) == "The Briefing: alle Ausgaben"
        assert "Es wurde noch keine Ausgabe verschickt." in archive.text
        assert "Dieser Link ist ungültig" in httpx.get(f"{site.base}/unsubscribe/1-1-forged").text

        break_the_database(site)
        with caplog.at_level(logging.ERROR, logger="newsletter.web"):
            broken = httpx.get(unsubscribe)
        assert broken.status_code == 500
        assert broken.text == "Bei uns ist etwas schiefgegangen. Bitte versuchen Sie es später noch einmal.\n"
        assert any(record.exc_info for record in caplog.records)  # the traceback went to the log, as before


def test_an_arabic_or_hebrew_site_words_its_pages_so(tmp_path: Path) -> None:
    with serving(tmp_path / "ar", language="ar") as site:
        form = httpx.get(f"{site.base}/subscribe")
        assert '<html lang="ar" dir="rtl">' in form.text and title(form.text) == "الاشتراك في نشرة The Briefing"
        assert "<legend>القوائم</legend>" in form.text
    with serving(tmp_path / "he", language="he") as site:
        missing = httpx.get(f"{site.base}/nowhere")
        assert '<html lang="he" dir="rtl">' in missing.text and "<h1>הדף לא נמצא</h1>" in missing.text


# --- nothing left out: a pseudo-language --------------------------------------------------------


def pseudo_templates(tmp_path: Path) -> Path:
    """A ``[templates] dir`` whose English catalog wraps every string in ⟦ ⟧."""
    folder = tmp_path / "templates"
    shutil.copytree(default_templates_dir(), folder, ignore=shutil.ignore_patterns("locale"))
    with (default_templates_dir() / "locale" / "newsletter.pot").open("rb") as stream:
        template = read_po(stream)
    catalog = Catalog(locale="en", domain="newsletter")
    for message in list(template)[1:]:
        wrapped = tuple(f"⟦{form}⟧" for form in message.id) if message.pluralizable else f"⟦{message.id}⟧"
        catalog.add(message.id, wrapped)
    path = catalog_path(folder, "en")
    path.parent.mkdir(parents=True)
    with path.open("wb") as stream:
        write_po(stream, catalog)
    return folder


VALUES = ("The Briefing", "1 Example Street, Springfield", NEWS.title, NEWS.description, EVENTS.title,
          EVENTS.description, "old@example.org", "ann@example.org", "Old Reader", "news", "events", "'nope'")


def untranslated(text: str) -> str:
    """What is left of ``text`` without the wrapped strings, the values and punctuation."""
    while re.search(r"⟦[^⟦⟧]*⟧", text):  # innermost first: a translated string may hold another
        text = re.sub(r"⟦[^⟦⟧]*⟧", " ", text)
    for value in sorted(VALUES, key=len, reverse=True):
        text = text.replace(value, " ")
    return squash(re.sub(r"[\W_]+", " ", text))


def test_every_word_of_every_page_comes_from_the_catalogs(tmp_path: Path) -> None:
    with serving(tmp_path, templates_dir=pseudo_templates(tmp_path)) as site:
        base = site.base
        unsubscribe = f"{base}/unsubscribe/{token(site)}"
        preferences = f"{base}/preferences/{token(site)}"
        answers = [
            httpx.get(f"{base}/subscribe"),
            httpx.get(f"{base}/subscribe?list=news"),
            httpx.post(f"{base}/subscribe", data={"email": "", "list": ["nope"]}),
            httpx.post(f"{base}/subscribe", data={"email": "x" * 300 + "@example.org", "name": "y" * (MAX_NAME + 1)}),
            httpx.post(f"{base}/subscribe", data={"email": "ann@example.org", "list": ["news"]}),
            httpx.get(f"{base}/confirm/c1.20200101.forged"),
            httpx.get(f"{base}/confirm/{TokenSigner(split_keys(KEY)).make_confirm(1, dt.date(2020, 1, 1))}"),
            httpx.get(f"{base}/nowhere"),
            httpx.get(f"{base}/issues/"),
            httpx.get(f"{base}/issues/nope/"),
            httpx.get(f"{base}/unsubscribe/"),
            httpx.get(f"{base}/unsubscribe/1-1-forged"),
            httpx.get(f"{base}/preferences/"),
            httpx.get(f"{base}/preferences/1-1-forged"),
            httpx.get(unsubscribe),
            httpx.post(unsubscribe, data={"action": "nothing"}, headers=SAME_SITE),
            httpx.post(unsubscribe, data={"action": "unsubscribe"}, headers=SAME_SITE),
            httpx.get(unsubscribe),
            httpx.post(unsubscribe, data={"action": "resubscribe"}, headers=SAME_SITE),
            httpx.get(preferences),
            httpx.post(preferences, data={"name": "y" * (MAX_NAME + 1), "shown": ["news"]}, headers=SAME_SITE),
            httpx.post(preferences, data={"name": "Old Reader", "shown": ["news", "events"], "list": ["news"]},
                       headers=SAME_SITE),
            httpx.post(preferences, data={"name": "Old Reader", "shown": ["news", "events"], "list": ["news"]},
                       headers=SAME_SITE),
            httpx.post(unsubscribe, data={"action": "unsubscribe"}, headers={"Sec-Fetch-Site": "cross-site"}),
        ]
        link = site.confirm_link("ann@example.org")
        answers += [httpx.get(link), httpx.post(link, headers=SAME_SITE), httpx.get(link)]
        site.execute("UPDATE subscribers SET status = 'bounced' WHERE email = 'old@example.org'")
        answers += [httpx.get(unsubscribe), httpx.get(preferences)]
        site.execute("UPDATE subscribers SET status = 'complained' WHERE email = 'old@example.org'")
        answers += [httpx.get(unsubscribe), httpx.get(preferences)]
        site.execute("UPDATE subscribers SET status = 'forgotten' WHERE email = 'old@example.org'")
        answers += [httpx.get(unsubscribe), httpx.get(preferences)]
        break_the_database(site)
        answers.append(httpx.get(unsubscribe))
    statuses = {answer.status_code for answer in answers}
    assert statuses == {200, 400, 403, 404, 410, 500}, statuses
    for answer in answers:
        if answer.headers["content-type"].startswith("text/html"):
            words = f"{title(answer.text)} {visible_text(answer.text)}"
        else:
            words = answer.text
        assert untranslated(words) == "", (answer.request.method, answer.request.url, words)

