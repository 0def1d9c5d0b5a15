"""Does the issue's language fit its text, and does its template carry that language to the email?

``newsletter check`` reports:

- ``language-mismatch`` (warning): the text reads as another language than the issue
  declares (front matter ``language:``, else ``[sender] language``): an Arabic briefing with
  no ``language:`` goes out as English, laid out left to right; a German one labelled ``fr``
  is read aloud with a French voice. A warning, not an error: a detector guesses, and the
  editor knows.
- ``template-direction`` (error): the email's document direction (``dir`` on ``<html>``, or
  on the body and its wrapper, the innermost winning) is not the language's: an Arabic or
  Hebrew issue laid out left to right puts headings, paragraphs and bullets on the wrong
  side and moves sentence-final punctuation to the wrong end, for every reader, every time,
  which is what an error is for here (the fix is one line of the template).
- ``template-language`` (warning, as ``a11y-lang`` is): the template marks the email with
  another ``lang`` than the issue's (a hard-coded ``lang="en"``): screen readers pick the
  wrong voice and clients hyphenate by the wrong rules.

The detector is Google's Compact Language Detector 2 through ``pycld2`` (a maintained
binding, C++, no dependencies): its tables ship inside the 10 MB wheel, so it works offline,
loads in about a millisecond, reads a briefing in well under one, and gives the same answer
every time. It says how much of the text each of up to three languages holds, and whether
its guess is reliable; that is what keeps an Arabic briefing full of English outlet names
from being called English. Weighed and left: ``lingua-language-detector`` (a 96 MB wheel),
``py3langid`` (numpy, and half a second to load its model), ``langdetect`` (unmaintained
since 2021, random unless seeded, slow to load), fastText-based detectors (a model to load
or download). A stopword list of our own would be a parser of our own, for fewer languages.

Being careful about false positives:

- Only words the editor wrote in the issue's language are read: subject, preheader,
  headline, headings, paragraphs, quotes, list items, link texts, alt texts. Citations
  (``[Washington Post / Abby Phillip]``), the credit, code, addresses and merge fields
  are left out, and so are bare URLs, e-mail addresses and handles in the text.
- A text of fewer than :data:`MIN_LETTERS` letters gets no verdict, nor does one the
  detector calls unreliable.
- The detected language must hold at least :data:`MIN_SHARE` percent of the text, and the
  declared one less than :data:`MAX_DECLARED_SHARE` percent: a bilingual issue passes.
- Languages compare by family: the primary subtag (``pt-BR`` and ``pt``, ``zh-Hant`` and
  ``zh``), Babel's old codes (``iw`` is ``he``) and :data:`CLOSE_LANGUAGES`, the written
  standards of one language that no detector tells apart reliably (``nb``/``nn``/``no``;
  ``sr``/``hr``/``bs``, ``sr-Latn`` included; ``ms``/``id``; the Kurdish ones).
- A declared language the detector doesn't know (``ast``, ``yue``) is only contradicted
  by a text in another script.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from newsletter.config import SenderSettings
from newsletter.language import Language, LanguageError, parse_language
from newsletter.models import (
    Block,
    Emphasis,
    Heading,
    Image,
    Inline,
    Issue,
    LineBreak,
    Link,
    ListBlock,
    Paragraph,
    Quote,
    Strong,
    Text,
)
from newsletter.preflight.finding import Finding
from newsletter.preflight.htmldom import Element, parse_document

__all__ = [
    "CLOSE_LANGUAGES",
    "DIRECTION_FIX",
    "Detection",
    "MAX_DECLARED_SHARE",
    "MIN_LETTERS",
    "MIN_SHARE",
    "check_language",
    "check_template_language",
    "detect_language",
    "issue_words",
    "language_family",
]

#: fewer letters than this (about 30 words of English, a few sentences of Japanese) get no verdict
MIN_LETTERS = 150
#: the share of the text (percent) the detected language must hold to contradict the declared one
MIN_SHARE = 60
#: a declared language that holds at least this share of the text (percent) is never contradicted
MAX_DECLARED_SHARE = 25
#: written standards of one language, or languages that close, which detectors confuse: one family each
CLOSE_LANGUAGES: dict[str, str] = {
    "nb": "no", "nn": "no",  # Norwegian Bokmål and Nynorsk; the detector says "no"
    "hr": "sr", "bs": "sr", "cnr": "sr", "sh": "sr",  # Serbo-Croatian: Croatian, Bosnian, Montenegrin, Serbian
    "id": "ms",  # Indonesian and Malay
    "ckb": "ku", "kmr": "ku", "sdh": "ku",  # Central, Northern and Southern Kurdish
}
#: what a template writes so that the email carries the issue's language and direction
DIRECTION_FIX = '<mjml lang="{{ lang }}" dir="{{ dir }}">'

_URL_RE = re.compile(r"\b(?:[a-z][a-z0-9+.-]*://|www\.|mailto:)\S*|\S+@\S+\.\w+|(?<!\w)[@#]\w+", re.I)
_JINJA_COMMENT_RE = re.compile(r"\{#.*?#\}", re.DOTALL)
_MJML_TAG_RE = re.compile(r"<mjml\b[^>]*>", re.I)
_HAN = {"Hans": "Hani", "Hant": "Hani"}  # Simplified and Traditional Chinese: one script to compare


@dataclass(frozen=True)
class Detection:
    """What the detector makes of a text: its main language and the share of the text each language has."""

    #: the main language's BCP 47 tag (``ar``, ``zh-Hant``); "" when only its script is known
    tag: str
    #: its English name ("Arabic"), or the script's ("Tifinagh script")
    name: str
    #: its ISO 15924 script code (``Arab``)
    script: str
    #: the share of the text it holds, in percent
    share: int
    #: every language found, main one first: (tag, or ``xx-<Script>`` for a script alone; percent)
    shares: tuple[tuple[str, int], ...]
    #: the letters read
    letters: int


def detect_language(text: str) -> Detection | None:
    """The language ``text`` is written in, or None when it is too short or the guess unreliable."""
    readable = _readable(text)
    letters = sum(count for char, count in Counter(readable).items() if char.isalpha())
    if letters < MIN_LETTERS:
        return None
    import pycld2  # here, not at the top: only check reads a text's language

    try:
        reliable, _, details = pycld2.detect(readable, isPlainText=True)
    except pycld2.error:  # _readable leaves nothing it refuses; should one slip through, no verdict
        return None
    shares = [(tag, int(percent)) for tag, percent in ((_tag(code), percent) for _, code, percent, _ in details)
              if tag is not None and percent > 0]
    if not reliable or not shares:
        return None
    tag, share = shares[0]
    if tag.startswith("xx-"):
        script = tag[3:]
        return Detection("", f"{_script_name(script)} script", script, share, tuple(shares), letters)
    language = _as_written(parse_language(tag), readable)
    return Detection(language.tag, language.name, _script_of(language.tag), share, tuple(shares), letters)


def issue_words(issue: Issue) -> str:
    """The words of ``issue`` that are in its own language, one block a line, as the detector reads them.

    Subject, preheader, headline, section titles, paragraphs, headings, quotes, list items,
    link texts and alt texts; not citations, the credit, code, addresses or merge fields.
    """
    lines = [issue.subject, issue.preheader, _inline_words(issue.headline)]
    for section in issue.sections:
        lines.append(_inline_words(section.title))
        for block in section.blocks:
            lines.extend(_block_words(block))
    return "\n".join(_URL_RE.sub(" ", line) for line in lines if line.strip())


def language_family(tag: str) -> str:
    """The family ``tag`` belongs to, for comparing languages: ``pt-BR`` and ``pt`` are ``pt``, ``iw`` is ``he``,
    ``nb`` is ``no``, ``hr`` is ``sr`` (:data:`CLOSE_LANGUAGES`)."""
    from babel.core import get_global

    primary = tag.replace("_", "-").split("-")[0].lower()
    alias = get_global("language_aliases").get(primary)
    if alias:  # old and macro codes: iw -> he, tl -> fil, sh -> sr_Latn, prs -> fa_AF
        primary = str(alias).split("_")[0]
    return CLOSE_LANGUAGES.get(primary, primary)


def check_language(issue: Issue, sender: SenderSettings) -> list[Finding]:
    """A ``language-mismatch`` warning when ``issue``'s text reads as another language than it declares.

    The finding is at the front matter's ``language:`` line (line 1 when there is none) and
    says what the detector saw and what to write.
    """
    declared = parse_language(issue.language or sender.language)
    detection = detect_language(issue_words(issue))
    if detection is None or not _contradicts(detection, declared):
        return []
    seen = f"{detection.share}% of it" + "".join(
        f"; {_shown(tag)} {share}%" for tag, share in detection.shares[1:])
    if issue.language:
        said = f"the front matter says 'language: {issue.language}' ({declared.name})"
    else:
        said = f"the issue names no language, so it goes out as {declared.name} ({declared.tag}, [sender] language)"
    if not detection.tag:
        message = (f"the text is written in {detection.name} ({seen}), but {said}, which isn't written in it; "
                   f"give the text's language in the front matter ('language:' and its BCP 47 tag)")
    else:
        message = f"the text reads as {detection.name} ({detection.tag}, {seen}), but {said}; "
        if issue.language:
            message += f"write 'language: {detection.tag}'"
            if language_family(sender.language) == language_family(detection.tag):
                message += f", or leave it out ([sender] language is {sender.language})"
        else:
            message += (f"add 'language: {detection.tag}' to the front matter (or set [sender] language = "
                        f"\"{detection.tag}\" in the configuration if every issue is in {detection.name})")
    return [Finding("warning", "language-mismatch", message, source=issue.source, line=issue.line_of("language"))]


def check_template_language(issue: Issue, html: str, *, language: Language, template: Path,
                            builtin: bool = False) -> list[Finding]:
    """Whether the email ``html`` rendered from ``template`` carries ``language``: its direction and its ``lang``.

    ``template-direction`` (error) when the document's direction (``dir`` on ``<html>``,
    ``<body>`` or the body's wrapper, the innermost winning) isn't the language's;
    ``template-language`` (warning) when its ``lang`` names another language. A missing or
    malformed ``lang``/``dir`` is accessibility's ``a11y-lang`` already. ``builtin`` names
    the template as one of the tool's own.
    """
    document = parse_document(html)
    chain = _document_chain(document.html, document.body)
    direction = _innermost(chain, "dir").lower()
    lang = _innermost(chain, "lang")
    name = f"the built-in template {template.name}" if builtin else f"the template {template}"
    fix = f"write {DIRECTION_FIX} in {_mjml_place(template)}"
    line = issue.line_of("language")
    found: list[Finding] = []
    wanted = language.direction
    if (wanted == "rtl" and direction != "rtl") or (wanted == "ltr" and direction == "rtl"):
        if direction == "auto":
            laid = "leaves the direction to each client's guess (dir=\"auto\" on the document, MJML's default)"
        else:
            shown = f'dir="{direction}"' if direction else "no dir"
            laid_out = _direction_words("rtl" if direction == "rtl" else "ltr")
            laid = f"lays the email out {laid_out} ({shown} on the document)"
        harm = ("headings, paragraphs and bullets sit on the wrong side and sentence-final punctuation jumps "
                "to the wrong end") if wanted == "rtl" else "every line starts on the wrong side"
        found.append(Finding(
            "error", "template-direction",
            f"{language.name} ({language.tag}) is written {_direction_words(wanted)}, but {name} {laid}: {harm}; "
            f"{fix}",
            source=issue.source, line=line,
        ))
    if lang and _is_tag(lang) and language_family(lang) != language_family(language.tag):
        what = " (undetermined: MJML's default when <mjml> has no lang)" if lang.lower() == "und" else ""
        found.append(Finding(
            "warning", "template-language",
            f"{name} marks the email lang=\"{lang}\"{what} but the issue is in {language.name} ({language.tag}): "
            f"screen readers read it with the wrong voice and clients hyphenate it by the wrong rules; {fix}",
            source=issue.source, line=line,
        ))
    return found


# --- the text the detector reads ------------------------------------------------------


def _inline_words(content: Sequence[Inline]) -> str:
    return "".join(_inline_parts(content))


def _inline_parts(content: Sequence[Inline]) -> Iterator[str]:
    for node in content:
        if isinstance(node, Text):
            yield node.text
        elif isinstance(node, Emphasis | Strong | Link):
            yield from _inline_parts(node.children)
        elif isinstance(node, Image):
            yield f" {node.alt} "
        elif isinstance(node, LineBreak):
            yield "\n"
        else:  # code and merge fields: not the issue's language; a space keeps the words apart
            yield " "


def _block_words(block: Block) -> Iterator[str]:
    if isinstance(block, Paragraph | Heading):
        yield _inline_words(block.content)
    elif isinstance(block, Quote):
        for child in block.blocks:
            yield from _block_words(child)
    elif isinstance(block, ListBlock):
        for item in block.items:
            yield _inline_words(item.content)
            for child in item.children:
                yield from _block_words(child)
    # code blocks and rules have no words of the issue's language


def _readable(text: str) -> str:
    """``text`` with only letters, marks, digits, punctuation and spaces: CLD2 refuses control characters
    and noncharacters as "invalid UTF-8", and symbols say nothing of a language."""
    # Each distinct character is looked at once: a briefing has a few hundred of them, and thousands of letters.
    unwanted = {ord(char): " " for char in set(text)
                if char not in " \n" and unicodedata.category(char)[0] not in "LMNP"}
    return text.translate(unwanted) if unwanted else text


# --- languages, families and scripts ---------------------------------------------------


@functools.lru_cache(maxsize=64)
def _tag(code: str) -> str | None:
    """CLD2's code as a BCP 47 tag (``iw`` -> ``he``), ``xx-<Script>`` for a script alone, None for nothing."""
    from babel.core import get_global

    if code == "un":  # unknown: most answers end with it
        return None
    if code.startswith("xx-"):
        return code if len(code) == 7 and code[3:] != "Zyyy" else None  # Zyyy: "common", no script at all
    primary, _, rest = code.partition("-")
    alias = get_global("language_aliases").get(primary)
    if alias and "_" not in alias:
        primary = alias
    try:
        return parse_language(f"{primary}-{rest}" if rest else primary).tag
    except LanguageError:  # "un" (unknown) and CLD2's joke languages (Pig Latin, Bork)
        return None


