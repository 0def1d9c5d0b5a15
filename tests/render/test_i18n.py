"""The template's and pages' wording in the reader's language: the catalogs, their lookup, and renders in them.

The catalogs are checked against the template of every string (``templates/locale/newsletter.pot``),
which is checked against a fresh extraction from the templates and the code. A pseudo-language
(every string wrapped in ⟦ ⟧) shows that nothing an email or a page says is left out of them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.plurals import get_plural
from babel.messages.pofile import read_po, write_po
from click.testing import CliRunner

from newsletter.cli.commands import main
from newsletter.compose.message import fill_html, fill_text
from newsletter.config import ListSettings, SenderSettings
from newsletter.errors import RenderError
from newsletter.issue.parse import parse_issue
from newsletter.language import parse_language
from newsletter.models import Recipient, RenderedIssue
from newsletter.render.confirm import render_confirmation
from newsletter.render.engine import default_templates_dir, render_issue
from newsletter.render.i18n import Wording, catalog_path, placeholders, wording_for
from tests.conftest import ROOT
from tests.harness.htmltext import squash, visible_text

LOCALE = default_templates_dir() / "locale"
TEMPLATE = LOCALE / "newsletter.pot"
LANGUAGES = ("en", "de", "fr", "es", "ar", "he")
SENDER = SenderSettings()
RECIPIENT = Recipient("reader@example.com", "Example Reader", "https://news.example.com/unsubscribe/tok",
                      preferences_url="https://news.example.com/preferences/tok")
BRIEFING = ListSettings("briefing", "The Daily Briefing", "The day's news in five minutes.")


def read(path: Path) -> Catalog:
    with path.open("rb") as stream:
        return read_po(stream)


def message_ids(catalog: Catalog) -> set[str | tuple[str, ...]]:
    return {tuple(message.id) if message.pluralizable else message.id for message in list(catalog)[1:]}


def issue_text(language: str = "", body: str = "A paragraph.") -> str:
    line = f"language: {language}\n" if language else ""
    return f"---\nsubject: Hello\ndate: 2017-07-07\npreheader: Hi\n{line}---\n\n# Headline\n\n{body}\n"


def render(language: str = "", *, sender: SenderSettings = SENDER, templates_dir: Path | None = None,
           web: bool = False) -> RenderedIssue:
    return render_issue(parse_issue(issue_text(language), source="x.md"), sender=sender,
                        templates_dir=templates_dir, web=web)


def templates_copy(tmp_path: Path) -> Path:
    """A newsletter's own templates folder: the built-in templates, without their catalogs."""
    folder = tmp_path / "templates"
    shutil.copytree(default_templates_dir(), folder, ignore=shutil.ignore_patterns("locale"))
    return folder


def write_catalog(folder: Path, locale: str, entries: dict[str, str | tuple[str, ...]],
                  fuzzy: tuple[str, ...] = ()) -> Path:
    """An override catalog of ``folder`` with ``entries`` (message id -> translation; a plural's key is
    its singular and its value the forms, its plural id taken from the template)."""
    template = {message.id[0] if message.pluralizable else message.id: message for message in read(TEMPLATE)}
    catalog = Catalog(locale=locale, domain="newsletter")
    for key, value in entries.items():
        message_id = template[key].id if key in template else key
        catalog.add(message_id, value, flags=("fuzzy",) if key in fuzzy else ())
    path = catalog_path(folder, locale)
    path.parent.mkdir(parents=True)
    with path.open("wb") as stream:
        write_po(stream, catalog)
    return path


# --- the catalogs -------------------------------------------------------------------------------


def test_every_language_the_issue_names_has_a_catalog() -> None:
    assert sorted(path.parent.parent.name for path in LOCALE.glob("*/LC_MESSAGES/newsletter.po")) == sorted(LANGUAGES)
    assert len(message_ids(read(TEMPLATE))) >= 100


@pytest.mark.parametrize("locale", LANGUAGES)
def test_every_catalog_has_every_string_translated_and_nothing_fuzzy(locale: str) -> None:
    template = read(TEMPLATE)
    catalog = read(catalog_path(default_templates_dir(), locale))
    assert message_ids(catalog) == message_ids(template)
    assert not catalog.fuzzy
    for message in list(catalog)[1:]:
        assert not message.fuzzy, message.id
        if message.pluralizable:
            assert len(message.string) == catalog.num_plurals and all(message.string), message.id
        else:
            assert message.string, message.id


