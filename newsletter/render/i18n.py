"""The template's and pages' wording in the reader's language: gettext catalogs read from their ``.po`` files.

Every sentence the tool writes itself (the footer of an issue, the confirmation email, the
web pages) is an English message id, looked up in catalogs for the issue's
:class:`~newsletter.language.Language`, most particular first:

1. the newsletter's own ``<[templates] dir>/locale/<id>/LC_MESSAGES/newsletter.po``, for
   each of :attr:`Language.catalog_ids <newsletter.language.Language.catalog_ids>`
   (``pt_BR``, then ``pt``): a newsletter changes one string without copying a catalog;
2. the built-in ``templates/locale/<id>/LC_MESSAGES/newsletter.po``, the same ids;
3. English: the message id itself.

A string that is missing, empty or ``fuzzy`` in one catalog falls through to the next. The
``.po`` files are read as they are (Babel's reader, compiled in memory with Babel's MO
writer for :class:`gettext.GNUTranslations`, which knows each language's plural rule), so
a fresh checkout needs no build step; a file is read again when it changes. A broken file
is a :class:`~newsletter.errors.RenderError` naming the file and the line: bad syntax, a
translation that uses a ``%(name)s`` its message id doesn't have (it would fail each
render), a lone ``%`` (write ``%%``), a plural with a form missing or one too many.

Every string is a format string, also without values (as Jinja2's "newstyle" gettext has
it): ``%(name)s`` are the values, ``%%`` is a percent sign. In HTML the translation is
text, never markup: its ``&``, ``<`` and ``>`` are escaped (so a catalog can't add a tag,
and the same string serves the HTML and the text part), and so is every value that isn't
:class:`~markupsafe.Markup` already, exactly as ``{{ value }}`` is.

Templates use Jinja2's i18n extension, ``{% trans name=sender.name %}Unsubscribe from
{{ name }}{% endtrans %}``; the ``gettext`` and ``ngettext`` it calls come with each
render's context (:meth:`Wording.template_functions`), never installed on the shared,
cached :class:`jinja2.Environment`. Python code calls :meth:`Wording.gettext`;
:func:`N_` marks a string to be translated later.
"""

from __future__ import annotations

import functools
import gettext as gettext_module
import io
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from jinja2.runtime import Context
from markupsafe import Markup

from newsletter.errors import RenderError
from newsletter.language import Language

if TYPE_CHECKING:  # Babel is imported on first use: commands that render nothing don't pay for it
    from babel.messages.catalog import Catalog, Message
    from babel.messages.pofile import PoFileError

__all__ = [
    "DOMAIN",
    "LOCALE_FOLDER",
    "N_",
    "Wording",
    "catalog_path",
    "configure_environment",
    "placeholders",
    "wording_for",
]

#: the catalogs' name: ``locale/<id>/LC_MESSAGES/newsletter.po``
DOMAIN = "newsletter"
#: the folder inside a templates folder that holds the catalogs (and ``newsletter.pot``)
LOCALE_FOLDER = "locale"

#: a line of a catalog that isn't a comment: a keyword and a string, or a string that continues one
_PO_LINE = re.compile(r'(?:(?:msgctxt|msgid|msgid_plural|msgstr(?:\[\d+\])?)\s+)?"(?:[^"\\]|\\.)*"')
#: ``%(name)s`` and its kin; ``%%`` is matched too, so that it is skipped as one unit
_PLACEHOLDER = re.compile(r"%(?:\((?P<name>[^)]*)\))?[#0 +-]*(?:\d+|\*)?(?:\.\d+)?(?P<type>[diouxXeEfFgGcrsa%])")


def N_(message: str) -> str:
    """Mark ``message`` for the catalogs without translating it now (:meth:`Wording.gettext` does, later)."""
    return message


def catalog_path(folder: Path, locale_id: str) -> Path:
    """Where the catalog of ``locale_id`` is in a templates ``folder``: ``locale/<id>/LC_MESSAGES/newsletter.po``."""
    return folder / LOCALE_FOLDER / locale_id / "LC_MESSAGES" / f"{DOMAIN}.po"


def placeholders(text: str) -> frozenset[str]:
    """The names of the ``%(name)s`` values in ``text`` (``%%`` is none)."""
    return frozenset(match["name"] for match in _PLACEHOLDER.finditer(text) if match["type"] != "%"
                     and match["name"] is not None)