@functools.lru_cache(maxsize=1)
def _detectable() -> frozenset[str]:
    """The language families CLD2 can recognise."""
    import pycld2

    detected = set(pycld2.DETECTED_LANGUAGES)
    return frozenset(language_family(code) for name, code in pycld2.LANGUAGES
                     if name in detected and not code.startswith("xx-"))


def _script_of(tag: str) -> str:
    """The script ``tag`` is written in: its own script subtag, else the likely one (Babel's CLDR data)."""
    from babel.core import get_global

    parts = tag.split("-")
    for part in parts[1:]:
        if len(part) == 4 and part.isalpha():
            return part.title()
    likely = get_global("likely_subtags")
    for key in ("_".join(parts[:2]), parts[0].lower()):
        found = str(likely.get(key, "")).split("_")
        if len(found) > 1 and len(found[1]) == 4:
            return found[1]
    return ""


def _as_written(language: Language, text: str) -> Language:
    """``language`` in the script ``text`` is written in, when that isn't its usual one and CLDR has the pair:
    CLD2 says ``sr`` for Serbian in either alphabet; a Latin text is ``sr-Latn``."""
    from babel.localedata import exists

    written = _written_script(text)
    primary = language.tag.split("-")[0]
    if not written or written == _script_of(language.tag) or not exists(f"{primary}_{written}"):
        return language
    return parse_language(f"{primary}-{written}")


