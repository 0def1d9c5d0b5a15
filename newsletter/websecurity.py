"""ASGI middleware shared by ``newsletter serve`` and ``newsletter preview``: security headers,
a request body limit, and no stack trace to any client.

Pure ASGI (no Starlette ``BaseHTTPMiddleware``) so that it streams and costs next to nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "SecurityHeaders",
    "page_policy",
    "redact_path",
]

log = logging.getLogger("newsletter.web")


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
    """Adds security headers to every response, caps request bodies, and hides server errors.

    A body longer than ``max_body`` bytes gets 413 before the application reads it (when
    Content-Length says so) or as soon as it goes over (when it is streamed). An exception
    in the application becomes a plain 500 page; the traceback goes to the log only.
    """

    def __init__(self, app: ASGIApp, *, policy: str, max_body: int = 16 * 1024,
                 frame_options: str = "DENY") -> None:
        self.app = app
        self.max_body = max_body
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
        declared = _content_length(scope["headers"])
        if declared is not None and declared > self.max_body:
            await _plain(send, 413, "Request body too large", self.headers)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _TooLarge
            return message

        async def with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                names = {name for name, _ in self.headers}
                message["headers"] = [
                    (name, value) for name, value in message.get("headers", []) if name.lower() not in names
                ] + self.headers
            await send(message)

        try:
            await self.app(scope, limited_receive, with_headers)
        except _TooLarge:
            if not started:
                await _plain(send, 413, "Request body too large", self.headers)
        except Exception:  # never a traceback to the client: the log has it
            log.exception("error while serving %s %s", scope.get("method"), redact_path(scope))
            if not started:
                await _plain(send, 500, "Something went wrong on our side. Please try again later.", self.headers)


class _TooLarge(Exception):
    pass


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def redact_path(scope: Scope) -> str:
    """The request path for a log: ``/unsubscribe/<token>`` whatever the token (tokens are credentials)."""
    path = str(scope.get("path", ""))
    if path.startswith("/unsubscribe/") and path != "/unsubscribe/":
        return "/unsubscribe/<token>"
    return path


async def _plain(send: Send, status: int, text: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = text.encode("utf-8") + b"\n"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode("ascii")), *headers]})
    await send({"type": "http.response.body", "body": body})