@pytest.mark.parametrize("locale", LANGUAGES)
def test_each_catalog_has_its_languages_plural_rule_from_babel(locale: str) -> None:
    catalog = read(catalog_path(default_templates_dir(), locale))
    rule = get_plural(locale)
    assert (catalog.num_plurals, catalog.plural_expr) == (rule.num_plurals, rule.plural_expr)
    assert {"ar": 6, "he": 3, "de": 2, "en": 2}.get(locale, catalog.num_plurals) == catalog.num_plurals


@pytest.mark.parametrize("locale", LANGUAGES)
def test_translations_keep_the_placeholders_and_are_text(locale: str) -> None:
    catalog = read(catalog_path(default_templates_dir(), locale))
    for message in list(catalog)[1:]:
        if message.pluralizable:
            singular, plural = message.id
            values = placeholders(singular) | placeholders(plural)
            counts = {"num", "count"}
            for form in message.string:
                # A form may say its number in words ("one day", "يومين"), never a value it wasn't given.
                assert placeholders(form) <= values, (message.id, form)
                assert values - counts <= placeholders(form), (message.id, form)
            assert placeholders(message.string[-1]) == placeholders(plural), message.id  # "other": the number
            texts = list(message.string)
        else:
            assert placeholders(message.string) == placeholders(message.id), (message.id, message.string)
            texts = [message.string]
        for text in texts:
            assert "<" not in text and not re.search(r"&#?\w+;", text), text  # text, never markup
            text % dict.fromkeys(placeholders(text) | {"num", "count"}, 1)  # a valid format string


def test_the_template_has_every_string_the_templates_and_code_use(tmp_path: Path) -> None:
    """Changed wording without ``scripts/catalogs.py`` fails here (then run it and translate)."""
    fresh = tmp_path / "fresh.pot"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "catalogs.py"), "extract", "-o", str(fresh)],
                   check=True, capture_output=True)
    assert message_ids(read(fresh)) == message_ids(read(TEMPLATE))


def test_the_english_catalog_says_what_the_template_says() -> None:
    for message in list(read(catalog_path(default_templates_dir(), "en")))[1:]:
        assert message.string == (tuple(message.id) if message.pluralizable else message.id)


# --- lookup -------------------------------------------------------------------------------------


def test_a_language_without_a_catalog_and_a_string_in_none_are_english() -> None:
    assert wording_for(parse_language("pt-BR")).catalogs == ()
    assert wording_for(parse_language("pt-BR")).gettext("Unsubscribe from %(name)s", name="X") == "Unsubscribe from X"
    german = wording_for(parse_language("de"))
    assert german.gettext("Unsubscribe from %(name)s", name="X") == "Von X abmelden"
    assert german.gettext("A sentence no catalog has, %(name)s.", name="X") == "A sentence no catalog has, X."
    assert german.ngettext("%(num)s apple", "%(num)s apples", 3) == "3 apples"
    assert wording_for(parse_language("de-AT")).gettext("Save") == "Speichern"  # de_AT, then de


@pytest.mark.parametrize(("locale", "counts"), [
    ("ar", {0: "الاسم 0 حرف.", 1: "الاسم حرفًا واحدًا.", 2: "الاسم حرفين.", 3: "الاسم 3 أحرف.", 11: "الاسم 11 حرفًا.",
            100: "الاسم 100 حرف.", 103: "الاسم 103 أحرف."}),
    ("he", {1: "תו אחד", 2: "שני תווים", 3: "3 תווים", 200: "200 תווים"}),
    ("fr", {0: "au plus 0 caractère.", 1: "au plus 1 caractère.", 2: "au plus 2 caractères.",
            1_000_000: "au plus 1000000 de caractères."}),
    ("de", {1: "höchstens 1 Zeichen.", 200: "höchstens 200 Zeichen."}),
])
def test_plural_forms_follow_each_languages_rule(locale: str, counts: dict[int, str]) -> None:
    words = wording_for(parse_language(locale))
    for count, expected in counts.items():
        said = words.ngettext("A name is at most %(num)s character.", "A name is at most %(num)s characters.", count)
        assert said.endswith(expected) or expected in said, (count, said)


