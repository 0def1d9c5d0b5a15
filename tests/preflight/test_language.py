"""``check`` knows languages: a text that reads as another language than it declares, and a template
that doesn't carry the issue's direction or language into the email (issue 17 item 5).

The issue files are real ones (tests/fixtures/languages/, briefings written in each language),
checked the way ``newsletter check`` checks them: parsed, rendered with the built-in template or
one of the test's own, and read by the real detector (CLD2).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import example, given, settings
from hypothesis import strategies as st

from newsletter.cli.commands import main
from newsletter.config import SenderSettings, Settings
from newsletter.issue.parse import load_issue
from newsletter.preflight.finding import Finding
from newsletter.preflight.language import (
    DIRECTION_FIX,
    MIN_LETTERS,
    detect_language,
    issue_words,
    language_family,
)
from newsletter.preflight.report import check_files
from tests.cli.test_commands import _assert_text_is_in_json, _text_and_json
from tests.conftest import ROOT, SEED_ISSUE

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "languages"
CODES = ("language-mismatch", "template-direction", "template-language")
BUILT_IN_MJML = '<mjml lang="{{ lang }}" dir="{{ dir }}">'
MJML_TAG = re.compile(r"^<mjml\b[^>]*>", re.MULTILINE)  # the tag, not a comment naming it


def issue_file(folder: Path, name: str, language: str = "") -> Path:
    """The fixture ``name`` as an issue file in ``folder``, with ``language: <language>`` on line 3 if given."""
    text = (FIXTURES / f"{name}.md").read_text(encoding="utf-8")
    if language:
        text = text.replace("\ndate: ", f"\nlanguage: {language}\ndate: ", 1)
    path = folder / f"{name}{'-' + language if language else ''}.md"
    path.write_text(text, encoding="utf-8")
    return path


def language_findings(path: Path, config: Settings | None = None) -> list[Finding]:
    """What ``check`` reports about languages for the issue file ``path``."""
    report = check_files([path], config or Settings())
    assert not report.errors, report.errors
    return [finding for finding in report.findings if finding.code in CODES]


def own_templates(tmp_path: Path, mjml_tag: str) -> tuple[Settings, Path]:
    """Settings whose ``[templates] dir`` has the built-in briefing with its ``<mjml>`` tag replaced."""
    folder = tmp_path / "templates"
    folder.mkdir(exist_ok=True)
    source = (ROOT / "templates" / "briefing.mjml").read_text(encoding="utf-8")
    template = folder / "briefing.mjml"
    template.write_text(MJML_TAG.sub(lambda _: mjml_tag, source, count=1), encoding="utf-8")
    return Settings(templates_dir=folder), template


def mjml_line(template: Path) -> int:
    """The line of ``template``'s ``<mjml>`` tag."""
    source = template.read_text(encoding="utf-8")
    match = MJML_TAG.search(source)
    assert match is not None
    return source.count("\n", 0, match.start()) + 1


# --- a text in another language than declared ------------------------------------------


@pytest.mark.parametrize(("name", "declared", "seen", "line", "fix"), [
    ("ar", "", "Arabic (ar,", 1, "add 'language: ar' to the front matter"),
    ("de", "fr", "German (de,", 3, "write 'language: de'"),
    ("ja", "en", "Japanese (ja,", 3, "write 'language: ja'"),
    ("he", "", "Hebrew (he,", 1, "add 'language: he' to the front matter"),
    ("he", "ar", "Hebrew (he,", 3, "write 'language: he'"),  # both right to left: only the detector can tell
])
def test_a_mislabelled_issue_is_a_warning_at_its_language_line(tmp_path: Path, name: str, declared: str,
                                                                seen: str, line: int, fix: str) -> None:
    path = issue_file(tmp_path, name, declared)
    [finding] = language_findings(path)
    assert (finding.severity, finding.code, finding.source, finding.line) == ("warning", "language-mismatch",
                                                                               str(path), line)
    assert f"the text reads as {seen} " in finding.message and re.search(r"\d+% of it\)", finding.message)
    assert finding.message.endswith(fix) or f"; {fix}" in finding.message, finding.message
    if declared:
        assert f"the front matter says 'language: {declared}'" in finding.message
    else:
        assert "names no language, so it goes out as English (en, [sender] language)" in finding.message