def _written_script(text: str) -> str:
    """The script most of ``text``'s letters are in (ISO 15924), from their Unicode names; "" for Han
    ideographs, whose names say no script."""
    counts: Counter[str] = Counter()
    for char, count in Counter(text).items():  # each distinct character once
        if char.isalpha():
            counts[unicodedata.name(char, "").split(" ", 1)[0]] += count
    if not counts:
        return ""
    return _scripts_by_name().get(counts.most_common(1)[0][0], "")


@functools.lru_cache(maxsize=1)
def _scripts_by_name() -> dict[str, str]:
    """Script codes by their English name in capitals, as Unicode character names begin: ``LATIN`` -> ``Latn``."""
    from babel import Locale

    return {str(name).upper(): code for code, name in Locale.parse("en").scripts.items()}


def _script_name(script: str) -> str:
    from babel import Locale

    return str(Locale.parse("en").scripts.get(script, script))


def _contradicts(detection: Detection, declared: Language) -> bool:
    family = language_family(declared.tag)
    declared_share = sum(share for tag, share in detection.shares
                         if not tag.startswith("xx-") and language_family(tag) == family)
    if detection.share < MIN_SHARE or declared_share >= MAX_DECLARED_SHARE:
        return False
    if detection.tag and language_family(detection.tag) == family:
        return False
    declared_script = _script_of(declared.tag)
    same_script = _HAN.get(declared_script, declared_script) == _HAN.get(detection.script, detection.script)
    if same_script and (not detection.tag or family not in _detectable()):
        return False  # the detector can't recognise the declared language, and the script agrees
    return True


