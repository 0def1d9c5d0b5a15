"""``newsletter preview ISSUE``: a local web page that shows the issue as it will be sent, live.

The page shows, side by side, the email at 375 px (a phone) and 700 px (a desktop
client), the plain-text part, the headers of the message an example reader gets, the
HTML's size against Gmail's clip, and the ``check`` findings. watchfiles watches the
issue file and the templates folder; each change renders the issue again (not each
request), and the page, which long-polls ``/events``, reloads itself. An error in the
issue file is shown on the page with its line and fix, over the last good render, and
the server keeps running.

This module is the only importer of starlette, uvicorn and watchfiles for the preview;
the CLI imports it only for this command, so the others don't pay for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.policy
import logging
import os
import secrets
import socket
import sys
import threading
import webbrowser
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from watchfiles import Change, DefaultFilter, awatch

from newsletter.compose.sample import render_sample
from newsletter.config import Settings, is_loopback
from newsletter.errors import ConfigError, IssueError, NewsletterError
from newsletter.preflight.compat import DEFAULT_CLIENTS
from newsletter.preflight.content import GMAIL_CLIP_BYTES, check_issue, check_rendered, check_source
from newsletter.preflight.finding import Finding
from newsletter.preflight.report import preflight_findings
from newsletter.render.engine import default_templates_dir
from newsletter.web.security import MAX_BODY, SecurityHeaders, page_policy

__all__ = [
    "PreviewServer",
    "preview_app",
    "serve_preview",
]

log = logging.getLogger("newsletter.preview")

#: how long ``/events`` holds a request that has nothing new (the page then asks again)
LONG_POLL_SECONDS = 20.0
#: the widths of the two views of the email: a phone, and a desktop client wider than the 600 px body
PHONE_WIDTH = 375
DESKTOP_WIDTH = 700
#: the names a request may give in its Host header (with any port), besides the address served on:
#: a page from another site that points its own name at 127.0.0.1 (DNS rebinding) gets 400
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
_NO_STORE = {"cache-control": "no-store"}
_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class _Render:
    """One good render of the issue: everything the page shows of it."""

    subject: str
    html: str
    text: str
    message: bytes
    findings: tuple[Finding, ...]
    #: when it was rendered; not part of what "changed" means
    rendered_at: dt.datetime = field(compare=False)

    @property
    def html_bytes(self) -> int:
        """The size Gmail measures: the HTML part, decoded (as ``check`` counts it)."""
        return len(self.html.encode("utf-8"))

    @property
    def raw_headers(self) -> str:
        """The message's header block as it goes on the wire (folded, RFC 2047-encoded)."""
        return self.message.split(b"\r\n\r\n", 1)[0].decode("ascii", "replace").replace("\r\n", "\n")

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The message's headers, decoded for reading."""
        parsed = BytesHeaderParser(policy=email.policy.default).parsebytes(self.message)
        return [(name, str(value)) for name, value in parsed.items()]

    def same_as(self, other: _Render) -> bool:
        """Whether the reader would see the same thing (the Date header differs on every render)."""
        return self == other or (
            (self.subject, self.html, self.text, self.findings)
            == (other.subject, other.html, other.text, other.findings)
            and _without_date(self.message) == _without_date(other.message)
        )


def _without_date(message: bytes) -> bytes:
    head, _, body = message.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"date:")]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@dataclass(frozen=True)
class _Problem:
    """Why the latest render failed: where (when known), what, and how to fix it."""

    source: str
    line: int | None
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}: " if self.source and self.line else (
            f"{self.source}: " if self.source else "")
        return f"{where}{self.message}" + (f" ({self.hint})" if self.hint else "")


@dataclass(frozen=True)
class _State:
    """What the page shows now; ``version`` changes whenever anything shown changes."""

    version: str
    render: _Render | None
    problem: _Problem | None
    checked_at: dt.datetime