@dataclass(frozen=True)
class _Catalog:
    """One ``.po`` file, compiled: its translations and which message ids it really has."""

    path: Path
    translations: gettext_module.GNUTranslations
    #: message ids with a translation (not empty, not fuzzy)
    singular: frozenset[str]
    #: the singular ids of plural messages with every form translated
    plural: frozenset[str]


@dataclass(frozen=True)
class Wording:
    """The catalogs for one language, most particular first; English when none has a string."""

    language: Language
    catalogs: tuple[_Catalog, ...] = field(default=(), repr=False)

    def translate(self, message: str) -> str:
        """``message``'s translation, unformatted (``%(name)s`` and ``%%`` still in it)."""
        for catalog in self.catalogs:
            if message in catalog.singular:
                return catalog.translations.gettext(message)
        return message

    def translate_plural(self, singular: str, plural: str, count: int) -> str:
        """The form of ``singular``/``plural`` for ``count`` in this language, unformatted."""
        for catalog in self.catalogs:
            if singular in catalog.plural:
                return catalog.translations.ngettext(singular, plural, count)
        return singular if count == 1 else plural

    def gettext(self, message: str, /, **values: object) -> str:
        """``message`` translated, its ``%(name)s`` replaced by ``values`` (plain text: nothing escaped)."""
        return _format(self.translate(message), values)

    def ngettext(self, singular: str, plural: str, count: int, /, **values: object) -> str:
        """The plural form for ``count``, translated and formatted; ``%(num)d`` is ``count`` unless given."""
        values.setdefault("num", count)
        return _format(self.translate_plural(singular, plural, count), values)

    def format_list(self, items: Sequence[str]) -> str:
        """``items`` as this language joins them in a sentence: "A, B, and C", "A, B und C", "A وB وC"."""
        from babel.lists import format_list

        return format_list(list(items), style="standard", locale=self.language.locale) if items else ""

    def template_functions(self) -> dict[str, Callable[..., str]]:
        """``gettext`` and ``ngettext`` for a template's context, as Jinja2's newstyle i18n calls them.

        In an autoescaped template the translation is escaped as text and so is every value
        that isn't Markup; the result is Markup.
        """

        @jinja2.pass_context
        def gettext(context: Context, message: str, /, **values: Any) -> str:
            return self._in_template(context, self.translate(message), values)

        @jinja2.pass_context
        def ngettext(context: Context, singular: str, plural: str, count: int, /,
                     **values: Any) -> str:
            values.setdefault("num", count)
            return self._in_template(context, self.translate_plural(singular, plural, count), values)

        return {"gettext": gettext, "ngettext": ngettext}

    @staticmethod
    def _in_template(context: Context, text: str, values: dict[str, Any]) -> str:
        if context.eval_ctx.autoescape:
            # The translation is text between tags: escape() would also turn its quotes into entities,
            # which a page's bytes would show. Markup's % escapes each value that isn't Markup, as {{ }} does.
            return Markup(text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")) % values
        return _format(text, values)


def _format(text: str, values: Mapping[str, object]) -> str:
    return text % values


def wording_for(language: Language, templates_dir: Path | None = None) -> Wording:
    """The catalogs for ``language``: ``templates_dir``'s own (a newsletter's ``[templates] dir``),
    then the built-in ones, for each of its catalog ids. RenderError names a broken file and line."""
    builtin = _builtin_folder()
    folders = [builtin] if templates_dir is None or _same(templates_dir, builtin) else [templates_dir, builtin]
    found = []
    for folder in folders:
        for locale_id in language.catalog_ids:
            catalog = _catalog_at(catalog_path(folder, locale_id))
            if catalog is not None:
                found.append(catalog)
    return Wording(language, tuple(found))


def configure_environment(environment: jinja2.Environment, english: Wording) -> None:
    """Set up ``environment`` (which has ``jinja2.ext.i18n``) for newstyle ``{% trans %}``.

    ``english``'s functions become the environment's globals, the fallback when a render's
    context brings none; each render passes its own language's in its context.
    """
    # The extension adds newstyle_gettext to the environment at run time; typed stubs don't know it.
    untyped: Any = environment
    untyped.newstyle_gettext = True
    environment.globals.update(english.template_functions())


@functools.cache
def _builtin_folder() -> Path:
    """The built-in templates folder, resolved (found once: a page is rendered in ~20 µs, the search costs more)."""
    from newsletter.render.engine import default_templates_dir  # engine imports this module

    return default_templates_dir().resolve()


@functools.lru_cache(maxsize=64)
def _same(folder: Path, builtin: Path) -> bool:
    try:
        return folder.resolve() == builtin
    except OSError:
        return False


def _catalog_at(path: Path) -> _Catalog | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RenderError(f"{path}: can't read the catalog: {exc.strerror or exc}") from exc
    # Keyed by the file's time and size: an edited catalog (the preview, a long-running server) is read again.
    return _read_catalog(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _read_catalog(path: Path, mtime_ns: int, size: int) -> _Catalog:
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import PoFileError, read_po

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RenderError(f"{path}: can't read the catalog: {exc.strerror or exc}") from exc
    try:
        catalog = read_po(io.BytesIO(data), domain=DOMAIN, abort_invalid=True)
    except PoFileError as exc:  # its line number counts from 0
        raise RenderError(f"{path}:{exc.lineno + 1}: not a valid catalog: {_po_reason(exc)}") from exc
    except (UnicodeDecodeError, LookupError) as exc:
        raise RenderError(f"{path}: not a valid catalog: the file is not in its declared charset ({exc})") from exc
    except ValueError as exc:  # a header Babel can't read (a bad Plural-Forms, say)
        raise RenderError(f"{path}: not a valid catalog: {exc}") from exc
    _check_quotes(path, data.decode(catalog.charset or "utf-8", errors="replace"))
    singular: set[str] = set()
    plural: set[str] = set()
    for message in list(catalog)[1:]:  # the first is the header
        _check_forms(path, catalog, message)
        if message.fuzzy or not _complete(message):
            del catalog[message.id]  # falls through to the next catalog
            continue
        _check(path, message)
        if message.pluralizable:
            plural.add(str(message.id[0]))
        else:
            singular.add(str(message.id))
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return _Catalog(path, gettext_module.GNUTranslations(buffer), frozenset(singular), frozenset(plural))


def _check_quotes(path: Path, text: str) -> None:
    """Every string is whole on its line. Babel's reader takes ``msgstr "Speichern`` (the closing quote
    forgotten) for "Speicher" without a word: a hand-edited override catalog would lose a letter."""
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not _PO_LINE.fullmatch(stripped):
            raise RenderError(f"{path}:{number}: not a valid catalog: each string goes in double quotes on"
                              f' one line (a quote inside one is \\"): {stripped[:60]}')


def _check_forms(path: Path, catalog: Catalog, message: Message) -> None:
    """A plural has all its forms or none (Babel reads a missing ``msgstr[n]`` as an empty one, and more
    forms than ``Plural-Forms`` says as an error)."""
    if not message.pluralizable or not isinstance(message.string, tuple | list) or not any(message.string):
        return
    empty = [number for number, form in enumerate(message.string) if not form]
    if empty:
        raise RenderError(f"{path}:{message.lineno}: msgstr[{empty[0]}] is missing or empty: the catalog's"
                          f" Plural-Forms has {catalog.num_plurals} forms (msgstr[0] … msgstr"
                          f"[{catalog.num_plurals - 1}]); translate all of them or none")


def _complete(message: Message) -> bool:
    if message.pluralizable:
        return isinstance(message.string, tuple | list) and bool(message.string) and all(message.string)
    return bool(message.string)


def _check(path: Path, message: Message) -> None:
    """The translation can be formatted with the values its message id has (each render would fail otherwise)."""
    where = f"{path}:{message.lineno}"
    ids = message.id if isinstance(message.id, tuple | list) else (message.id,)
    strings = message.string if isinstance(message.string, tuple | list) else (message.string,)
    known = set().union(*(placeholders(str(text)) for text in ids))
    if message.pluralizable:
        known.add("num")
    probe = dict.fromkeys(known, 1)
    for text in strings:
        unknown = placeholders(str(text)) - known
        if unknown:
            raise RenderError(f"{where}: the translation uses %({sorted(unknown)[0]})s, which {ids[0]!r} doesn't"
                              f" have (it has {', '.join(f'%({name})s' for name in sorted(known)) or 'none'})")
        # "100% sicher" formats without an error ("% s" takes the whole mapping): look for unnamed ones too.
        unnamed = any(match["name"] is None and match["type"] != "%" for match in _PLACEHOLDER.finditer(str(text)))
        try:
            if unnamed:
                raise ValueError("a % that names no value")
            str(text) % probe
        except (ValueError, TypeError, KeyError) as exc:
            raise RenderError(f"{where}: the translation {str(text)!r} is not a valid format string ({exc});"
                              " write a percent sign as %%") from exc


def _po_reason(error: PoFileError) -> str:
    reason = str(error.args[0]) if error.args else str(error)
    return reason.removesuffix(f" on {error.lineno}")