@pytest.mark.parametrize(("name", "declared"), [
    ("ar", "ar"), ("de", "de"), ("ja", "ja"), ("he", "he"),
    ("de", "de-AT"), ("pt", "pt-BR"), ("pt", "pt"), ("zh-Hant", "zh"), ("zh-Hant", "zh-Hant"),
    ("sr-Latn", "sr-Latn"), ("sr-Latn", "sr"), ("sr-Latn", "hr"), ("sr-Latn", "bs"),
    ("nb", "nb"), ("nb", "no"), ("nb", "nn"),
])
def test_a_correctly_labelled_issue_is_not_flagged(tmp_path: Path, name: str, declared: str) -> None:
    """Families compare: pt-BR is pt, zh is zh-Hant, the Serbo-Croatian and Norwegian standards are one."""
    assert language_findings(issue_file(tmp_path, name, declared)) == []


@pytest.mark.parametrize("path", [SEED_ISSUE, FIXTURES / "en-names.md", FIXTURES / "bilingual.md"],
                         ids=["seed", "english-full-of-names", "english-and-spanish"])
def test_english_full_of_names_citations_urls_and_code_is_not_flagged(path: Path) -> None:
    assert language_findings(path) == []


def test_a_short_issue_gets_no_verdict(tmp_path: Path) -> None:
    path = issue_file(tmp_path, "short-de")  # German, no language: so English, but a line is too little to tell
    assert language_findings(path) == []
    words = issue_words(load_issue(path))
    assert "Das Treffen am Donnerstag ist verschoben." in words
    assert sum(char.isalpha() for char in words) < MIN_LETTERS and detect_language(words) is None


def test_the_sender_language_is_what_an_issue_without_language_declares(tmp_path: Path) -> None:
    german = Settings(sender=dataclasses.replace(SenderSettings(), language="de"))
    assert language_findings(issue_file(tmp_path, "de"), german) == []
    [arabic] = language_findings(issue_file(tmp_path, "ar"), german)
    assert "so it goes out as German (de, [sender] language); add 'language: ar'" in arabic.message
    [french] = language_findings(issue_file(tmp_path, "de", "fr"), german)
    assert french.message.endswith("write 'language: de', or leave it out ([sender] language is de)")


def test_the_detector_reads_the_issues_words_not_its_citations_code_or_addresses() -> None:
    arabic = issue_words(load_issue(FIXTURES / "ar.md"))
    assert "ضغط الرئيس الأمريكي" in arabic and "Washington Post" not in arabic and "Reuters" not in arabic
    assert "apnews.com" not in arabic
    english = issue_words(load_issue(FIXTURES / "en-names.md"))
    assert "Olaf Scholz, Emmanuel Macron" in english and "Zeitenwende" in english
    for left_out in ("Politico", "ft.com", "ec.europa.eu", "www.consilium", "press@example.com", "package_search",
                     "import requests", "Zölle"):
        assert left_out not in english, left_out


def test_a_serbian_text_in_latin_letters_is_suggested_as_sr_latn(tmp_path: Path) -> None:
    [finding] = language_findings(issue_file(tmp_path, "sr-Latn", "de"))
    assert "reads as Serbian (Latin) (sr-Latn," in finding.message and finding.message.endswith("'language: sr-Latn'")


def test_a_language_the_detector_does_not_know_is_only_contradicted_by_another_script(tmp_path: Path) -> None:
    """CLD2 has no Asturian nor Cantonese: a Latin or Han text may be in them, an Arabic one is not."""
    assert language_findings(issue_file(tmp_path, "de", "ast")) == []
    assert language_findings(issue_file(tmp_path, "zh-Hant", "yue")) == []
    [finding] = language_findings(issue_file(tmp_path, "ar", "ast"))
    assert "reads as Arabic (ar," in finding.message and "(Asturian)" in finding.message


