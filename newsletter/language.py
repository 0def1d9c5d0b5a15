"""Languages: BCP 47 tags, their writing direction and local dates, from Babel's CLDR data.

An issue says which language it is in (``language: de`` in its front matter, else
``[sender] language``); :func:`parse_language` checks the tag and returns a :class:`Language`:
the tag as HTML's ``lang`` and the ``Content-Language`` header carry it, the direction
(``rtl`` for Arabic, Hebrew, Persian, Urdu … and for any tag whose script is written right
to left, such as ``pa-Arab``), the Babel locale that formats dates and picks the message
catalog. Nothing here is a hand list: languages, scripts, regions, variants, old codes
and directions all come from Babel's copy of the CLDR. The only parsing of our own is the
subtag pattern below (language, script, region, variants), because Babel's own reader
accepts ``de_DE`` and silently drops what it has no data for (``en-ZZ`` becomes ``en_US``).

Babel is imported on first use, not with this module: every command reads the configuration,
and most never need a language other than the default.

Extensions and private use (``ar-SA-u-nu-arab``, ``de-x-foo``) are refused with a hint to
drop them: nothing here would honour them.
"""

from __future__ import annotations

import datetime as dt
import difflib
import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from babel import Locale

__all__ = [
    "DATE_FORMATS",
    "DEFAULT_LANGUAGE",
    "Language",
    "LanguageError",
    "check_date_format",
    "local_date",
    "parse_language",
]

#: the language of an issue that names none, when ``[sender] language`` isn't set either
DEFAULT_LANGUAGE = "en"
#: the date lengths CLDR names (``full``: "Friday, July 7, 2017"); any other value is a CLDR pattern
DATE_FORMATS = ("full", "long", "medium", "short")

_SUBTAGS = re.compile(
    r"(?P<language>[A-Za-z]{2,3})"
    r"(?:-(?P<script>[A-Za-z]{4}))?"
    r"(?:-(?P<region>[A-Za-z]{2}|[0-9]{3}))?"
    r"(?P<variants>(?:-(?:[A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*)"
)
_EXTENSION = re.compile(r"-(?:[0-9A-WY-Za-wy-z]|[Xx])-")
_EXAMPLES = "a BCP 47 tag such as en, de, fr, es, ar, he, pt-BR or zh-Hant"


class LanguageError(ValueError):
    """A language tag can't be used: ``message`` says why, ``hint`` how to fix it.

    Not a :class:`~newsletter.errors.NewsletterError` on purpose: the issue parser and the
    configuration reader turn it into theirs, with the file and line or the key.
    """

    def __init__(self, message: str, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)


@dataclass(frozen=True)
class Language:
    """A checked language tag and what follows from it."""

    #: the tag in its conventional case, as HTML ``lang`` and ``Content-Language`` carry it: ``pt-BR``
    tag: str
    #: ``rtl`` or ``ltr`` (the few scripts CLDR writes top to bottom are ``ltr`` in HTML)
    direction: Literal["ltr", "rtl"]
    #: the Babel locale identifier that formats dates and picks a catalog: ``pt_BR``
    locale_id: str
    #: the English name, for messages: "Portuguese (Brazil)"
    name: str

    @property
    def is_rtl(self) -> bool:
        """True for a language written right to left."""
        return self.direction == "rtl"

    @property
    def locale(self) -> Locale:
        """The Babel locale (parsed again each time: a Locale is not hashable in a dataclass)."""
        return _locale(self.locale_id)

    @property
    def catalog_ids(self) -> tuple[str, ...]:
        """Catalog names to try, most specific first: ``pt_BR``, ``pt`` (then English, by the caller)."""
        parts = self.locale_id.split("_")
        return tuple(dict.fromkeys("_".join(parts[:n]) for n in range(len(parts), 0, -1)))


