"""``newsletter serve``: one-click unsubscribe (RFC 8058), the unsubscribe page, and the archive.

Routes:

- ``POST /unsubscribe/<token>`` with the body ``List-Unsubscribe=One-Click`` (form-encoded
  or multipart, as mail providers send it): unsubscribes, answers 200 at once. No cookie,
  no login: the token is the proof. Idempotent.
- ``GET /unsubscribe/<token>``: a page saying who leaves which list, with one button (a
  POST form). Link scanners that open every URL in a message change nothing.
- ``POST /unsubscribe/<token>`` from that form (``action=unsubscribe`` or ``resubscribe``):
  does it and shows the result, with the way back.
- ``GET /preferences/<token>`` and its ``POST``: the reader's name and lists (:mod:`newsletter.web.preferences`).
- ``GET /issues/`` and ``GET /issues/<slug>/``: the archive and each sent issue's web version,
  worked out on threads of their own, so that no number of them delays an unsubscribe.
- ``GET /issues/feed.xml``: the archive's Atom feed (the latest sent issues), on the same threads.
- ``/subscribe``, ``/api/subscribe``, ``/confirm/<token>``: readers sign up themselves, with double
  opt-in (:mod:`newsletter.web.signup_routes`).

A forged, altered or malformed token gets 400 and changes nothing. Every response carries
security headers (a CSP with no script at all, no referrer); bodies are capped at 16 KiB; a
server error is a plain 500 page, never a traceback; the access log never shows a token.
Cross-site form posts from browsers are refused (``Origin`` / ``Sec-Fetch-Site``); the one-
click POST, which mail providers send from their servers, needs only the token.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from newsletter.config import Settings
from newsletter.errors import ConfigError, NewsletterError
from newsletter.render.i18n import Wording
from newsletter.tokens import TokenSigner, split_keys
from newsletter.web import archive, feed, preferences, unsubscribe
from newsletter.web.responses import forgotten_response, message_response, page_response
from newsletter.web.security import MAX_BODY, SERVER_ERROR, SecurityHeaders, page_policy, redact_path
from newsletter.web.signup_routes import signup_routes

__all__ = [
    "AccessLog",
    "create_app",
    "serve",
]

access_log = logging.getLogger("newsletter.access")
log = logging.getLogger("newsletter.web")

#: what a one-click unsubscribe POST carries (RFC 8058 section 3.1)
ONE_CLICK = ("List-Unsubscribe", "One-Click")
#: threads the archive's pages may use at once (their own: never the unsubscribe routes')
ARCHIVE_THREADS = 4
#: archive requests in flight (running or waiting for a thread) beyond which more get 503 at once
ARCHIVE_BACKLOG = 64


@dataclass
class _Web:
    settings: Settings
    signer: TokenSigner
    #: slug -> (a digest of the issue's text, its web version): rendered once per version
    pages: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: a digest of an issue's text -> its summary in the feed: each version parsed once
    summaries: dict[str, str] = field(default_factory=dict)

    @property
    def words(self) -> Wording:
        """The site's language's catalogs (read again only when a file changed)."""
        return archive.wording(self.settings)

    def page(self, template: str, status: int = 200, **values: object) -> HTMLResponse:
        return page_response(self.settings, template, status, **values)

    def message(self, status: int, heading: str, text: str, link: str = "", link_text: str = "") -> HTMLResponse:
        return message_response(self.settings, status, heading, text, link, link_text)

    def forgotten(self) -> HTMLResponse:
        return forgotten_response(self.settings)

    def invalid_token(self) -> HTMLResponse:
        words = self.words
        return self.message(400, words.gettext("This link is not valid"),
                            words.gettext("The unsubscribe link is incomplete or was changed. Use the link at the end"
                                          " of one of our emails, as it is."))


def create_app(settings: Settings) -> ASGIApp:
    """The ASGI application for ``settings`` (its database, issues folder and secret key)."""
    keys = split_keys(settings.secret_key.reveal())
    if not keys:
        raise ConfigError("newsletter serve needs NEWSLETTER_SECRET_KEY: the key that signed the unsubscribe links")
    web = _Web(settings, TokenSigner(keys))
    site_origin = _origin(settings.sender.site_url)

    async def home(request: Request) -> Response:
        return RedirectResponse("/issues/", status_code=302)

    async def no_token(request: Request) -> Response:
        words = web.words
        return web.message(200, words.gettext("Unsubscribe"),
                           words.gettext("Every email we send ends with an unsubscribe link made for its reader. Open"
                                         " it from the email you received, and you can leave the list with one"
                                         " click."),
                           "/issues/", words.gettext("All issues"))

    async def unsubscribe_page(request: Request) -> Response:
        token = request.path_params["token"]
        membership = await run_in_threadpool(unsubscribe.find_membership, settings.database.location, web.signer, token)
        if membership is None:
            return web.invalid_token()
        if membership.forgotten:
            return web.forgotten()
        return web.page("unsubscribe.html", email=membership.email, list_name=membership.list_name,
                        active=membership.active, suppressed=membership.suppressed,
                        complained=membership.complained, action=f"/unsubscribe/{token}")

    async def unsubscribe_post(request: Request) -> Response:
        token = request.path_params["token"]
        form = await request.form(max_files=0, max_fields=20)
        one_click = form.get(ONE_CLICK[0]) == ONE_CLICK[1]
        action = form.get("action")
        await form.close()
        if not one_click and _cross_site(request, site_origin):
            return PlainTextResponse(web.words.gettext("Cross-site form posts are not accepted.") + "\n",
                                     status_code=403)
        membership = await run_in_threadpool(unsubscribe.find_membership, settings.database.location, web.signer, token)
        if membership is None:
            if one_click:
                return PlainTextResponse("Invalid unsubscribe token.\n", status_code=400)
            return web.invalid_token()
        if membership.forgotten:
            # Nothing to end: every list already stopped, and the page must show nothing of them.
            return PlainTextResponse("Unsubscribed.\n") if one_click else web.forgotten()
        if one_click or action == "unsubscribe":
            await run_in_threadpool(unsubscribe.unsubscribe, settings.database.location, membership)
            if one_click:
                return PlainTextResponse("Unsubscribed.\n")
            return web.page("unsubscribed.html", email=membership.email, list_name=membership.list_name,
                            action=f"/unsubscribe/{token}")
        if action == "resubscribe":
            outcome = await run_in_threadpool(unsubscribe.resubscribe, settings.database.location, membership)
            if outcome == "suppressed":
                return web.page("unsubscribe.html", 409, email=membership.email, list_name=membership.list_name,
                                active=False, suppressed=True, complained=membership.complained,
                                action=f"/unsubscribe/{token}")
            return web.page("resubscribed.html", email=membership.email, list_name=membership.list_name,
                            action=f"/unsubscribe/{token}")
        words = web.words
        return web.message(400, words.gettext("Nothing to do"),
                           words.gettext("The form was incomplete. Please use the button on the page."))

    # The archive's blocking work (database, files, rendering) runs on threads of its own, at
    # most ARCHIVE_THREADS at once, not on the thread pool the unsubscribe routes share: any
    # number of archive requests in flight leaves an unsubscribe nothing to wait for. Past
    # ARCHIVE_BACKLOG in flight, more get 503 at once rather than hold the server's connections.
    archive_threads = anyio.CapacityLimiter(ARCHIVE_THREADS)
    in_flight = 0

    async def on_archive_thread(function: Callable[..., Response], *args: object) -> Response:
        nonlocal in_flight
        if in_flight >= ARCHIVE_BACKLOG:
            words = web.words
            return web.message(503, words.gettext("Busy"),
                               words.gettext("The archive is busy right now. Please try again in a moment."))
        in_flight += 1
        try:
            return await anyio.to_thread.run_sync(function, *args, limiter=archive_threads)
        finally:
            in_flight -= 1

    def index_page() -> Response:
        entries = archive.sent_issues(settings.database.location)
        kept = [entry for entry in entries if archive.available(entry, settings.issues_dir)]
        return HTMLResponse(archive.index_page(kept, settings))

    def issue_page(slug: str) -> Response:
        # One indexed lookup, known slug or not, which brings the text as sent along.
        found = archive.sent_issue_source(settings.database.location, slug, settings.issues_dir)
        if found is None:
            words = web.words
            return web.message(404, words.gettext("No such issue"),
                               words.gettext("This issue was never sent, or it is no longer online."),
                               "/issues/", words.gettext("All issues"))
        text, source = found
        stamp = hashlib.sha256(text.encode("utf-8")).hexdigest()
        cached = web.pages.get(slug)
        if cached is None or cached[0] != stamp:
            try:
                html = archive.web_version(text, source, settings)
            except NewsletterError as exc:
                log.error("archive: %s", exc)
                words = web.words
                return web.message(503, words.gettext("This issue can't be shown right now"),
                                   words.gettext("Please try again later."))
            web.pages[slug] = cached = (stamp, html)
        return HTMLResponse(cached[1])

    def feed_document() -> Response:
        items = feed.feed_items(settings.database.location, settings.issues_dir, web.summaries)
        return Response(feed.atom_feed(items, settings), media_type=feed.MEDIA_TYPE)

    async def archive_feed(request: Request) -> Response:
        return await on_archive_thread(feed_document)

    async def archive_index(request: Request) -> Response:
        return await on_archive_thread(index_page)

    async def archive_issue(request: Request) -> Response:
        return await on_archive_thread(issue_page, request.path_params["slug"])

    async def issue_without_slash(request: Request) -> Response:
        return RedirectResponse(f"/issues/{request.path_params['slug']}/", status_code=301)

    server_error_text = web.words.gettext(SERVER_ERROR)  # also checks the catalogs before the first request

    async def server_error(request: Request, exc: Exception) -> Response:
        # Starlette's own 500 says "Internal Server Error" in English; the traceback goes to the log as before.
        return PlainTextResponse(server_error_text + "\n", status_code=500)

    async def not_found(request: Request, exc: Exception) -> Response:
        moved = _slash_twin(request.scope, app.router.routes)
        if moved is not None:
            return RedirectResponse(moved, status_code=307)
        words = web.words
        return web.message(404, words.gettext("Not found"), words.gettext("There is nothing at this address."),
                           "/issues/", words.gettext("All issues"))

    app = Starlette(
        debug=False,
        routes=[
            Route("/", home),
            Route("/unsubscribe/", no_token),
            Route("/unsubscribe/{token}", unsubscribe_page, methods=["GET", "HEAD"]),
            Route("/unsubscribe/{token}", unsubscribe_post, methods=["POST"]),
            *preferences.routes(settings, web.signer, cross_site=lambda request: _cross_site(request, site_origin)),
            Route("/issues/", archive_index),
            Route("/issues/feed.xml", archive_feed),  # before /issues/{slug}, which would redirect it
            Route("/issues/{slug}/", archive_issue),
            Route("/issues/{slug}", issue_without_slash),
            *signup_routes(settings, keys, cross_site=lambda request: _cross_site(request, site_origin)),
        ],
        exception_handlers={404: not_found, 500: server_error},
        max_body_size=MAX_BODY,
    )
    # Starlette's own slash redirect names the host from the Host header, which the client
    # chooses (and says http:// behind a TLS proxy): not_found redirects by path instead.
    app.router.redirect_slashes = False
    return AccessLog(SecurityHeaders(app, policy=page_policy(), server_error=server_error_text))


def _origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _slash_twin(scope: Scope, routes: list[BaseRoute]) -> str | None:
    """Where a path that matches no route belongs, as a relative URL, when adding or removing
    its trailing slash makes it match one; None when that doesn't help."""
    path = str(scope["path"])
    twin = path.rstrip("/") if path.endswith("/") else path + "/"
    if not twin.startswith("/") or twin.startswith("//"):  # "//host" would name another site
        return None
    if not any(route.matches({**scope, "path": twin})[0] is not Match.NONE for route in routes):
        return None
    # Encoded again (the path was decoded): a backslash stays %5C, which no browser reads as "/".
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    return quote(twin, safe="/:@!$&'()*+,;=") + (f"?{query}" if query else "")