def test_a_script_without_a_language_the_detector_knows_is_named(tmp_path: Path) -> None:
    """CLD2 knows no Tamazight, but it knows Tifinagh: not English's script, and Tamazight's (zgh) own."""
    body = "ⴰⵣⵓⵍ ⴼⵍⵍⴰⵡⵏ ⴰⴷ ⵉⵏⴰ ⵎⴰⵙⵙ ⵏ ⵜⵎⵏⴰⴹⵜ ⵏⵏⵖ ⵉⵙ ⵜⵓⵙⵙⵓⵏⵜ ⵏ ⵓⵎⵓⵙⵙⵓ ⴰⴷ ⵜⵜⵓⵙⴽⴰⵔ ⴳ ⵡⵓⵙⵙⴰⵏ ⵏ ⵓⵙⵉⵏⵏⴰⵢ."
    text = f"---\nsubject: ⴰⵣⵓⵍ\ndate: 2024-03-14\npreheader: ⴰⵣⵓⵍ\n---\n\n# ⴰⵣⵓⵍ\n\n{body}\n\n{body}\n\n{body}\n"
    path = tmp_path / "2024-03-14-tfng.md"
    path.write_text(text, encoding="utf-8")
    [finding] = language_findings(path)
    assert finding.message.startswith("the text is written in Tifinagh script (100% of it), but the issue names "
                                      "no language, so it goes out as English (en, [sender] language), which isn't "
                                      "written in it; give the text's language in the front matter")
    path.write_text(text.replace("\ndate:", "\nlanguage: zgh\ndate:", 1), encoding="utf-8")
    assert language_findings(path) == []


@pytest.mark.parametrize(("one", "other"), [("pt-BR", "pt"), ("zh-Hant", "zh"), ("iw", "he"), ("sr-Latn", "hr"),
                                            ("nb", "no"), ("nn", "nb"), ("id", "ms"), ("en-GB", "en")])
def test_language_families(one: str, other: str) -> None:
    assert language_family(one) == language_family(other)


def test_language_families_that_differ() -> None:
    assert len({language_family(tag) for tag in ("de", "nl", "da", "nb", "sv", "ar", "fa", "ur", "he", "yi")}) == 10


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(text=st.text(min_size=0, max_size=600))
@example(text="Words \x00\x01\x7f\x80\x9f \ufffe\uffff\ufdd0\U0010ffff \ud800 and more words " * 10)
def test_the_detector_answers_any_text(text: str) -> None:
    """CLD2 refuses control characters and noncharacters ("invalid UTF-8"): they never reach it."""
    found = detect_language(text)
    assert found is None or (0 < found.share <= 100 and found.letters >= MIN_LETTERS)


# --- the template carries the issue's direction and language ----------------------------


def test_a_template_without_dir_is_an_error_for_a_right_to_left_issue(tmp_path: Path) -> None:
    config, template = own_templates(tmp_path, "<mjml>")
    path = issue_file(tmp_path, "ar", "ar")
    found = language_findings(path, config)
    assert [(finding.severity, finding.code, finding.line) for finding in found] == [
        ("error", "template-direction", 3), ("warning", "template-language", 3)]
    direction, lang = (finding.message for finding in found)
    assert direction.startswith("Arabic (ar) is written right to left, but the template "
                                f"{template} leaves the direction to each client's guess (dir=\"auto\"")
    assert "bullets sit on the wrong side" in direction
    assert direction.endswith(f"write {DIRECTION_FIX} in {template}:{mjml_line(template)} (now <mjml>)")
    assert lang.startswith(f"the template {template} marks the email lang=\"und\" (undetermined")


@pytest.mark.parametrize("tag", ["he", "fa"])
def test_a_template_that_hard_codes_ltr_is_an_error_for_a_right_to_left_issue(tmp_path: Path, tag: str) -> None:
    config, template = own_templates(tmp_path, '<mjml lang="{{ lang }}" dir="ltr">')
    path = issue_file(tmp_path, "he", tag) if tag == "he" else issue_file(tmp_path, "ar", tag)
    [finding] = [finding for finding in language_findings(path, config) if finding.code != "language-mismatch"]
    assert finding.code == "template-direction" and finding.severity == "error"
    assert "lays the email out left to right (dir=\"ltr\" on the document)" in finding.message
    assert finding.message.endswith(f'in {template}:{mjml_line(template)} (now <mjml lang="{{{{ lang }}}}" dir="ltr">)')


def test_a_template_that_hard_codes_lang_en_is_a_warning_for_a_german_issue(tmp_path: Path) -> None:
    config, template = own_templates(tmp_path, '<mjml lang="en" dir="{{ dir }}">')
    [finding] = language_findings(issue_file(tmp_path, "de", "de"), config)
    assert (finding.severity, finding.code) == ("warning", "template-language")
    assert finding.message.startswith(f'the template {template} marks the email lang="en" but the issue is in '
                                      "German (de): screen readers read it with the wrong voice")
    assert language_findings(SEED_ISSUE, config) == []  # English issues: lang="en" is right