class _Preview:
    """The live preview of one issue file: watches, renders on change, and wakes the pages waiting."""

    def __init__(self, issue: Path, settings: Settings, templates: Path,
                 report: Callable[[str], None] | None) -> None:
        self.issue = issue
        self.settings = settings
        self.templates = templates
        self.report = report
        # A new token each start: a page from an earlier run sees a new version and reloads.
        self._boot = secrets.token_hex(4)
        self._count = 0
        self.state = _State(f"{self._boot}-0", None, None, _now())
        self.closing = False
        self._changed: asyncio.Event | None = None
        self._dirty: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._watchers: list[asyncio.Task[None]] = []
        self._renderer: asyncio.Task[None] | None = None

    # --- life cycle (the app's lifespan) ------------------------------------------

    async def start(self) -> None:
        """Start watching, render once, then render again on every change."""
        self.closing = False
        self._changed = asyncio.Event()
        self._dirty = asyncio.Event()
        self._stop = asyncio.Event()
        issue_name = self.issue.name
        self._watchers = [
            # The issue's folder, not the file: editors save by writing a new file and
            # renaming it over the old one, which a watch on the old file would miss.
            asyncio.create_task(self._watch(
                self.issue.resolve().parent, recursive=False,
                accept=lambda _change, path: os.path.basename(path) == issue_name,
            )),
            # Templates may include others from subfolders; editors' temporary files are
            # ignored by watchfiles' default filter.
            asyncio.create_task(self._watch(self.templates, recursive=True, accept=DefaultFilter())),
        ]
        # Each watcher registers with the OS in its task's first step (before its first
        # await); yielding once lets both run it, so a change made from now on is seen and
        # none can slip in between this first render and the watching.
        await asyncio.sleep(0)
        await self._render()
        self._renderer = asyncio.create_task(self._render_on_change())

    async def stop(self) -> None:
        """Stop watching and rendering; wake any page still waiting."""
        self.close()
        if self._stop is not None:
            self._stop.set()  # the watchers see it within one step (50 ms)
        tasks = list(self._watchers)
        if self._renderer is not None:
            self._renderer.cancel()  # a render in progress finishes in its thread; nobody waits for it
            tasks.append(self._renderer)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watchers, self._renderer = [], None

    def close(self) -> None:
        """Answer every waiting long poll now, and each new one at once: the server is stopping."""
        self.closing = True
        if self._changed is not None:
            self._changed.set()

    # --- watching and rendering ---------------------------------------------------

    async def _watch(self, folder: Path, *, recursive: bool, accept: Callable[[Change, str], bool]) -> None:
        assert self._dirty is not None and self._stop is not None
        try:
            async for _changes in awatch(folder, watch_filter=accept, recursive=recursive, stop_event=self._stop,
                                         debounce=800, step=50):
                self._dirty.set()
        except Exception as exc:  # a watcher that dies must say so, not leave a page that never reloads
            log.exception("stopped watching %s", folder)
            self._say(f"stopped watching {folder} ({exc}); restart the preview to see changes")

    async def _render_on_change(self) -> None:
        assert self._dirty is not None
        while True:
            await self._dirty.wait()
            # Cleared before rendering: a save during the render makes one more render.
            self._dirty.clear()
            await self._render()

    async def _render(self) -> None:
        # In a thread: a render takes ~10 ms, premailer's first one much longer, and the
        # server keeps answering meanwhile.
        outcome = await asyncio.to_thread(self._build)
        self._publish(outcome)

    def _build(self) -> _Render | _Problem:
        """Render the issue as ``newsletter render`` does, for its example reader; or why it can't be."""
        try:
            return _render_for_preview(self.issue, self.settings)
        except IssueError as exc:
            return _Problem(exc.source, exc.line or None, exc.message, exc.hint)
        except NewsletterError as exc:
            return _Problem("", None, str(exc))
        except Exception as exc:  # any other failure is shown too: the server must keep running
            log.exception("rendering %s failed", self.issue)
            return _Problem(str(self.issue), None, f"unexpected error: {type(exc).__name__}: {exc}")

    def _publish(self, outcome: _Render | _Problem) -> None:
        old = self.state
        render: _Render | None = old.render  # after an error, the last good render stays on the page
        problem: _Problem | None = None
        if isinstance(outcome, _Render):
            render = outcome
        else:
            problem = outcome
        unchanged = problem == old.problem and (
            render is old.render or (render is not None and old.render is not None and render.same_as(old.render))
        )
        if unchanged:
            return
        self._count += 1
        self.state = _State(f"{self._boot}-{self._count}", render, problem, _now())
        if self._changed is not None:
            woken, self._changed = self._changed, asyncio.Event()
            if self.closing:
                self._changed.set()
            woken.set()
        if problem is not None:
            self._say(str(problem))
        elif render is not None:
            findings = len(render.findings)
            self._say(f"rendered: {render.html_bytes / 1024:.1f} KB of HTML, {findings} finding(s)")

    def _say(self, line: str) -> None:
        if self.report is not None:
            self.report(f"{_now():%H:%M:%S} {line}")

    # --- the long poll ------------------------------------------------------------

    async def wait_for_change(self, seen: str, timeout: float) -> str:
        """The current version, once it differs from ``seen`` or after ``timeout`` seconds."""
        changed = self._changed
        if seen == self.state.version and not self.closing and changed is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout)
        return self.state.version