@functools.lru_cache(maxsize=256)
def parse_language(tag: str) -> Language:
    """Check ``tag`` (BCP 47: language, optional script, region and variants) and describe it.

    Raises :class:`LanguageError` with a one-line reason and a suggestion for a malformed
    tag (``de_DE``, ``english``), an unknown subtag (``zz``, ``de-XX``), an old code (``iw``)
    or an extension.
    """
    from babel.core import get_global

    text = tag.strip()
    if not text:
        raise LanguageError("the language is empty", f"write {_EXAMPLES}")
    if "_" in text and _SUBTAGS.fullmatch(text.replace("_", "-")):
        raise LanguageError(f"'{text}' is not a BCP 47 tag", f"write it with hyphens: {text.replace('_', '-')}")
    if _EXTENSION.search(f"-{text}-"):
        base = _EXTENSION.split(f"-{text}-", maxsplit=1)[0].strip("-")
        hint = f"write {base}" if base else f"write {_EXAMPLES}"
        raise LanguageError(f"'{text}': extensions and private-use subtags are not supported", hint)
    match = _SUBTAGS.fullmatch(text)
    if match is None:
        raise LanguageError(f"'{text}' is not a BCP 47 language tag", _suggest(text))
    language = match["language"].lower()
    script = match["script"].title() if match["script"] else None
    region = match["region"].upper() if match["region"] else None
    variants = [variant.upper() for variant in match["variants"].split("-") if variant]
    english = _locale("en")
    old = get_global("language_aliases").get(language)
    if old is not None and "_" not in old:
        raise LanguageError(f"'{language}' is an old code for {_name(old)}", f"write {old}")
    if language not in english.languages:
        raise LanguageError(f"unknown language '{match['language']}' in '{text}'", _suggest(match["language"]))
    if script is not None and script not in english.scripts:
        raise LanguageError(f"unknown script '{match['script']}' in '{text}'",
                            "a script is four letters, as in zh-Hant, sr-Latn, pa-Arab")
    if region is not None and (region not in english.territories or region == "ZZ"):
        raise LanguageError(f"unknown region '{match['region']}' in '{text}'",
                            "a region is two letters or three digits, as in pt-BR, de-AT, es-419")
    for variant in variants:
        if variant not in english.variants:
            raise LanguageError(f"unknown variant '{variant.lower()}' in '{text}'", f"write {language}")
    locale = _nearest_locale(language, script, region)
    return Language(
        tag="-".join(part for part in (language, script, region, *(v.lower() for v in variants)) if part),
        direction=_direction(locale, script),
        locale_id=str(locale),
        name=_display_name(language, script, region),
    )


def local_date(date: dt.date, language: Language, date_format: str = "full") -> str:
    """``date`` as a reader of ``language`` writes it: ``full`` in English is ``Friday, July 7, 2017``.

    ``date_format`` is one of :data:`DATE_FORMATS` or a CLDR pattern (``EEEE d MMMM y``;
    quote literal words: ``d 'de' MMMM``).
    """
    from babel.dates import format_date

    return format_date(date, format=date_format, locale=language.locale)


def check_date_format(date_format: str) -> str:
    """``date_format`` unchanged if Babel can format a date with it, else a :class:`LanguageError`."""
    from babel.dates import format_date

    if date_format in DATE_FORMATS:
        return date_format
    if not date_format.strip():
        raise LanguageError("the date format is empty", f"use one of {', '.join(DATE_FORMATS)} or a CLDR pattern")
    try:
        shown = format_date(dt.date(2017, 7, 7), format=date_format, locale=_locale("en"))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        # AttributeError: a time field (h, m, s) asked of a date
        raise LanguageError(f"date format '{date_format}' is not a CLDR date pattern",
                            "for example 'EEEE, d MMMM y'; quote literal words: d 'de' MMMM") from exc
    if shown == format_date(dt.date(2018, 8, 9), format=date_format, locale=_locale("en")):
        raise LanguageError(f"date format '{date_format}' shows no date", "for example 'EEEE, d MMMM y'")
    return date_format


@functools.lru_cache(maxsize=64)
def _locale(identifier: str) -> Locale:
    from babel import Locale

    return Locale.parse(identifier)


