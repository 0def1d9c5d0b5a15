"""The signup routes of ``newsletter serve``: ``/subscribe``, ``/api/subscribe`` and ``/confirm/<token>``.

- ``GET /subscribe[?list=NAME]``: the form (address, optional name, the lists offered; with
  ``?list=`` only that one). No list offered: 404 "Signup is not open".
- ``POST /subscribe``: from that form or from a plain HTML form on any other site (no origin
  check: that is the point). Bad input gets the form again (400), each error next to its
  field and what was typed kept. Every accepted signup gets the same "Check your inbox" page,
  whether the address was new, already waiting, already subscribed or suppressed, and
  whether the honeypot was filled (then nothing is stored); only a reached limit answers
  otherwise (429).
- ``POST /api/subscribe``: the same as JSON, ``{"email", "name"?, "lists"?, "source"?}`` ->
  202 ``{"status": "pending"}``; 400 ``{"error", "field"}``; 415 for a body that isn't JSON; 429.
- ``GET /confirm/<token>``: the address and lists with one button; changes nothing (link
  scanners fetch every URL in a message). Expired: a page with the way to sign up again.
- ``POST /confirm/<token>``: same-origin form posts only; confirms (idempotent) and says so.

The confirmation email (and a welcome issue on confirmation) is sent after the response, on a
thread of its own, so the answer comes as fast whether or not an email goes out; one that
can't be sent now stays queued for ``newsletter dispatch`` to send.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import logging
from collections.abc import Callable, Sequence

import anyio
import anyio.to_thread
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from newsletter.config import ListSettings, Settings
from newsletter.deliver.outbox import send_outbox_now
from newsletter.errors import NewsletterError
from newsletter.store.signups import (
    ConfirmationView,
    ConfirmResult,
    SignupMethod,
    SignupOutcome,
    SignupRequest,
    Signups,
)
from newsletter.store.subscriber_files import MAX_NAME
from newsletter.store.subscribers import Store
from newsletter.tokens import TokenSigner
from newsletter.web import archive
from newsletter.web.responses import message_response, page_response
from newsletter.web.signup import SignupInput, ValidSignup, form_input, json_input, offered_lists, validate

__all__ = [
    "OUTBOX_THREADS",
    "signup_routes",
]

log = logging.getLogger("newsletter.web")

#: threads that send confirmation and welcome emails after the answer (their own: never the pages')
OUTBOX_THREADS = 2
#: form fields read at most (email, name, source, honeypot, one per list, and a few to spare)
_EXTRA_FIELDS = 10


def signup_routes(settings: Settings, keys: Sequence[bytes], *, cross_site: Callable[[Request], bool]) -> list[Route]:
    """The routes, for ``settings`` (its lists, database, SMTP) and ``keys`` (``NEWSLETTER_SECRET_KEY``'s:
    they check confirm tokens, and a confirmation drops the ``forgotten`` hash of an address they made).

    ``cross_site`` tells a browser's form post from another site (refused on ``/confirm``).
    """
    signer = TokenSigner(keys)
    offered = offered_lists(settings)
    by_name = {item.name: item for item in settings.lists}
    own_form = f"{settings.sender.site_url}/subscribe"
    outbox_threads = anyio.CapacityLimiter(OUTBOX_THREADS)

    page = functools.partial(page_response, settings)
    message = functools.partial(message_response, settings)

    def not_open() -> HTMLResponse:
        words = archive.wording(settings)
        return message(404, words.gettext("Signup is not open"),
                       words.gettext("This newsletter does not take signups here."),
                       "/issues/", words.gettext("All issues"))

    def limited() -> HTMLResponse:
        words = archive.wording(settings)
        return message(429, words.gettext("Too many signups right now"),
                       words.gettext("We have had more signups than usual in the last hour. Please try again later."))

    def form_page(signup: SignupInput, errors: dict[str, str], *, status: int = 200,
                  shown: Sequence[ListSettings] = offered, all_lists_href: str = "") -> HTMLResponse:
        return page("subscribe.html", status, email=signup.email, name=signup.name, chosen=signup.lists,
                    lists=shown, errors=errors, source=signup.source, max_name=MAX_NAME,
                    all_lists_href=all_lists_href, robots="index")

    def titles(names: Sequence[str]) -> list[ListSettings]:
        return [by_name.get(name) or ListSettings(name, name) for name in names]

    def expired() -> HTMLResponse:
        return page("confirm.html", 410, state="expired", pending_days=settings.signup.pending_days,
                    subscribe_href="/subscribe")

    def invalid_token() -> HTMLResponse:
        words = archive.wording(settings)
        return message(400, words.gettext("This link is not valid"),
                       words.gettext("The confirmation link is incomplete or was changed. Use the link in the email"
                                     " we sent you, as it is."), "/subscribe", words.gettext("Sign up again"))

    async def send_later(ids: list[int] | None) -> None:
        # After the answer: the reader has their page, and how long SMTP takes tells nobody anything.
        try:
            await anyio.to_thread.run_sync(functools.partial(send_outbox_now, settings, ids), limiter=outbox_threads)
        except NewsletterError as exc:  # SMTP down, the database busy: it stays queued for dispatch
            log.warning("signup mail not sent now (newsletter dispatch sends it later): %s", exc)
        except Exception:  # a bug of ours: the reader has their answer, the row waits for dispatch
            log.exception("signup mail not sent now (newsletter dispatch sends it later)")

    def sent_later(outcome: SignupOutcome) -> BackgroundTask | None:
        if outcome.status != "queued" or outcome.confirmation_id is None:
            return None
        return BackgroundTask(send_later, [outcome.confirmation_id])

    def store_signup(valid: ValidSignup, method: SignupMethod, ip: str | None) -> SignupOutcome:
        with Store.open(settings.database.location) as store:
            return Signups(store, settings.signup, forget_keys=keys).request(
                SignupRequest(email=valid.email, lists=valid.lists, method=method, name=valid.name,
                              source=valid.source, ip=ip))

    async def subscribe_form(request: Request) -> Response:
        if not offered:
            return not_open()
        wanted = request.query_params.get("list", "")
        one = next((item for item in offered if item.name == wanted), None)
        if one is None:
            return form_page(SignupInput(source=own_form), {})
        return form_page(SignupInput(lists=(one.name,), source=f"{own_form}?list={one.name}"), {}, shown=(one,),
                         all_lists_href="/subscribe" if len(offered) > 1 else "")

    async def subscribe_post(request: Request) -> Response:
        if not offered:
            return not_open()
        try:
            form = await request.form(max_files=0, max_fields=len(offered) + _EXTRA_FIELDS)
        except HTTPException as exc:  # a malformed multipart body, too many fields (413 goes on up)
            if exc.status_code != 400:
                raise
            words = archive.wording(settings)
            return message(400, words.gettext("This form could not be read"),
                           words.gettext("Please use the form on this page."),
                           "/subscribe", words.gettext("The signup form"))
        fields = {key: [value for value in form.getlist(key) if isinstance(value, str)] for key in form}
        await form.close()
        signup = form_input(fields, referer=request.headers.get("referer", ""))
        checked = validate(signup, offered, wording=archive.wording(settings))
        if isinstance(checked, dict):
            return form_page(signup, checked, status=400)
        if signup.honeypot:  # a bot: the usual answer (checked like any other), and nothing stored
            return page("subscribe_sent.html", email=checked.email)
        outcome = await run_in_threadpool(store_signup, checked, "form", _client_ip(request))
        if outcome.status == "limited":
            return limited()
        response = page("subscribe_sent.html", email=checked.email)
        response.background = sent_later(outcome)
        return response

    async def api_subscribe(request: Request) -> Response:
        if not offered:
            return _json_error(404, None, "signup is not open")
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            return _json_error(415, None, "send the signup as JSON (Content-Type: application/json)")
        parsed = json_input(await request.body(), referer=request.headers.get("referer", ""))
        if isinstance(parsed, tuple):
            return _json_error(400, *parsed)
        checked = validate(parsed, offered, wording=archive.wording(settings))
        if isinstance(checked, dict):
            field, error = next(iter(checked.items()))
            return _json_error(400, field, error)
        outcome = await run_in_threadpool(store_signup, checked, "api", _client_ip(request))
        if outcome.status == "limited":
            return _json_error(429, None, "too many signups in the last hour; try again later")
        return JSONResponse({"status": "pending"}, status_code=202, background=sent_later(outcome))

    def confirmation(confirmation_id: int) -> ConfirmationView | None:
        with Store.open(settings.database.location) as store:
            return Signups(store, settings.signup, forget_keys=keys).confirmation(confirmation_id)

    def confirm(confirmation_id: int) -> ConfirmResult:
        welcome = [item.name for item in settings.lists if item.welcome is not None]
        with Store.open(settings.database.location) as store:
            return Signups(store, settings.signup, forget_keys=keys).confirm(confirmation_id, welcome_lists=welcome)

    async def confirm_page(request: Request) -> Response:
        token = request.path_params["token"]
        verified = signer.verify_confirm(token)
        if verified is None:
            return invalid_token()
        if verified.expires < _today():
            return expired()
        view = await run_in_threadpool(confirmation, verified.confirmation_id)
        if view is None or view.expired:  # purged after it expired, or its reader was forgotten
            return expired()
        state = "confirmed" if view.confirmed else "ready"
        return page("confirm.html", state=state, email=view.email, lists=titles(view.lists),
                    action=f"/confirm/{token}")

    async def confirm_post(request: Request) -> Response:
        if cross_site(request):
            return PlainTextResponse(archive.wording(settings).gettext("Cross-site form posts are not accepted.")
                                     + "\n", status_code=403)
        token = request.path_params["token"]
        verified = signer.verify_confirm(token)
        if verified is None:
            return invalid_token()
        if verified.expires < _today():
            return expired()
        result = await run_in_threadpool(confirm, verified.confirmation_id)
        if result.status in ("expired", "unknown"):
            return expired()
        response = page("confirmed.html", email=result.email, lists=titles(result.lists))
        if result.status == "confirmed" and any(by_name.get(name, _NO_WELCOME).welcome for name in result.lists):
            response.background = BackgroundTask(send_later, None)  # the welcome issue(s) it queued
        return response

    return [
        Route("/subscribe", subscribe_form, methods=["GET", "HEAD"]),
        Route("/subscribe", subscribe_post, methods=["POST"]),
        Route("/api/subscribe", api_subscribe, methods=["POST"]),
        Route("/confirm/{token}", confirm_page, methods=["GET", "HEAD"]),
        Route("/confirm/{token}", confirm_post, methods=["POST"]),
    ]


_NO_WELCOME = ListSettings("", "")


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _client_ip(request: Request) -> str | None:
    """The client's address when it is one (a test client says "testclient"); it is stored only truncated."""
    host = request.client.host if request.client else ""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _json_error(status: int, field: str | None, error: str) -> JSONResponse:
    return JSONResponse({"error": error, "field": field}, status_code=status)
