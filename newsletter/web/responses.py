"""The small pages as HTTP answers, the same for every router (unsubscribe, preferences, signup).

:func:`~newsletter.web.archive.page` renders a page of ``newsletter/web/pages`` in
``[sender] language``; these wrap it in a response with its status.
"""

from __future__ import annotations

from starlette.responses import HTMLResponse

from newsletter.config import Settings
from newsletter.web import archive

__all__ = ["forgotten_response", "message_response", "page_response"]


def page_response(settings: Settings, template: str, status: int = 200, **values: object) -> HTMLResponse:
    """``template`` (a page of ``newsletter/web/pages``) with ``values``, answered with ``status``."""
    return HTMLResponse(archive.page(template, settings, **values), status_code=status)


def message_response(settings: Settings, status: int, heading: str, text: str, link: str = "",
                     link_text: str = "") -> HTMLResponse:
    """The one-message page (a heading, a sentence, perhaps a link), answered with ``status``."""
    return page_response(settings, "message.html", status, heading=heading, text=text, link=link,
                         link_text=link_text)


def forgotten_response(settings: Settings) -> HTMLResponse:
    """``410`` for a link of someone erased (``subscribers forget``): nothing of them is shown."""
    words = archive.wording(settings)
    return message_response(settings, 410, words.gettext("This address was erased"),
                            words.gettext("At its owner's request we erased this address and everything we held"
                                          " about it. It gets no mail from us."))
