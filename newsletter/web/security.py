"""ASGI middleware shared by ``newsletter serve`` and ``newsletter preview``: security headers,
no stack trace to any client, and request paths fit for a log.

Pure ASGI (no Starlette ``BaseHTTPMiddleware``) so that it streams and costs next to nothing.
Request bodies are capped by Starlette itself (``Starlette(max_body_size=MAX_BODY)``).
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from newsletter.render.i18n import N_

__all__ = [
    "MAX_BODY",
    "SERVER_ERROR",
    "SecurityHeaders",
    "TOKEN_PATHS",
    "page_policy",
    "redact_path",
]

log = logging.getLogger("newsletter.web")

#: the largest request body either server reads (a one-click POST is 26 bytes; a form, a few hundred)
MAX_BODY = 16 * 1024
#: how much of a request path a log line shows
LOGGED_PATH_CHARS = 200
#: paths whose last segment is a token (a credential): the log shows ``<token>`` instead
TOKEN_PATHS = ("/unsubscribe/", "/confirm/", "/preferences/")
#: what a client gets for a server error, in English (``newsletter serve`` passes it in the site's language)
SERVER_ERROR = N_("Something went wrong on our side. Please try again later.")


def page_policy(*, frames: bool = False, scripts: bool = False) -> str:
    """A Content-Security-Policy for our pages: nothing inline but styles (emails need them).

    ``scripts`` allows scripts from this origin (files, never inline); ``frames`` lets the
    page frame pages of this origin (the preview's side-by-side views).
    """
    parts = [
        "default-src 'none'",
        "style-src 'unsafe-inline'",  # an email's CSS lives in style attributes and <style>
        "img-src https: data:",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'self'" if frames else "frame-ancestors 'none'",
    ]
    if scripts:
        parts.append("script-src 'self'")
        parts.append("connect-src 'self'")
    if frames:
        parts.append("frame-src 'self'")
    return "; ".join(parts)


class SecurityHeaders:
    """Adds security headers to every response and hides server errors.

    An exception in the application becomes a plain 500 page (``server_error``); the traceback
    goes to the log only. A client that goes away while the application reads its request (it hung up,
    or the server's deadline closed it) is no error: one line in the log, nothing is sent.
    """

    def __init__(self, app: ASGIApp, *, policy: str, frame_options: str = "DENY",
                 server_error: str = SERVER_ERROR) -> None:
        self.app = app
        self.server_error = server_error
        self.headers: list[tuple[bytes, bytes]] = [
            (b"content-security-policy", policy.encode("ascii")),
            (b"referrer-policy", b"no-referrer"),
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", frame_options.encode("ascii")),
            (b"cross-origin-opener-policy", b"same-origin"),
            (b"permissions-policy", b"interest-cohort=(), browsing-topics=()"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        gone = False

        async def watched_receive() -> Message:
            nonlocal gone
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = True
            return message

        async def with_headers(message: Message) -> None:
            nonlocal started
            if gone:
                return  # nobody to answer (Starlette would answer 500 to the error it raises)
            if message["type"] == "http.response.start":
                started = True
                names = {name for name, _ in self.headers}
                message["headers"] = [
                    (name, value) for name, value in message.get("headers", []) if name.lower() not in names
                ] + self.headers
            await send(message)

        try:
            await self.app(scope, watched_receive, with_headers)
        except Exception:  # never a traceback to the client: the log has it
            if gone:
                log.info("the client went away during %s %s", scope.get("method"), redact_path(scope))
                return
            log.exception("error while serving %s %s", scope.get("method"), redact_path(scope))
            if not started:
                await _plain(send, 500, self.server_error, self.headers)


def redact_path(scope: Scope) -> str:
    """The request path for a log line: no token, nothing that can break or forge a line, at most ~200 characters.

    ``/unsubscribe/<token>``, ``/confirm/<token>`` and ``/preferences/<token>`` whatever the
    token (tokens are credentials: each acts for its reader). Any other path is
    percent-encoded again (the server decoded it: a ``%0a`` is a line break by now), so
    control characters, quotes, backslashes and bidirectional overrides show as ``%XX``;
    a longer path is cut, with its length.
    """
    path = str(scope.get("path", ""))
    for prefix in TOKEN_PATHS:
        if path.startswith(prefix) and path != prefix:
            return f"{prefix}<token>"
    shown = quote(path, safe="/:@!$&'()*+,;=")
    if len(shown) > LOGGED_PATH_CHARS:
        return f"{shown[:LOGGED_PATH_CHARS]}...({len(shown)} chars)"
    return shown


async def _plain(send: Send, status: int, text: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = text.encode("utf-8") + b"\n"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode("ascii")), *headers]})
    await send({"type": "http.response.body", "body": body})