def test_a_template_that_hard_codes_rtl_is_an_error_for_a_left_to_right_issue(tmp_path: Path) -> None:
    config, _ = own_templates(tmp_path, '<mjml lang="{{ lang }}" dir="rtl">')
    [finding] = language_findings(SEED_ISSUE, config)
    assert finding.code == "template-direction" and finding.line == 1
    assert finding.message.startswith("English (en) is written left to right, but the template ")
    assert "lays the email out right to left (dir=\"rtl\" on the document): every line starts on the wrong side" \
        in finding.message


def test_a_copy_of_the_built_in_template_carries_every_language(tmp_path: Path) -> None:
    config, _ = own_templates(tmp_path, BUILT_IN_MJML)
    for name, tag in (("ar", "ar"), ("he", "he"), ("de", "de"), ("ja", "ja")):
        assert language_findings(issue_file(tmp_path, name, tag), config) == [], tag


# --- the check command: text, JSON, exit status ----------------------------------------


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_check_prints_a_language_mismatch_and_exits_1(tmp_path: Path) -> None:
    path = issue_file(tmp_path, "ar")
    code, out, err = run("check", str(path))
    assert code == 1
    [line] = [line for line in out.splitlines() if line.endswith("[language-mismatch]")]
    assert line.startswith(f"{path}:1: warning: the text reads as Arabic (ar, ")
    assert "add 'language: ar' to the front matter" in line
    assert "1 file(s) checked, 1 finding(s)" in err
    code, out, _ = run("check", str(issue_file(tmp_path, "ar", "ar")))  # labelled: clean
    assert code == 0, out


def test_check_json_holds_the_language_findings(tmp_path: Path) -> None:
    code, out, err, plain_err, document = _text_and_json(str(issue_file(tmp_path, "de", "fr")), str(SEED_ISSUE))
    assert code == 1
    _assert_text_is_in_json(out, err, plain_err, document)
    [row] = [row for row in document["findings"] if row["code"] == "language-mismatch"]
    assert row["source"] == str(tmp_path / "de-fr.md") and row["line"] == 3 and row["severity"] == "warning"
    assert row["message"].endswith("write 'language: de'")
    assert document["summary"]["warnings"] == 1 and document["summary"]["errors"] == 0


def test_the_fix_names_the_tag_not_a_comment_that_mentions_it(tmp_path: Path) -> None:
    """The built-in templates' opening comment talks about the mjml tag: the fix points at the tag itself."""
    _, template = own_templates(tmp_path, "<mjml>")
    source = template.read_text(encoding="utf-8")
    template.write_text("{# a note: <mjml dir> sets the direction #}\n" + source, encoding="utf-8")
    config = Settings(templates_dir=template.parent)
    [direction, _] = language_findings(issue_file(tmp_path, "ar", "ar"), config)
    assert f"{template}:{mjml_line(template)} (now <mjml>)" in direction.message


def test_check_reports_a_template_without_direction_as_an_error(tmp_path: Path) -> None:
    _, template = own_templates(tmp_path, "<mjml>")
    config = tmp_path / "newsletter.toml"
    config.write_text('[templates]\ndir = "templates"\n', encoding="utf-8")
    path = issue_file(tmp_path, "he", "he")
    code, out, _ = run("--config", str(config), "check", "--json", str(path))
    assert code == 1
    document = json.loads(out)
    rows = {row["code"]: row for row in document["findings"] if row["code"] in CODES}
    assert set(rows) == {"template-direction", "template-language"}
    assert rows["template-direction"]["severity"] == "error" and rows["template-direction"]["line"] == 3
    assert str(template) in rows["template-direction"]["message"] and DIRECTION_FIX in rows["template-direction"]["message"]
    assert document["summary"]["errors"] >= 1
    code, out, _ = run("--config", str(config), "check", str(path))
    assert code == 1 and f"{path}:3: error: Hebrew (he) is written right to left" in out


def test_the_detector_is_imported_only_when_check_reads_a_text() -> None:
    """Every command imports the check module with the CLI; only check pays for CLD2 (about a millisecond)."""
    import subprocess
    import sys

    script = ("import sys, newsletter.cli.commands, newsletter.preflight.report\n"
              "assert 'pycld2' not in sys.modules\n"
              "from newsletter.preflight.language import detect_language\n"
              "detect_language('Ein Text, der lang genug ist, um gelesen zu werden, und noch ein paar Worte mehr, '"
              " * 4)\n"
              "assert 'pycld2' in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