def _cross_site(request: Request, site_origin: str) -> bool:
    """A browser form post from another site (a forged form), by the headers browsers add.

    Same-site means our public address ([sender] site_url, when a proxy stands in front) or
    the address the request came to. Clients that send neither header aren't browsers.
    """
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site not in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return False
    own = {site_origin, f"{request.url.scheme}://{request.headers.get('host', '')}".lower()}
    return origin.lower() not in own


class AccessLog:
    """One line per request, with tokens cut out (they are credentials), once its answer is sent.

    The time is the answer's: work a route does after it (a signup's confirmation email, sent
    in the background) is neither in the line's time nor holding the line back.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        logged = False

        def log_line() -> None:
            nonlocal logged
            if not logged:
                logged = True
                client = scope.get("client") or ("-", 0)
                access_log.info('%s "%s %s" %s %.1f ms', client[0], scope.get("method", "-"), redact_path(scope),
                                status or "-", (time.perf_counter() - started) * 1000)  # "-": the client left

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                log_line()

        try:
            await self.app(scope, receive, recording)
        finally:
            log_line()


def serve(settings: Settings, *, host: str = "127.0.0.1", port: int = 8000, proxies: Sequence[str] = ()) -> None:
    """Run the application with uvicorn until Ctrl-C (uvicorn's own access log off: ours redacts).

    Each request has :data:`~newsletter.web.server.REQUEST_TIMEOUT` seconds to arrive, and an
    idle connection closes 5 s after its last response; no limit counts connections (uvicorn's
    ``limit_concurrency`` counted idle ones, so silent sockets locked everyone out).

    ``proxies``: addresses or networks of reverse proxies whose ``X-Forwarded-For`` and
    ``X-Forwarded-Proto`` are believed (uvicorn's proxy-headers middleware), so that signup
    limits and consent records see the reader's network, not the proxy's; from anyone else
    those headers are ignored, as they are when there are none.
    """
    import uvicorn

    from newsletter.web.server import DeadlineH11Protocol, raise_open_file_limit

    app = create_app(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    raise_open_file_limit()
    uvicorn.run(app, host=host, port=port, access_log=False, server_header=False, proxy_headers=bool(proxies),
                forwarded_allow_ips=list(proxies) or None, log_level="info", http=DeadlineH11Protocol,
                timeout_keep_alive=5, h11_max_incomplete_event_size=16384)