def _render_for_preview(issue_path: Path, settings: Settings) -> _Render:
    """Render the issue file as ``newsletter render`` and ``check`` do, for the example reader.

    Raises what they raise: :class:`IssueError` for the file, other
    :class:`NewsletterError` for templates and the toolchain.
    """
    sample = render_sample(issue_path, settings)
    issue, rendered, message, html, text = sample.issue, sample.rendered, sample.message, sample.html, sample.text
    findings = [*check_issue(issue), *check_source(issue.source, issue_path.read_bytes().decode("utf-8", "replace")),
                *check_rendered(issue.source, html, text)]
    # What `newsletter check` adds (client support, accessibility), warnings and errors only:
    # the info findings (the template's accepted choices, partial support) would drown them.
    findings += [finding for finding in preflight_findings(issue, html, text, settings, clients=DEFAULT_CLIENTS)
                 if finding.counts]
    findings.sort(key=lambda finding: (_SEVERITY_ORDER.get(finding.severity, 3), finding.line))
    return _Render(rendered.subject, html, text, message, tuple(findings), _now())


def _now() -> dt.datetime:
    return dt.datetime.now().astimezone()


# --- the app ----------------------------------------------------------------------


def preview_app(issue: Path, settings: Settings, *, report: Callable[[str], None] | None = None,
                host: str = "127.0.0.1") -> Starlette:
    """The preview of ``issue`` as an ASGI app; its lifespan watches the files and renders.

    Routes: ``/`` the page, ``/email.html`` the email (framed by the page),
    ``/message.eml`` the whole message, ``/events?version=V`` the long poll that answers
    when the page is out of date, ``/static/preview.js`` the page's script. ``report``
    gets one line per render or error (the terminal of ``newsletter preview``). Only
    requests naming :data:`LOOPBACK_NAMES` or ``host`` (the address it is served on) in
    their ``Host`` header are answered; any other gets 400.

    Raises :class:`IssueError` when ``issue`` is not a file, :class:`ConfigError` when the
    templates folder is missing: mistakes on the command line, not in the file.
    """
    issue = Path(issue)
    if not issue.is_file():
        raise IssueError(str(issue), 0, "no such issue file", "check the path")
    templates = settings.templates_dir or default_templates_dir()
    if not templates.is_dir():
        raise ConfigError(f"the templates folder {templates} does not exist")
    preview = _Preview(issue, settings, templates, report)
    script = resources.files("newsletter.web").joinpath("static", "preview.js").read_bytes()
    style = resources.files("newsletter.web").joinpath("static", "preview.css").read_text(encoding="utf-8")

    async def page(request: Request) -> Response:
        return HTMLResponse(_page(preview, style), headers=_NO_STORE)

    async def email_html(request: Request) -> Response:
        render = preview.state.render
        body = render.html if render is not None else _EMPTY_EMAIL
        return HTMLResponse(body, headers=_NO_STORE)

    async def message_eml(request: Request) -> Response:
        render = preview.state.render
        if render is None:
            return Response("Nothing rendered yet.\n", status_code=404, media_type="text/plain", headers=_NO_STORE)
        return Response(render.message, media_type="message/rfc822", headers={
            **_NO_STORE, "content-disposition": f'attachment; filename="{_safe_filename(issue)}.eml"'})

    async def events(request: Request) -> Response:
        seen = request.query_params.get("version", "")
        version = await preview.wait_for_change(seen, LONG_POLL_SECONDS)
        return JSONResponse({"version": version}, headers=_NO_STORE)

    async def preview_js(request: Request) -> Response:
        return Response(script, media_type="text/javascript; charset=utf-8", headers={"cache-control": "no-cache"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await preview.start()
        try:
            yield
        finally:
            await preview.stop()

    app = Starlette(
        routes=[
            Route("/", page, methods=["GET"]),
            Route("/email.html", email_html, methods=["GET"]),
            Route("/message.eml", message_eml, methods=["GET"]),
            Route("/events", events, methods=["GET"]),
            Route("/static/preview.js", preview_js, methods=["GET"]),
        ],
        middleware=[
            Middleware(SecurityHeaders, policy=page_policy(frames=True, scripts=True), frame_options="SAMEORIGIN"),
            Middleware(TrustedHostMiddleware, allowed_hosts=_allowed_hosts(host), www_redirect=False),
        ],
        lifespan=lifespan,
        max_body_size=MAX_BODY,
    )
    app.state.preview = preview
    return app


def _allowed_hosts(host: str) -> list[str]:
    """The names the preview answers to: the loopback ones, and ``host`` unless it means every address."""
    names = list(LOOPBACK_NAMES)
    if host not in ("", "0.0.0.0", "::"):
        names.append(f"[{host}]" if ":" in host else host)
    return names


def _safe_filename(issue: Path) -> str:
    stem = issue.name.removesuffix(".md")
    return "".join(char if char.isalnum() or char in "-_." else "-" for char in stem) or "issue"


_EMPTY_EMAIL = (
    "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Nothing rendered yet</title></head>"
    "<body style=\"font-family: system-ui, sans-serif; color: #666; padding: 24px\">"
    "<p>Nothing rendered yet: fix the error in the issue file and this reloads.</p></body></html>\n"
)


def _page(preview: _Preview, style: str) -> str:
    """The preview page. Every piece of text from the issue or an error goes through ``escape``."""
    state = preview.state
    render = state.render
    title = f"Preview: {render.subject}" if render is not None else f"Preview: {preview.issue.name}"
    parts = [
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        f"<title>{escape(title)}</title>",
        f"<style>{style}</style>",
        "<script src=\"/static/preview.js\" defer></script>",
        f"</head><body data-version=\"{escape(state.version)}\">",
        "<header class=\"bar\">",
        f"<h1>{escape(render.subject if render is not None else preview.issue.name)}</h1>",
        f"<span class=\"muted\">{escape(str(preview.issue))}</span>",
        _size_html(render),
        f"<span class=\"muted\">updated {state.checked_at:%H:%M:%S}</span>",
        "<span id=\"live\" class=\"live\" data-state=\"connecting\">connecting…</span>",
        "</header><main>",
    ]
    if state.problem is not None:
        parts.append(_problem_html(state.problem, render))
    if render is None:
        parts.append("<section class=\"empty\" id=\"empty\">Nothing rendered yet: the issue file has an error."
                     " Fix it and save; this page reloads by itself.</section>")
    else:
        parts.append(_views_html(render, state.version))
        parts.append(_findings_html(render.findings))
        parts.append(_headers_html(render))
    parts.append("</main></body></html>\n")
    return "".join(parts)


def _size_html(render: _Render | None) -> str:
    if render is None:
        return ""
    size = render.html_bytes
    share = size / GMAIL_CLIP_BYTES
    verdict = "<span class=\"over\">clipped by Gmail</span>" if size >= GMAIL_CLIP_BYTES else f"{share:.0%}"
    return (
        f"<span class=\"size\" id=\"size\">HTML {size:,} bytes ({size / 1024:.1f} KB) of Gmail's"
        f" {GMAIL_CLIP_BYTES // 1024} KB clip: {verdict} "
        f"<meter min=\"0\" max=\"{GMAIL_CLIP_BYTES}\" low=\"{int(GMAIL_CLIP_BYTES * 0.85)}\""
        f" high=\"{GMAIL_CLIP_BYTES - 1}\" optimum=\"0\" value=\"{size}\"></meter>"
        f" · message {len(render.message):,} bytes</span>"
    )


def _problem_html(problem: _Problem, render: _Render | None) -> str:
    rows = []
    if problem.source:
        rows.append(("File", problem.source))
    if problem.line:
        rows.append(("Line", str(problem.line)))
    rows.append(("Problem", problem.message))
    if problem.hint:
        rows.append(("Fix", problem.hint))
    items = "".join(f"<dt>{escape(name)}</dt><dd>{escape(value)}</dd>" for name, value in rows)
    kept = (f"Below: the last good render, from {render.rendered_at:%H:%M:%S}." if render is not None
            else "Nothing rendered yet.")
    return (
        "<section class=\"problem\" id=\"problem\" role=\"alert\"><h2>The issue can't be rendered</h2>"
        f"<p class=\"oneline\"><code>{escape(str(problem))}</code></p><dl>{items}</dl>"
        f"<p class=\"muted\">{escape(kept)} Save a fixed file and this page reloads.</p></section>"
    )


def _views_html(render: _Render, version: str) -> str:
    src = f"/email.html?v={escape(version)}"
    # sandbox without allow-scripts or allow-same-origin: the email can run nothing and
    # reach nothing of this page; its links may open in a new tab like a mail client's.
    sandbox = "allow-popups allow-popups-to-escape-sandbox"
    frames = "".join(
        f"<div class=\"view {name}\"><h2>{label}</h2><iframe class=\"{name}\" src=\"{src}\" width=\"{width}\""
        f" sandbox=\"{sandbox}\" title=\"The email at {width} px\"></iframe></div>"
        for name, label, width in (("phone", f"Phone, {PHONE_WIDTH} px", PHONE_WIDTH),
                                   ("desktop", f"Desktop, {DESKTOP_WIDTH} px", DESKTOP_WIDTH))
    )
    text = (f"<div class=\"view text\"><h2>Plain text</h2><pre id=\"text\">{escape(render.text)}</pre>"
            "<p class=\"muted\"><a href=\"/message.eml\">Download the whole message (.eml)</a></p></div>")
    return f"<section class=\"views\">{frames}{text}</section>"


def _findings_html(findings: tuple[Finding, ...]) -> str:
    if not findings:
        return "<section id=\"findings\"><h2>Check</h2><p>No findings.</p></section>"
    items = "".join(
        f"<li><span class=\"sev-{escape(finding.severity)}\">{escape(finding.severity)}</span>"
        f" line {finding.line}: {escape(finding.full_message)}"
        f" <span class=\"muted\">[{escape(finding.code)}]</span></li>"
        for finding in findings
    )
    counted = sum(1 for finding in findings if finding.counts)
    return (f"<section id=\"findings\"><h2>Check: {len(findings)} finding(s), {counted} that fail"
            f" <code>newsletter check</code></h2><ul class=\"findings\">{items}</ul></section>")


def _headers_html(render: _Render) -> str:
    rows = "".join(f"<tr><th>{escape(name)}:</th><td>{escape(value)}</td></tr>" for name, value in render.headers)
    return (
        "<section id=\"headers\"><h2>Headers, for the example reader</h2>"
        f"<table class=\"headers\">{rows}</table>"
        f"<details><summary>As sent (encoded)</summary><pre>{escape(render.raw_headers)}</pre></details></section>"
    )


# --- serving ----------------------------------------------------------------------


class PreviewServer(uvicorn.Server):
    """uvicorn serving a :func:`preview_app`; when it stops, the pages' long polls end at once.

    uvicorn waits for open requests before it stops; without this, Ctrl-C would wait up
    to :data:`LONG_POLL_SECONDS` for each page's pending ``/events``.
    """

    def __init__(self, app: Starlette, *, host: str = "127.0.0.1",
                 log_config: dict[str, Any] | None = uvicorn.config.LOGGING_CONFIG) -> None:
        preview = getattr(app.state, "preview", None)
        if not isinstance(preview, _Preview):
            raise TypeError("PreviewServer serves an app made by preview_app()")
        self.preview = preview
        super().__init__(uvicorn.Config(
            app, host=host, lifespan="on", log_config=log_config, log_level="warning", access_log=False,
            server_header=False,
        ))

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Answer the waiting long polls, then stop as uvicorn does."""
        self.preview.close()
        await super().shutdown(sockets=sockets)


def serve_preview(issue: Path, settings: Settings, *, host: str = "127.0.0.1", port: int = 8001,
                  open_browser: bool = False) -> None:
    """Serve the live preview of ``issue`` on http://host:port/ until Ctrl-C (or SIGTERM).

    ``port`` 0 picks a free port; the URL printed says which. With ``open_browser`` the
    page opens in the default browser. Raises :class:`NewsletterError` when the address
    can't be used (:func:`preview_app`'s errors for a missing file or templates folder).
    """
    app = preview_app(issue, settings, report=lambda line: print(line, flush=True), host=host)
    listener = _listen(host, port)
    try:
        url = _url(host, listener.getsockname()[1])
        if not is_loopback(host):
            print(f"warning: the preview has no password; anyone who can reach {host} can read this issue",
                  file=sys.stderr, flush=True)
        if host in ("", "0.0.0.0", "::"):
            print("note: only requests to localhost, 127.0.0.1 or [::1] are answered; to be reached at another"
                  " address, give that address as --host", file=sys.stderr, flush=True)
        print(f"Previewing {issue} at {url} (Ctrl-C to stop)", flush=True)
        if open_browser:
            # The socket listens already: the browser's request waits in its backlog until
            # uvicorn has started.
            threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
        # uvicorn stops gracefully on SIGINT, then raises it again so the caller learns of
        # it: that KeyboardInterrupt is the normal end here.
        with contextlib.suppress(KeyboardInterrupt):
            PreviewServer(app, host=host).run(sockets=[listener])
    finally:
        listener.close()
    print("Preview stopped.", flush=True)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, bound before uvicorn starts, so the URL printed is right."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
        return socket.create_server(address[:2], family=family)
    except OSError as exc:
        raise NewsletterError(f"can't listen on {host} port {port}: {exc.strerror or exc}") from exc


def _url(host: str, port: int) -> str:
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"  # listening everywhere: this machine's own address is one of them
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