def test_an_override_catalog_changes_one_string_for_one_newsletter(tmp_path: Path) -> None:
    folder = templates_copy(tmp_path)
    write_catalog(folder, "de", {
        "Manage your subscription": "Meine Einstellungen",
        "Unsubscribe from %(name)s": "",  # empty: the built-in catalog's
        "View this issue in your browser": "Im Browser lesen",  # fuzzy: the built-in catalog's
    }, fuzzy=("View this issue in your browser",))
    own = fill_html(render("de", templates_dir=folder), RECIPIENT)
    assert ">Meine Einstellungen</a>" in own
    assert ">Von The Briefing abmelden</a>" in own and ">Diese Ausgabe im Browser ansehen</a>" in own
    assert "Im Browser lesen" not in own
    built_in = fill_html(render("de"), RECIPIENT)  # another newsletter (no [templates] dir): unchanged
    assert ">Abonnement verwalten</a>" in built_in and "Meine Einstellungen" not in built_in


def test_an_override_for_the_language_serves_its_regions_and_english_can_be_overridden(tmp_path: Path) -> None:
    folder = templates_copy(tmp_path)
    write_catalog(folder, "pt", {"Manage your subscription": "Gerenciar sua assinatura"})
    write_catalog(folder, "en", {"Manage your subscription": "Your settings"})
    assert ">Gerenciar sua assinatura</a>" in render("pt-BR", templates_dir=folder).html
    english = render(templates_dir=folder)
    assert ">Your settings</a>" in english.html and "Unsubscribe from The Briefing" in english.html


def test_an_edited_override_catalog_is_read_again(tmp_path: Path) -> None:
    folder = templates_copy(tmp_path)
    path = write_catalog(folder, "de", {"Save": "Sichern"})
    assert wording_for(parse_language("de"), folder).gettext("Save") == "Sichern"
    path.write_text(path.read_text(encoding="utf-8").replace('"Sichern"', '"Übernehmen"'), encoding="utf-8")
    assert wording_for(parse_language("de"), folder).gettext("Save") == "Übernehmen"