def _shown(tag: str) -> str:
    if tag.startswith("xx-"):
        return f"{_script_name(tag[3:])} script"
    return parse_language(tag).name


def _is_tag(value: str) -> bool:
    try:
        parse_language(value)
    except LanguageError:
        return False
    return True


# --- the template ------------------------------------------------------------------------


def _document_chain(html: Element, body: Element | None) -> list[Element]:
    """``<html>``, ``<body>`` and the body's wrapper (its first element: MJML's ``<div role="article">``)."""
    chain = [html]
    if body is not None:
        chain.append(body)
        wrapper = next((child for child in body if isinstance(child.tag, str)), None)
        if wrapper is not None:
            chain.append(wrapper)
    return chain


def _innermost(chain: list[Element], attribute: str) -> str:
    value = ""
    for element in chain:
        given = (element.get(attribute) or "").strip()
        if given:
            value = given
    return value


def _direction_words(direction: str) -> str:
    return "right to left" if direction == "rtl" else "left to right"


def _mjml_place(template: Path) -> str:
    """``template`` and the line of its ``<mjml>`` tag as written, when the file can be read."""
    try:
        source = template.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return str(template)
    # A Jinja comment may mention the tag (the built-in templates' do): blank comments, keeping their lines.
    code = _JINJA_COMMENT_RE.sub(lambda comment: "\n" * comment[0].count("\n"), source)
    match = _MJML_TAG_RE.search(code)
    if match is None:
        return str(template)
    written = " ".join(match[0].split())
    return f"{template}:{code.count(chr(10), 0, match.start()) + 1} (now {written})"
