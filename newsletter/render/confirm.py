"""The confirmation email of a signup (double opt-in), rendered like an issue: HTML and its text part.

The HTML goes through the pipeline every email takes (:func:`~newsletter.render.engine.render_mjml`:
Jinja2 autoescaped, MJML, CSS inlined) with ``templates/confirm.mjml``, or a ``confirm.mjml`` of
``[templates] dir`` when there is one there; the text part is written here, as
:mod:`~newsletter.render.plaintext` writes an issue's. Each email is rendered whole, for one
address and one link: confirmations are few (one per address per ``confirm_every_hours``),
and nothing in them is left for a later stage to fill in but the headers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from newsletter.config import ListSettings, SenderSettings
from newsletter.language import local_date, parse_language
from newsletter.render.bidi import right_to_left_lines
from newsletter.render.engine import default_templates_dir, render_mjml
from newsletter.render.i18n import N_, Wording, wording_for
from newsletter.render.linebreak import columns
from newsletter.render.plaintext import wrap

__all__ = [
    "CONFIRM_BUTTON",
    "RenderedNotice",
    "confirmation_text",
    "render_confirmation",
]

#: the words on the one button (and the headline), in English: the email has them in its language
CONFIRM_BUTTON = N_("Confirm your subscription")
_TEMPLATE = "confirm"


@dataclass(frozen=True)
class RenderedNotice:
    """A message that is not an issue (a confirmation email), rendered for its one recipient."""

    subject: str
    preheader: str
    html: str
    text: str
    #: the BCP 47 tag it is written in (``[sender] language``): HTML ``lang``, ``Content-Language``
    language: str = "en"
    #: ``ltr`` or ``rtl``
    direction: str = "ltr"


def render_confirmation(
    *,
    email: str,
    lists: Sequence[ListSettings],
    confirm_url: str,
    expires: dt.date,
    sender: SenderSettings,
    templates_dir: Path | None = None,
) -> RenderedNotice:
    """The confirmation email asking ``email`` to confirm ``lists``: one button to ``confirm_url``.

    ``expires`` is the last day the link works. Every value is escaped in the HTML (the list
    titles and descriptions too: they come from the settings, but a page shows them as text).
    RenderError when the template is broken.
    """
    if not lists:
        raise ValueError("a confirmation asks about at least one list")
    name = sender.from_name or sender.from_email
    language = parse_language(sender.language)
    words = wording_for(language, templates_dir)
    subject = words.gettext("Confirm your subscription to %(name)s", name=lists[0].title if len(lists) == 1 else name)
    preheader = words.gettext("One click and you're on the list. If you didn't ask, ignore this email.")
    expires_text = local_date(expires, language, sender.date_format)
    folder = templates_dir if templates_dir is not None and (templates_dir / f"{_TEMPLATE}.mjml").is_file() \
        else default_templates_dir()
    html = render_mjml(_TEMPLATE, {
        **words.template_functions(),
        "lang": language.tag,
        "dir": language.direction,
        "language": language,
        "subject": subject,
        "preheader": preheader,
        "headline": words.gettext(CONFIRM_BUTTON),
        "email": email,
        "lists": [{"name": item.name, "title": item.title, "description": item.description} for item in lists],
        "confirm_url": confirm_url,
        "expires_text": expires_text,
        "sender": {"name": name, "postal_address": sender.postal_address, "site_url": sender.site_url},
    }, folder=folder)
    text = confirmation_text(email=email, lists=lists, confirm_url=confirm_url, expires_text=expires_text,
                             sender=sender, wording=words)
    return RenderedNotice(subject=subject, preheader=preheader, html=html, text=text, language=language.tag,
                          direction=language.direction)


def confirmation_text(*, email: str, lists: Sequence[ListSettings], confirm_url: str, expires_text: str,
                      sender: SenderSettings, wording: Wording | None = None) -> str:
    """The text part: what the HTML says, wrapped at :data:`~newsletter.render.plaintext.WIDTH` columns.

    ``wording``: the catalogs of the email's language (the HTML's strings); without, ``[sender] language``'s.
    """
    words = wording or wording_for(parse_language(sender.language))
    name = sender.from_name or sender.from_email
    headline = words.gettext(CONFIRM_BUTTON)
    lines = [name.upper(), "", headline, "=" * columns(headline), ""]
    lines += wrap(words.gettext("Someone, hopefully you, asked to subscribe %(email)s to:", email=email))
    lines.append("")
    for item in lists:
        lines += wrap(item.title, "* ", "  ")
        if item.description:
            lines += wrap(item.description, "  ", "  ")
        lines.append("")
    lines += wrap(words.gettext("Nothing is sent to this address until you confirm."))
    # Translators: the line before the confirmation link in the plain-text part.
    lines += ["", words.gettext("Confirm your subscription:")]
    link_line = len(lines)
    lines += [confirm_url, ""]
    lines += wrap(words.gettext("This link works until %(date)s.", date=expires_text))
    lines.append("")
    lines += wrap(words.gettext("If you didn't ask, ignore this email: you won't hear from us again."))
    lines += ["", "-- "]
    lines += wrap(f"{name}, {sender.postal_address}")
    if words.language.is_rtl:  # every line right to left but the link's own (a URL reads left to right)
        lines = right_to_left_lines(lines, {link_line})
    return "\n".join(lines) + "\n"


