"""Render an :class:`Issue` once into HTML and plain text that keep per-recipient placeholders.

Jinja2 (autoescape, StrictUndefined) -> mjml-python -> premailer. This is the only
module that imports those three; their errors become ours here.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import re
import sys
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import mjml
from markupsafe import Markup

from newsletter.config import SenderSettings
from newsletter.errors import IssueError, RenderError
from newsletter.language import DEFAULT_LANGUAGE, Language, local_date, parse_language
from newsletter.models import Issue, MergeField, RenderedIssue, Text
from newsletter.render.bidi import outlook_direction
from newsletter.render.i18n import Wording, configure_environment, wording_for
from newsletter.render.markup import attribute_text, block_html, block_kind, inline_html
from newsletter.render.plaintext import render_text

__all__ = [
    "NOTICE_TEMPLATES",
    "RECIPIENT_FIELDS",
    "available_templates",
    "default_templates_dir",
    "issue_language",
    "placeholder",
    "placeholder_pattern",
    "render_issue",
    "render_mjml",
    "view_url",
]

#: templates of messages that are not issues (the signup's confirmation email): no issue may name one
NOTICE_TEMPLATES = frozenset({"confirm"})
#: the per-recipient values a template may use, as ``recipient.<field>``
RECIPIENT_FIELDS = ("email", "name", "unsubscribe_url", "preferences_url")

_DOCTYPE = "<!doctype html>\n"


def default_templates_dir() -> Path:
    """Where the built-in templates are: inside the installed package, else the checkout's ``templates/``."""
    package = Path(__file__).resolve().parent.parent  # newsletter/, beside templates/ in a checkout
    for candidate in (package / "templates", package.parent / "templates"):
        if (candidate / "briefing.mjml").is_file():
            return candidate
    raise RenderError(f"the built-in templates are missing (looked in {package / 'templates'} and {package.parent})")


def available_templates(templates_dir: Path | None = None) -> list[str]:
    """The issue template names found in ``templates_dir`` (``briefing`` for ``briefing.mjml``).

    :data:`NOTICE_TEMPLATES` are not among them: they expect another context than an issue's.
    """
    folder = templates_dir or default_templates_dir()
    return sorted(path.stem for path in folder.glob("*.mjml") if path.stem not in NOTICE_TEMPLATES)


def placeholder(prefix: str, field: str) -> str:
    """The placeholder for ``field`` in an issue rendered with ``prefix``."""
    return f"{prefix}_{field}__"


def placeholder_pattern(prefix: str) -> re.Pattern[str]:
    """A pattern matching every placeholder of ``prefix``; group 1 is the field."""
    return re.compile(re.escape(prefix) + r"_([a-z0-9]+(?:_[a-z0-9]+)*)__")


def issue_language(issue: Issue, sender: SenderSettings) -> Language:
    """The language ``issue`` is written in: its front matter's ``language:``, else ``[sender] language``."""
    return parse_language(issue.language or sender.language)


def view_url(issue: Issue, sender: SenderSettings) -> str:
    """The web address of the issue ("view in browser"); it holds nothing per recipient."""
    return f"{sender.site_url}/issues/{issue.slug}/"


def render_issue(
    issue: Issue,
    *,
    sender: SenderSettings,
    templates_dir: Path | None = None,
    web: bool = False,
    archived: bool = True,
) -> RenderedIssue:
    """Render ``issue`` once: HTML (inlined CSS) and text, with recipient placeholders.

    ``web`` renders the archive's web version instead of the email: templates see
    ``web`` true and leave out what belongs to one recipient (address, unsubscribe and
    preferences links). ``archived=False`` is for an issue the archive doesn't have (a
    list's welcome issue): no "view in browser" link (templates see ``view_url`` empty).
    """
    folder = templates_dir or default_templates_dir()
    # The prefix is derived from the parsed issue, so the issue can't contain it.
    digest = hashlib.sha256(repr((issue, sender)).encode("utf-8")).hexdigest()[:16]
    prefix = f"__nl{digest}"
    recipient = {field: placeholder(prefix, field) for field in RECIPIENT_FIELDS}
    merge_fields: dict[MergeField, str] = {}
    issue = _with_merge_placeholders(issue, prefix, merge_fields)
    url = view_url(issue, sender) if archived else ""
    language = issue_language(issue, sender)
    date_text = local_date(issue.date, language, sender.date_format)
    wording = wording_for(language, templates_dir)
    context = _context(issue, sender, url, recipient, language, date_text)
    mjml_source = _render_template(issue, folder, {**context, "web": web, **wording.template_functions()})
    html = outlook_direction(_inline_css(_compile_mjml(mjml_source, issue.template)), language.direction)
    text = render_text(issue, sender=sender, view_url=url, recipient=recipient, date_text=date_text,
                       wording=wording)
    return RenderedIssue(
        slug=issue.slug,
        subject=issue.subject,
        preheader=issue.preheader,
        html=html,
        text=text,
        placeholder_prefix=prefix,
        view_url=url,
        merge_fields=tuple((node.field, node.fallback) for node in merge_fields),
        language=language.tag,
        direction=language.direction,
    )


