"""``/preferences/<token>``: a reader manages their own subscription (issue 16 item 5).

The link is in the footer of every issue ("Manage your subscription"), next to unsubscribe,
and carries the same token (:mod:`newsletter.tokens`: one subscriber on one list).

- ``GET /preferences/<token>``: a page with the reader's name (editable) and a checkbox for
  every list they have a membership of and every ``[lists.NAME]`` with ``signup = true``
  (its title and description), ticked where they get it now. It changes nothing (link
  scanners fetch every URL in a message).
- ``POST /preferences/<token>`` from that page: saves (:class:`~newsletter.store.preferences.Preferences`),
  in one transaction, and shows the page again with what changed. Only lists the page
  showed (each has a hidden ``shown`` field) and the reader may choose are touched, so a
  list added since the page was opened is never left by accident.

The same rules as the unsubscribe pages: a forged, altered or malformed token gets 400 and
changes nothing; a forgotten person gets 410 and nothing of them is shown; cross-site form
posts from browsers are refused (403); an address that bounced or complained joins nothing
(409). Every value on the page is autoescaped; a name that is too long gets the form back
(400) with the error next to the field and what was typed kept.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from newsletter.config import Settings
from newsletter.sanitize import one_line
from newsletter.store.preferences import Preferences, PreferencesView, SaveResult
from newsletter.store.subscriber_files import MAX_NAME
from newsletter.store.subscribers import Store
from newsletter.tokens import TokenSigner
from newsletter.web import archive
from newsletter.web.responses import forgotten_response, message_response, page_response

__all__ = [
    "ListChoice",
    "list_choices",
    "load",
    "routes",
    "save",
]

#: form fields a save may carry: a name, and two per list (shown, ticked); the body is capped at 16 KiB anyway
MAX_FIELDS = 1000


@dataclass(frozen=True)
class ListChoice:
    """One list on the page: what it is called and whether the reader gets it."""

    name: str
    title: str
    description: str
    #: they get it now (the box is ticked)
    receives: bool
    #: they signed up and haven't confirmed yet
    pending: bool


def list_choices(view: PreferencesView, settings: Settings) -> list[ListChoice]:
    """The lists the reader may choose from: the ``[lists.NAME]`` tables in the file's order (those
    offered for signup, and those they have a membership of), then their other lists by name."""
    configured = [item for item in settings.lists if item.signup or view.status(item.name) is not None]
    named = {item.name for item in configured}
    choices = [ListChoice(item.name, item.title, item.description, view.receives(item.name),
                          view.status(item.name) == "pending") for item in configured]
    choices += [ListChoice(name, name, "", view.receives(name), status == "pending")
                for name, status in view.memberships if name not in named]
    return choices


def load(database: str | Path, signer: TokenSigner, token: str) -> PreferencesView | None:
    """The reader ``token`` names, or None when it is forged, altered, malformed or names no membership."""
    verified = signer.verify(token)
    if verified is None:
        return None
    with Store.open(database) as store:
        return Preferences(store).view(verified.subscriber_id, verified.list_id)


def save(database: str | Path, view: PreferencesView, lists: dict[str, bool], name: str | None,
         ip: str | None) -> SaveResult:
    """Save what the page sent for ``view``'s reader (see :meth:`Preferences.save`)."""
    with Store.open(database) as store:
        return Preferences(store).save(view.subscriber_id, lists=lists, name=name, ip=ip)


def routes(settings: Settings, signer: TokenSigner, *, cross_site: Callable[[Request], bool]) -> list[Route]:
    """The preferences routes of ``newsletter serve``; ``cross_site`` tells a forged browser form post."""
    database = settings.database.location

    page = functools.partial(page_response, settings)
    message = functools.partial(message_response, settings)

    def invalid() -> HTMLResponse:
        words = archive.wording(settings)
        # The footer's link, by the words the reader saw there.
        return message(400, words.gettext("This link is not valid"),
                       words.gettext("The link is incomplete or was changed. Use the \u201c%(link)s\u201d link at the"
                                     " end of one of our emails, as it is.",
                                     link=words.gettext("Manage your subscription")))

    forgotten = functools.partial(forgotten_response, settings)

    def form(view: PreferencesView, token: str, status: int = 200, *, name: str | None = None,
             error: str = "", saved: SaveResult | None = None) -> HTMLResponse:
        choices = list_choices(view, settings)
        titles = {choice.name: choice.title for choice in choices}
        words = archive.wording(settings)
        return page("preferences.html", status, email=view.email, name=view.name if name is None else name,
                    name_error=error, max_name=MAX_NAME, lists=choices, suppressed=view.suppressed,
                    complained=view.complained, action=f"/preferences/{token}", saved=saved,
                    joined=words.format_list([titles.get(item, item) for item in saved.joined]) if saved else "",
                    left=words.format_list([titles.get(item, item) for item in saved.left]) if saved else "")

    async def no_token(request: Request) -> Response:
        words = archive.wording(settings)
        return message(200, words.gettext("Manage your subscription"),
                       words.gettext("Every email we send ends with a link to manage your subscription, made for its"
                                     " reader. Open it from the email you received."))

    async def show(request: Request) -> Response:
        token = request.path_params["token"]
        view = await run_in_threadpool(load, database, signer, token)
        if view is None:
            return invalid()
        if view.forgotten:
            return forgotten()
        return form(view, token)

    async def submit(request: Request) -> Response:
        token = request.path_params["token"]
        if cross_site(request):
            return PlainTextResponse(archive.wording(settings).gettext("Cross-site form posts are not accepted.")
                                     + "\n", status_code=403)
        submitted = await request.form(max_files=0, max_fields=MAX_FIELDS)
        typed = submitted.get("name")
        shown = [str(value) for value in submitted.getlist("shown")]
        ticked = {str(value) for value in submitted.getlist("list")}
        await submitted.close()
        view = await run_in_threadpool(load, database, signer, token)
        if view is None:
            return invalid()
        if view.forgotten:
            return forgotten()
        name: str | None = None
        if isinstance(typed, str):
            name = one_line(typed)
            if len(name) > MAX_NAME:
                error = archive.wording(settings).ngettext("At most %(num)s character, please.",
                                                           "At most %(num)s characters, please.", MAX_NAME)
                return form(view, token, 400, name=typed, error=error)
        choosable = {choice.name for choice in list_choices(view, settings)}
        lists = {list_name: list_name in ticked for list_name in _unique(shown) if list_name in choosable}
        result = await run_in_threadpool(save, database, view, lists, name, _client_ip(request))
        if result.outcome == "unknown":
            return invalid()
        if result.outcome == "forgotten":
            return forgotten()
        after = await run_in_threadpool(load, database, signer, token)
        if after is None:
            return invalid()
        if result.outcome == "suppressed":
            return form(after, token, 409)
        return form(after, token, saved=result)

    return [
        Route("/preferences/", no_token),
        Route("/preferences/{token}", show, methods=["GET", "HEAD"]),
        Route("/preferences/{token}", submit, methods=["POST"]),
    ]


def _client_ip(request: Request) -> str | None:
    """The peer's IP address (a consent keeps its network), None when the peer isn't one (a test client)."""
    host = request.client.host if request.client else ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host


def _unique(names: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(names))
