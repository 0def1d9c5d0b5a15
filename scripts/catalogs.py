"""Regenerate the message catalogs' template and bring every catalog up to date with it (Babel's pybabel).

    .venv/bin/python scripts/catalogs.py              # extract templates/locale/newsletter.pot, update every .po
    .venv/bin/python scripts/catalogs.py new pt_BR    # start templates/locale/pt_BR/LC_MESSAGES/newsletter.po
    .venv/bin/python scripts/catalogs.py extract -o /tmp/newsletter.pot   # only extract, somewhere else

The strings come from the email templates (``templates/*.mjml``), the web pages
(``newsletter/web/pages/*.html``) and the Python code (``gettext``, ``ngettext``, ``N_``), as
``babel.cfg`` maps them. After an update, new or changed strings are empty or marked fuzzy in
each catalog: translate them (and drop the fuzzy flag); ``tests/render/test_i18n.py`` fails
until every catalog is complete. The English catalog is filled in here (each string is its
own translation), so a newsletter can override an English string as any other.
README, "Wording and translations".
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from pathlib import Path

from babel.messages.frontend import CommandLineInterface
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parent.parent
LOCALE = ROOT / "templates" / "locale"
TEMPLATE = LOCALE / "newsletter.pot"
DOMAIN = "newsletter"
#: the catalogs' line width (long strings wrap onto continuation lines)
WIDTH = 100
HEADER = """\
# The wording of newsletter's emails and web pages.
# This file is distributed under the same license as the newsletter project (MIT).
#"""


def pybabel(*args: str) -> None:
    """Run one pybabel command in this process, in the checkout (the catalogs name files relative to it);
    exit as it does when it fails."""
    os.chdir(ROOT)
    status = CommandLineInterface().run(["pybabel", "--quiet", *args])
    if status:
        sys.exit(status)


def extract(output: Path) -> None:
    """Write the template of every string the templates and the code use to ``output``."""
    pybabel(
        "extract", "--mapping-file", "babel.cfg", "--keyword", "N_",
        "--add-comments", "Translators:", "--add-location", "file", "--width", str(WIDTH),
        "--project", "newsletter", "--version", importlib.metadata.version("newsletter"), "--header-comment", HEADER,
        "--output-file", str(output.resolve()), ".",  # babel.cfg says which files; hidden folders (.venv) are skipped
    )


def update() -> None:
    """Merge the template into every catalog (new strings empty, changed ones fuzzy, dropped ones gone)."""
    pybabel("update", "--input-file", str(TEMPLATE), "--output-dir", str(LOCALE), "--domain", DOMAIN,
            "--ignore-obsolete", "--width", str(WIDTH))


def fill_english() -> None:
    """Make every English string its own translation (the template's words are English already)."""
    path = LOCALE / "en" / "LC_MESSAGES" / f"{DOMAIN}.po"
    with path.open("rb") as stream:
        catalog = read_po(stream)
    for message in list(catalog)[1:]:
        message.string = tuple(message.id) if message.pluralizable else message.id
        message.flags.discard("fuzzy")
    catalog.fuzzy = False
    catalog.last_translator = "the newsletter project"
    catalog.language_team = "English <en>"
    with path.open("wb") as stream:
        write_po(stream, catalog, width=WIDTH)


def new(locale: str) -> None:
    """Start the catalog of ``locale`` (a Babel id: ``pt_BR``) from the template, with its plural rule."""
    pybabel("init", "--input-file", str(TEMPLATE), "--output-dir", str(LOCALE), "--domain", DOMAIN,
            "--locale", locale, "--width", str(WIDTH))


def main() -> None:
    """The command line (see the module's docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command")
    only = commands.add_parser("extract", help="only extract the template")
    only.add_argument("-o", "--output", type=Path, default=TEMPLATE)
    start = commands.add_parser("new", help="start a catalog for a language")
    start.add_argument("locale", help="a Babel locale id: de, pt_BR, zh_Hant")
    arguments = parser.parse_args()
    if arguments.command == "extract":
        extract(arguments.output)
    elif arguments.command == "new":
        new(arguments.locale)
        if arguments.locale == "en":
            fill_english()
    else:
        extract(TEMPLATE)
        update()
        fill_english()


if __name__ == "__main__":
    main()