def _with_merge_placeholders(issue: Issue, prefix: str, slots: dict[MergeField, str]) -> Issue:
    """``issue`` with each ``{{ field }}`` replaced by the placeholder ``m<n>`` (n in order of first use)."""

    def swap(value: Any) -> Any:
        if isinstance(value, MergeField):
            if value not in slots:
                slots[value] = placeholder(prefix, f"m{len(slots)}")
            return Text(slots[value])
        if isinstance(value, tuple):
            return tuple(swap(item) for item in value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes = {item.name: swap(getattr(value, item.name)) for item in dataclasses.fields(value)
                       if isinstance(getattr(value, item.name), tuple | MergeField)
                       or dataclasses.is_dataclass(getattr(value, item.name))}
            return dataclasses.replace(value, **changes) if changes else value
        return value

    swapped: Issue = swap(issue)
    return swapped


@dataclass(frozen=True)
class _RenderedBlock:
    kind: str
    html: Markup


@dataclass(frozen=True)
class _RenderedSection:
    title_html: Markup
    blocks: list[_RenderedBlock]


def _context(issue: Issue, sender: SenderSettings, url: str, recipient: dict[str, str], language: Language,
             date_text: str) -> dict[str, Any]:
    # Fragments are built (and escaped) by newsletter.render.markup, hence Markup here.
    direction = language.direction
    sections = [
        _RenderedSection(
            Markup(inline_html(section.title, direction=direction)),
            [_RenderedBlock(block_kind(block), Markup(block_html(block, direction=direction)))
             for block in section.blocks],
        )
        for section in issue.sections
    ]
    return {
        "lang": language.tag,
        "dir": language.direction,
        "language": language,
        "issue": {
            "subject": issue.subject,
            "preheader": issue.preheader,
            "slug": issue.slug,
            "date": issue.date,
            "date_text": date_text,
            "headline_html": Markup(inline_html(issue.headline, direction=direction)),
            "sections": sections,
            "credit_html": Markup(inline_html(issue.credit, direction=direction)),
        },
        "sender": {
            "name": sender.from_name or sender.from_email,
            "email": sender.from_email,
            "postal_address": sender.postal_address,
            "site_url": sender.site_url,
        },
        "view_url": url,
        "recipient": recipient,
    }


@functools.lru_cache(maxsize=8)
def _environment(folder: Path) -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        # select_autoescape() does not know .mjml: name it.
        autoescape=jinja2.select_autoescape(enabled_extensions=("mjml", "html", "xml"), default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        extensions=["jinja2.ext.i18n"],  # {% trans %}: each render's context brings its language's gettext
    )
    configure_environment(environment, Wording(parse_language(DEFAULT_LANGUAGE)))
    environment.filters["mjml_attribute"] = _mjml_attribute
    return environment


def _mjml_attribute(value: object) -> Markup:
    """``value`` for text that MJML copies into an attribute: ``<mj-title>`` becomes the wrapper's ``aria-label``.

    Escaped, and everything but printable ASCII as a character reference: mjml-python writes
    attribute values as Rust debug-prints a string, so a combining mark (an Arabic shadda or
    tanwin, a Hebrew vowel point, a Devanagari virama) came out as ``\\u{651}`` and a backslash
    doubled. ASCII text (every English subject so far) comes out as plain autoescaping writes it.
    """
    return Markup(attribute_text(str(value)))


def _render_template(issue: Issue, folder: Path, context: dict[str, Any]) -> str:
    try:
        if issue.template in NOTICE_TEMPLATES:  # not an issue's template: as unknown as a missing one
            raise jinja2.TemplateNotFound(f"{issue.template}.mjml")
        return _render_jinja(folder, issue.template, context)
    except jinja2.TemplateNotFound as exc:
        known = ", ".join(available_templates(folder)) or "none"
        raise IssueError(
            issue.source, issue.line_of("template"), f"unknown template '{issue.template}'",
            f"available: {known}",
        ) from exc


def render_mjml(name: str, context: Mapping[str, Any], *, folder: Path) -> str:
    """The HTML of ``<folder>/<name>.mjml`` with ``context``: the pipeline every email takes.

    Jinja2 (autoescaped: every value not marked safe is escaped), then MJML, then the CSS
    inlined by premailer. For messages that are not issues (a confirmation email); raises
    RenderError when the template is missing or broken. A ``dir`` of ``rtl`` in ``context``
    turns Outlook's tables right to left too.
    """
    try:
        source = _render_jinja(folder, name, context)
    except jinja2.TemplateNotFound as exc:
        raise RenderError(f"{folder / name}.mjml: template not found") from exc
    return outlook_direction(_inline_css(_compile_mjml(source, name)), str(context.get("dir", "ltr")))


def _render_jinja(folder: Path, name: str, context: Mapping[str, Any]) -> str:
    """``<folder>/<name>.mjml`` rendered by Jinja2; a broken template is a RenderError naming it (and its
    line), a missing one stays ``TemplateNotFound`` for the caller to say what it means."""
    path = folder / f"{name}.mjml"
    try:
        return _environment(folder).get_template(f"{name}.mjml").render(context)
    except jinja2.TemplateNotFound:
        raise
    except jinja2.TemplateSyntaxError as exc:
        raise RenderError(f"{path}:{exc.lineno}: template error: {exc.message}") from exc
    except jinja2.TemplateError as exc:
        raise RenderError(f"{path}: template error: {exc}") from exc


def _compile_mjml(source: str, template: str) -> str:
    try:
        # fonts={} keeps MJML from linking Google Fonts: we use the system font stack.
        return mjml.mjml2html(source, disable_comments=True, fonts={})
    except Exception as exc:  # mjml-python raises plain exceptions from Rust
        raise RenderError(f"template '{template}': MJML error: {_first_line(str(exc))}") from exc


class _NoRequests(types.ModuleType):
    """What premailer sees as ``requests``: it may not fetch anything (``allow_network=False``)."""

    def __getattr__(self, name: str) -> object:
        raise RenderError(f"premailer tried to use requests.{name}; network access is off")


def _import_premailer() -> Any:
    """Import premailer without importing ``requests`` (about 45 ms of every start-up).

    premailer imports requests only to fetch external stylesheets, which we never let it
    do. So while premailer is imported, ``requests`` names a stand-in that refuses to be
    used; afterwards the name is free again, and anyone who imports requests gets the real
    one. If requests is loaded already, or a premailer version needs more of it at import
    time, premailer is imported the ordinary way.
    """
    if "premailer" in sys.modules or "requests" in sys.modules:
        import premailer

        return premailer
    stand_in = _NoRequests("requests")
    stand_in.__spec__ = None  # the import system reads it on `import requests`
    sys.modules["requests"] = stand_in
    try:
        import premailer
    except ImportError:
        sys.modules.pop("premailer", None)
        sys.modules.pop("premailer.premailer", None)
        del sys.modules["requests"]
        import premailer
    else:
        if sys.modules.get("requests") is stand_in:
            del sys.modules["requests"]
    return premailer


premailer = _import_premailer()


def _inline_css(html: str) -> str:
    try:
        inliner = premailer.Premailer(
            html,
            strip_important=False,  # media-query overrides need their !important
            disable_validation=True,
            allow_network=False,
            allow_loading_external_files=False,
            disable_basic_attributes=["width", "height", "align", "bgcolor", "valign"],
            align_floating_images=False,
            remove_classes=False,  # dark-mode and mobile rules select on them
            cssutils_logging_level=logging.CRITICAL,
        )
        inlined = inliner.transform()
    except Exception as exc:  # premailer/cssutils/lxml raise many unrelated types
        raise RenderError(f"CSS inlining failed: {_first_line(str(exc))}") from exc
    return _with_doctype(inlined)


def _with_doctype(html: str) -> str:
    """premailer drops MJML's ``<!doctype html>``; standards mode needs it back."""
    stripped = html.lstrip()
    if stripped[:9].lower() == "<!doctype":
        stripped = stripped.split(">", 1)[1].lstrip()
    return _DOCTYPE + stripped


def _first_line(text: str) -> str:
    lines: Iterable[str] = (line.strip() for line in text.splitlines())
    return next((line for line in lines if line), "unknown error")
