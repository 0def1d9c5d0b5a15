"""Language tags, directions and local dates (newsletter.language), checked against Babel's CLDR data."""

from __future__ import annotations

import datetime as dt

import pytest

from newsletter.language import LanguageError, check_date_format, local_date, parse_language

FRIDAY = dt.date(2017, 7, 7)


@pytest.mark.parametrize(("tag", "shown", "direction", "locale_id"), [
    ("en", "en", "ltr", "en"),
    ("EN", "en", "ltr", "en"),
    ("de", "de", "ltr", "de"),
    ("pt-br", "pt-BR", "ltr", "pt_BR"),
    ("ja", "ja", "ltr", "ja"),
    ("ar", "ar", "rtl", "ar"),
    ("he", "he", "rtl", "he"),
    ("fa", "fa", "rtl", "fa"),
    ("ur", "ur", "rtl", "ur"),
    ("yi", "yi", "rtl", "yi"),
    ("ckb", "ckb", "rtl", "ckb"),
    ("zh-hant-tw", "zh-Hant-TW", "ltr", "zh_Hant_TW"),
    ("es-419", "es-419", "ltr", "es_419"),
    ("de-DE-1996", "de-DE-1996", "ltr", "de_DE"),
    ("de-US", "de-US", "ltr", "de"),  # a valid tag Babel has no locale for: German dates
])
def test_a_tag_is_checked_and_described(tag: str, shown: str, direction: str, locale_id: str) -> None:
    language = parse_language(tag)
    assert (language.tag, language.direction, language.locale_id) == (shown, direction, locale_id)


def test_the_script_decides_the_direction_when_it_is_written() -> None:
    assert parse_language("ar-Latn").direction == "ltr"  # Arabic in Latin letters
    assert parse_language("pa-Arab").direction == "rtl"  # Punjabi in Arabic script (Shahmukhi)
    assert parse_language("pa").direction == "ltr"  # Punjabi in Gurmukhi
    assert parse_language("az-Arab").is_rtl and not parse_language("az").is_rtl


@pytest.mark.parametrize(("tag", "message", "hint"), [
    ("", "empty", "BCP 47"),
    ("de_DE", "not a BCP 47 tag", "de-DE"),
    ("english", "not a BCP 47", "english is en"),
    ("Deutsch", "not a BCP 47", "Deutsch is de"),
    ("français", "not a BCP 47", "français is fr"),
    ("zz", "unknown language 'zz'", "did you mean"),
    ("iw", "old code for Hebrew", "write he"),
    ("de-XX", "unknown region 'XX'", "pt-BR"),
    ("en-ZZ", "unknown region 'ZZ'", "pt-BR"),  # Babel alone would make this en_US
    ("sr-Abcd", "unknown script 'Abcd'", "sr-Latn"),
    ("ar-SA-u-nu-arab", "extensions", "write ar-SA"),
    ("x-klingon", "private-use", "BCP 47"),
    ("de-", "not a BCP 47", "de (German)"),
])
def test_a_bad_tag_says_what_and_how_to_fix_it(tag: str, message: str, hint: str) -> None:
    with pytest.raises(LanguageError) as caught:
        parse_language(tag)
    assert message in caught.value.message
    assert hint in caught.value.hint
    assert "\n" not in str(caught.value)


def test_dates_are_written_the_readers_way() -> None:
    assert local_date(FRIDAY, parse_language("en")) == "Friday, July 7, 2017"  # the seed's header, unchanged
    assert local_date(FRIDAY, parse_language("en-GB")) == "Friday, 7 July 2017"
    assert local_date(FRIDAY, parse_language("de")) == "Freitag, 7. Juli 2017"
    assert local_date(FRIDAY, parse_language("fr")) == "vendredi 7 juillet 2017"
    assert local_date(FRIDAY, parse_language("ar")) == "الجمعة، 7 يوليو 2017"
    assert local_date(FRIDAY, parse_language("he")) == "יום שישי, 7 ביולי 2017"
    assert local_date(FRIDAY, parse_language("de"), "d. MMMM y") == "7. Juli 2017"
    assert local_date(FRIDAY, parse_language("es"), "d 'de' MMMM") == "7 de julio"
    assert local_date(FRIDAY, parse_language("en"), "short") == "7/7/17"


@pytest.mark.parametrize("pattern", ["hello", "HH:mm", "", "'just words'"])
def test_a_date_format_that_cant_show_a_date_is_refused(pattern: str) -> None:
    with pytest.raises(LanguageError):
        check_date_format(pattern)


@pytest.mark.parametrize("pattern", ["full", "long", "medium", "short", "EEEE d MMMM y", "d 'de' MMMM 'de' y"])
def test_a_date_format_babel_can_use_is_kept(pattern: str) -> None:
    assert check_date_format(pattern) == pattern


def test_catalog_names_go_from_specific_to_general() -> None:
    assert parse_language("pt-BR").catalog_ids == ("pt_BR", "pt")
    assert parse_language("de").catalog_ids == ("de",)