def _nearest_locale(language: str, script: str | None, region: str | None) -> Locale:
    """The most specific locale Babel has data for: ``pt_BR``, else ``pt``, keeping the script if it can."""
    from babel import Locale, UnknownLocaleError

    candidates = [
        "_".join(part for part in (language, script, region) if part),
        "_".join(part for part in (language, region) if part) if script is None else "",
        "_".join(part for part in (language, script) if part),
        language,
    ]
    for identifier in dict.fromkeys(candidate for candidate in candidates if candidate):
        try:
            locale = Locale.parse(identifier)
        except (UnknownLocaleError, ValueError):
            continue
        # Babel folds what it has no data for (``en_ZZ`` -> ``en_US``): only an exact region counts.
        if region is not None and f"_{region}" in identifier and locale.territory not in (region, None):
            continue
        return locale
    return _locale("en")  # a language CLDR names but has no locale data for (rare): dates in English


def _direction(locale: Locale, script: str | None) -> Literal["ltr", "rtl"]:
    """The locale's direction, or the written script's when it differs (``ar-Latn`` is ltr, ``pa-Arab`` rtl)."""
    from babel import Locale, UnknownLocaleError

    if script is not None and script != (locale.script or _likely_script(str(locale))):
        try:
            return "rtl" if Locale.parse(f"und_{script}").text_direction == "rtl" else "ltr"
        except (UnknownLocaleError, ValueError):
            return "ltr"
    return "rtl" if locale.text_direction == "rtl" else "ltr"


def _likely_script(identifier: str) -> str | None:
    from babel.core import get_global

    likely = get_global("likely_subtags").get(identifier.split("_")[0], "")
    parts = likely.split("_")
    return parts[1] if len(parts) > 1 and len(parts[1]) == 4 else None


def _name(language: str) -> str:
    return str(_locale("en").languages.get(language, language))


def _display_name(language: str, script: str | None, region: str | None) -> str:
    english = _locale("en")
    details = [str(english.scripts[script]) if script else "", str(english.territories[region]) if region else ""]
    extra = ", ".join(detail for detail in details if detail)
    return f"{_name(language)} ({extra})" if extra else _name(language)


def _suggest(text: str) -> str:
    """A hint for an unknown or malformed tag: the code of a language named like it (in English
    or in itself: ``Deutsch``), or codes that differ by a letter."""
    wanted = text.strip().lower()
    names = _language_names()
    if wanted in names:
        return f"{text.strip()} is {names[wanted]}"
    close_names = difflib.get_close_matches(wanted, list(names), n=1, cutoff=0.8)
    if close_names:
        code = names[close_names[0]]
        return f"did you mean {code} ({_name(code)})?"
    leading = re.match(r"[a-z]{2,3}(?![a-z])", wanted)
    if leading and leading[0] != wanted and leading[0] in _locale("en").languages:
        return f"write {leading[0]} ({_name(leading[0])})"
    if 2 <= len(wanted) <= 3:
        same_length = [code for code in _with_data() if len(code) == len(wanted)]
        close_codes = difflib.get_close_matches(wanted, same_length, n=3, cutoff=0.5)
        if close_codes:
            shown = ", ".join(f"{code} ({_name(code)})" for code in close_codes)
            return f"did you mean {shown}? or write {_EXAMPLES}"
    return f"write {_EXAMPLES}"


@functools.lru_cache(maxsize=1)
def _with_data() -> tuple[str, ...]:
    """The language codes Babel has locale data for (only read when a tag is wrong)."""
    from babel.localedata import locale_identifiers

    return tuple(sorted({identifier for identifier in locale_identifiers() if "_" not in identifier}))


@functools.lru_cache(maxsize=1)
def _language_names() -> dict[str, str]:
    """Lower-cased language names, English and each language's own, to their codes (read on errors only)."""
    from babel import UnknownLocaleError

    names = {str(name).lower(): code for code, name in _locale("en").languages.items() if "_" not in code}
    for code in _with_data():
        try:
            own = _locale(code).languages.get(code)
        except (UnknownLocaleError, ValueError):
            continue
        if own:
            names.setdefault(str(own).lower(), code)
    return names