@pytest.mark.parametrize(("body", "line", "says"), [
    ('msgid "Save"\nmsgstr "Speichern\n', 6, "each string goes in double quotes on one line"),
    ('msgid "Save"\nmsgstr "Speichern"\nmsgtxt "x"\n', 7, "Unknown or misformatted keyword"),
    ('msgid "Unsubscribe from %(name)s"\nmsgstr "Von %(nam)s abmelden"\n', 5,
     "the translation uses %(nam)s, which 'Unsubscribe from %(name)s' doesn't have (it has %(name)s)"),
    ('msgid "Save"\nmsgstr "100% sicher"\n', 5, "is not a valid format string"),
    ('msgid "A name is at most %(num)s character."\nmsgid_plural "A name is at most %(num)s characters."\n'
     'msgstr[0] "Höchstens %(num)s Zeichen."\n', 5, "msgstr[1] is missing or empty: the catalog's Plural-Forms has 2"),
    ('msgid "A name is at most %(num)s character."\nmsgid_plural "A name is at most %(num)s characters."\n'
     'msgstr[0] "a"\nmsgstr[1] "b"\nmsgstr[2] "c"\n', 5, "more translations than num_plurals"),
])
def test_a_broken_catalog_is_a_render_error_naming_its_file_and_line(tmp_path: Path, body: str, line: int,
                                                                      says: str) -> None:
    folder = templates_copy(tmp_path)
    path = catalog_path(folder, "de")
    path.parent.mkdir(parents=True)
    path.write_text('msgid ""\nmsgstr ""\n"Plural-Forms: nplurals=2; plural=(n != 1);\\n"\n\n' + body,
                    encoding="utf-8")
    with pytest.raises(RenderError) as caught:
        render("de", templates_dir=folder)
    assert str(caught.value).startswith(f"{path}:{line}: ") and says in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_cli_says_a_broken_catalog_in_one_line_and_exits_2(tmp_path: Path) -> None:
    folder = templates_copy(tmp_path)
    path = write_catalog(folder, "de", {"Save": "Speichern"})
    path.write_text(path.read_text(encoding="utf-8").replace('msgstr "Speichern"', 'msgstr "Speichern'),
                    encoding="utf-8")
    config = tmp_path / "newsletter.toml"
    config.write_text(f'[templates]\ndir = "{folder}"\n', encoding="utf-8")
    issue = tmp_path / "2017-07-07-hallo.md"
    issue.write_text(issue_text("de"), encoding="utf-8")
    result = CliRunner().invoke(main, ["--config", str(config), "render", str(issue), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert f"{path}:" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


# --- renders in a language ----------------------------------------------------------------------


def test_a_german_issue_has_the_german_footer_in_html_and_text() -> None:
    rendered = render("de")
    html = visible_text(fill_html(rendered, RECIPIENT))
    assert "Diese Ausgabe im Browser ansehen" in html
    assert "Sie erhalten The Briefing an reader@example.com. Von The Briefing abmelden · Abonnement verwalten" in html
    text = fill_text(rendered, RECIPIENT)
    for line in ("Diese Ausgabe im Browser ansehen:", "Sie erhalten The Briefing an diese Adresse:",
                 "Mit einem Klick abmelden:", "Abonnement verwalten (Ihre Listen, Ihr Name):"):
        assert f"\n{line}\n" in text
    assert "Unsubscribe" not in html + text and "Manage" not in html + text
    web = visible_text(fill_html(render("de", web=True), RECIPIENT))
    assert "Die Webversion von The Briefing. Alle Ausgaben" in web


def test_an_arabic_issue_has_the_arabic_footer_in_html_and_text() -> None:
    rendered = render("ar")
    html = visible_text(fill_html(rendered, RECIPIENT))
    assert "عرض هذا العدد في المتصفح" in html
    assert ("تصلك نشرة The Briefing على reader@example.com. إلغاء الاشتراك في نشرة The Briefing · إدارة اشتراكك"
            in html)
    text = fill_text(rendered, RECIPIENT)
    for line in ("عرض هذا العدد في المتصفح:", "تصلك نشرة The Briefing على هذا العنوان:",
                 "إلغاء الاشتراك بنقرة واحدة:", "إدارة اشتراكك (قوائمك واسمك):"):
        assert f"\n{line}\n" in text
    assert "Unsubscribe" not in html + text


@pytest.mark.parametrize(("language", "manage"), [("fr", "Gérer votre abonnement"), ("es", "Gestionar tu suscripción"),
                                                  ("he", "ניהול ההרשמה"), ("en", "Manage your subscription")])
def test_each_language_words_the_footer(language: str, manage: str) -> None:
    assert f">{manage}</a>" in render(language).html
    sender = dataclasses.replace(SENDER, language=language)
    assert f">{manage}</a>" in render(sender=sender).html  # [sender] language, when the issue names none


def test_the_image_placeholder_of_the_text_part_is_translated() -> None:
    rendered = render_issue(parse_issue(issue_text("de", '![Eine Karte](https://x.example/k.png "10x10")'),
                                        source="x.md"), sender=SENDER)
    assert "[Bild: Eine Karte]" in rendered.text


def test_the_confirmation_email_is_worded_in_the_sender_language() -> None:
    sender = dataclasses.replace(SENDER, language="de")
    notice = render_confirmation(email="ann@example.org", lists=[BRIEFING], confirm_url="https://x.example/c/t",
                                 expires=dt.date(2025, 3, 3), sender=sender)
    assert notice.subject == "Bitte bestätigen Sie Ihr Abonnement von The Daily Briefing"
    assert notice.preheader.startswith("Ein Klick, und Sie sind dabei.")
    html = visible_text(notice.html)
    for part in (html, squash(notice.text)):
        assert "Jemand – hoffentlich Sie – möchte, dass ann@example.org Folgendes erhält:" in part
        assert "Dieser Link gilt bis Montag, 3. März 2025." in part
        assert "Bis Sie bestätigen, senden wir nichts an diese Adresse." in part
    assert ">Abonnement bestätigen</a>" in notice.html and "<strong>ann@example.org</strong>" in notice.html
    assert "Abonnement bestätigen:\nhttps://x.example/c/t\n" in notice.text


# --- escaping -----------------------------------------------------------------------------------


@pytest.mark.parametrize("language", ["de", "ar", "he"])
def test_values_stay_escaped_in_every_language(language: str) -> None:
    hostile = "<script>alert(1)</script> & <b>Co</b>"
    sender = dataclasses.replace(SENDER, from_name=hostile, language=language)
    rendered = render(sender=sender)
    html = fill_html(rendered, Recipient("a<img src=x>@example.org", "", "https://x.example/u/t"))
    assert "<script>" not in html and "<b>Co" not in html and "<img src=x>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;Co&lt;/b&gt;" in html
    notice = render_confirmation(email="ann@example.org", lists=[ListSettings("x", "<img src=y>", "<i>d</i>")],
                                 confirm_url="https://x.example/c/t", expires=dt.date(2025, 3, 3), sender=sender)
    assert "<script>" not in notice.html and "<img src=y>" not in notice.html and "<i>d</i>" not in notice.html


def test_a_translation_is_text_not_markup(tmp_path: Path) -> None:
    folder = templates_copy(tmp_path)
    write_catalog(folder, "de", {"Manage your subscription": "<b>Einstellungen</b> & mehr",
                                 "Manage your subscription (your lists, your name):": "<b>Einstellungen</b> & mehr:"})
    rendered = render("de", templates_dir=folder)
    assert "&lt;b&gt;Einstellungen&lt;/b&gt; &amp; mehr</a>" in rendered.html and "<b>Einstellungen" not in rendered.html
    assert "\n<b>Einstellungen</b> & mehr:\n" in rendered.text  # the text part is plain text


def test_a_newstyle_template_function_escapes_like_autoescape() -> None:
    import jinja2

    environment = jinja2.Environment(autoescape=True, extensions=["jinja2.ext.i18n"])
    environment.newstyle_gettext = True  # type: ignore[attr-defined]
    template = environment.from_string("{% trans name=name %}Unsubscribe from {{ name }}{% endtrans %}|"
                                       "{% trans count=n %}{{ count }} day{% pluralize %}{{ count }} days{% endtrans %}")
    words = Wording(parse_language("en"))
    assert template.render(name="<x>", n=2, **words.template_functions()) == "Unsubscribe from &lt;x&gt;|2 days"
    plain = jinja2.Environment(autoescape=False, extensions=["jinja2.ext.i18n"])
    plain.newstyle_gettext = True  # type: ignore[attr-defined]
    assert plain.from_string("{% trans name=name %}To {{ name }}{% endtrans %}").render(
        name="<x>", **words.template_functions()) == "To <x>"


# --- nothing left out: a pseudo-language --------------------------------------------------------


def pseudo_catalog(folder: Path) -> None:
    """An English override in ``folder`` that wraps every string in ⟦ ⟧: text outside them wasn't translated."""
    catalog = Catalog(locale="en", domain="newsletter")
    for message in list(read(TEMPLATE))[1:]:
        if message.pluralizable:
            catalog.add(message.id, tuple(f"⟦{form}⟧" for form in message.id))
        else:
            catalog.add(message.id, f"⟦{message.id}⟧")
    path = catalog_path(folder, "en")
    path.parent.mkdir(parents=True)
    with path.open("wb") as stream:
        write_po(stream, catalog)


def untranslated(text: str, *values: str) -> str:
    """What is left of ``text`` without the translated strings, ``values`` and punctuation."""
    while re.search(r"⟦[^⟦⟧]*⟧", text):  # innermost first: a translated string may hold another
        text = re.sub(r"⟦[^⟦⟧]*⟧", " ", text)
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, " ")
    return squash(re.sub(r"[\W_]+", " ", text))


def test_every_word_of_an_issue_and_a_confirmation_is_in_the_catalogs(tmp_path: Path) -> None:
    folder = templates_copy(tmp_path)
    pseudo_catalog(folder)
    values = ("The Briefing", "Friday, July 7, 2017", "1 Example Street, Springfield", "Headline", "A paragraph",
              "reader@example.com", "https://news.example.com/unsubscribe/tok", "https://news.example.com/preferences/tok",
              "https://news.example.com/issues/x/", "https://news.example.com/issues/", "THE BRIEFING", "Hi")
    for web in (False, True):
        rendered = render(templates_dir=folder, web=web)
        assert untranslated(visible_text(fill_html(rendered, RECIPIENT)), *values) == ""
        assert untranslated(fill_text(rendered, RECIPIENT), *values) == ""
    notice = render_confirmation(email="ann@example.org", lists=[BRIEFING], confirm_url="https://x.example/c/t",
                                 expires=dt.date(2025, 3, 3), sender=SENDER, templates_dir=folder)
    values = ("ann@example.org", BRIEFING.title, BRIEFING.description, "https://x.example/c/t", "Monday, March 3, 2025",
              "The Briefing", "THE BRIEFING", "1 Example Street, Springfield")
    for part in (visible_text(notice.html), notice.text, notice.subject, notice.preheader):
        assert untranslated(part, *values) == "", part
