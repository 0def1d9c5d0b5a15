"""The outbox: a local capture SMTP server that files every message it receives in a Maildir.

The demo and developers point the sender at it instead of a real relay (the embedded
defaults do: 127.0.0.1:8025). It is aiosmtpd, listening on a loopback address, with a
handler that delivers like a real MDA: one file per recipient of the envelope, in the
Maildir's ``new/``, starting with ``Return-Path: <sender>`` and ``Delivered-To: recipient``.

**What is stored.** After those two header lines (ending in CRLF), each file holds the
exact bytes of the SMTP DATA after dot-unstuffing, so CRLF line endings are kept as they
came over the wire: nothing is converted to LF, and the file is what a relay would have
been given. (``mailbox`` writes bytes untouched where ``os.linesep`` is ``"\\n"``, i.e.
on the POSIX systems the project runs on.) Like a strict relay, the server refuses with
``500`` a message that has a line over RFC 5321's limit (aiosmtpd allows 1001 octets
with the CRLF, counting a stuffed dot: 999 of text), and with ``552`` one over
:data:`MAX_MESSAGE_BYTES`.

Use :class:`Outbox` from code (``with Outbox(path, port=0) as outbox:``, or
``async with``), and :func:`serve_outbox` for the ``newsletter outbox`` command.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import mailbox
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from newsletter.errors import ConfigError
from newsletter.sanitize import one_line

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "MAX_MESSAGE_BYTES",
    "Outbox",
    "serve_outbox",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8025
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
"""The largest message accepted (announced as ``SIZE`` in EHLO); bigger ones get ``552``."""

_SERVER_NAME = "localhost"  # the name in the 220 greeting; given, so aiosmtpd never calls getfqdn()
_IDENT = "newsletter outbox (aiosmtpd)"
_START_TIMEOUT = 10.0
# mailbox.Maildir names files from a class-level counter that it increments without a lock,
# so every delivery in the process goes through this one lock.
_MAILDIR_LOCK = threading.Lock()
_MAILDIR_PARTS = ("cur", "new", "tmp")


class Outbox:
    """A capture SMTP server on ``host:port`` that files each message in the Maildir ``maildir``.

    ``start()`` binds the port and serves from a thread of its own, so the outbox works the
    same from synchronous code and from async code (``async with`` starts and stops it
    without blocking the caller's event loop). ``port=0`` takes a free port: read the
    real one from :attr:`port` once started. Only loopback addresses are accepted unless
    ``allow_remote`` is true. Every problem starting it is a :class:`ConfigError`.
    """

    def __init__(
        self,
        maildir: Path,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        allow_remote: bool = False,
    ) -> None:
        self.maildir = Path(maildir)
        self.host = host
        self.port = port  # once started: the port actually bound, never 0
        self.allow_remote = allow_remote
        self._requested_port = port
        self._controller: _Controller | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        """Whether the server is listening."""
        return self._controller is not None

    @property
    def address(self) -> str:
        """``host:port`` as clients reach it (IPv6 hosts in brackets), for messages."""
        return _host_port(self.host, self.port)

    def start(self) -> None:
        """Create the Maildir if needed, bind the port and start serving; return once it accepts mail.

        Raises :class:`ConfigError` for a non-loopback host (unless allowed), a port in
        use, or a Maildir that can't be created; nothing is left running then.
        """
        if self._controller is not None:
            raise RuntimeError(f"the outbox on {self.address} is already running")
        _check_port(self._requested_port)
        family, sockaddr = _resolve(self.host, self._requested_port, allow_remote=self.allow_remote)
        _open_maildir(self.maildir)
        sock = _listen(family, sockaddr, self.host, self._requested_port)
        self.port = sock.getsockname()[1]
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-maildir")
        controller: _Controller | None = None
        try:
            controller = _Controller(_MaildirHandler(self.maildir, executor), sock)
            controller.start()
        except BaseException as exc:
            _shutdown(controller, executor, sock)
            if isinstance(exc, OSError | RuntimeError):  # OSError includes aiosmtpd's TimeoutError
                raise ConfigError(f"can't start the outbox on {self.address}: {one_line(str(exc))}") from exc
            raise
        self._controller, self._executor = controller, executor

    def stop(self) -> None:
        """Stop serving and release the port; connected clients are disconnected. Safe to call twice.

        A message whose DATA was in flight may or may not have been filed: its sender got
        no ``250`` reply, so it would send it again.
        """
        controller, executor = self._controller, self._executor
        self._controller = self._executor = None
        if controller is not None and executor is not None:
            _shutdown(controller, executor, controller.sock)

    def count(self) -> int:
        """How many messages the Maildir holds (``new/`` and ``cur/``); 0 when it doesn't exist yet."""
        try:
            return len(mailbox.Maildir(self.maildir, create=False))
        except mailbox.NoSuchMailboxError:
            return 0
        except OSError as exc:
            raise ConfigError(f"{self.maildir}: can't read the Maildir: {exc.strerror or exc}") from exc

    def __enter__(self) -> Outbox:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Outbox:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"Outbox({str(self.maildir)!r}, {self.address}, {state})"


def serve_outbox(
    maildir: Path,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    ready: Callable[[Outbox], None] | None = None,
    allow_remote: bool = False,
) -> None:
    """Run an outbox until SIGINT or SIGTERM (or KeyboardInterrupt), then stop it and return.

    ``ready`` is called with the running outbox, e.g. to print where it listens. Must be
    called from the main thread (signal handlers can only be set there); the previous
    handlers are put back on return. Raises :class:`ConfigError` when it can't start.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("serve_outbox() must run in the main thread; use Outbox elsewhere")
    outbox = Outbox(maildir, host=host, port=port, allow_remote=allow_remote)
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Only the first signal interrupts; later ones must not break the clean stop.
        nonlocal stopping
        if not stopping:
            stopping = True
            raise _StopRequested(signum)

    signals = [signal.SIGINT, signal.SIGTERM]
    previous = {signum: signal.signal(signum, on_signal) for signum in signals}
    try:
        outbox.start()
        if ready is not None:
            ready(outbox)
        while True:
            time.sleep(3600)  # woken by the signal handler raising
    except (_StopRequested, KeyboardInterrupt):
        pass
    finally:
        stopping = True
        outbox.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _StopRequested(BaseException):
    """Raised by serve_outbox's signal handler: a BaseException, so no ``except Exception`` eats it."""


class _MaildirHandler:
    """aiosmtpd handler: files the DATA once per recipient, from a thread so the event loop keeps serving."""

    def __init__(self, maildir: Path, executor: ThreadPoolExecutor) -> None:
        self._maildir = mailbox.Maildir(maildir, create=False)
        self._executor = executor

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Store the message; ``451`` (try again later) when it can't be written."""
        content = envelope.original_content or b""
        sender = envelope.mail_from or ""
        recipients = list(envelope.rcpt_tos)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._deliver, sender, recipients, content)
        except (OSError, mailbox.Error) as exc:
            reason = one_line(exc.strerror or str(exc)) if isinstance(exc, OSError) else one_line(str(exc))
            return f"451 4.3.0 Can't store the message in the Maildir: {reason}"
        return f"250 2.0.0 OK: filed for {len(recipients)} recipient(s)"

    def _deliver(self, sender: str, recipients: list[str], content: bytes) -> None:
        """One Maildir file per recipient; all or none (files already written are removed on failure)."""
        keys: list[str] = []
        with _MAILDIR_LOCK:
            try:
                for recipient in recipients:
                    keys.append(self._maildir.add(_trace_headers(sender, recipient) + content))
            except BaseException:
                for key in keys:
                    self._maildir.discard(key)
                raise


class _Controller(Controller):
    """aiosmtpd's threaded controller, serving on a socket bound beforehand.

    Binding first is what makes ``port=0`` work (aiosmtpd 1.4 would connect to port 0 to
    check it started, aio-libs/aiosmtpd#388), and makes a port in use fail at once, where
    aiosmtpd would wait out its ready timeout and then leave its event loop unclosed.
    """

    def __init__(self, handler: _MaildirHandler, sock: socket.socket) -> None:
        self.sock = sock
        host, port = sock.getsockname()[:2]
        unspecified = ipaddress.ip_address(host.split("%")[0]).is_unspecified
        super().__init__(
            handler,
            # Where start() connects to check the server answers: loopback when bound to all interfaces.
            hostname=("::1" if sock.family == socket.AF_INET6 else "127.0.0.1") if unspecified else host,
            port=port,
            ready_timeout=_START_TIMEOUT,
            server_hostname=_SERVER_NAME,
            ident=_IDENT,
            data_size_limit=MAX_MESSAGE_BYTES,
            decode_data=False,
            enable_SMTPUTF8=False,
        )

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        return self.loop.create_server(self._factory_invoker, sock=self.sock)


def _shutdown(controller: _Controller | None, executor: ThreadPoolExecutor, sock: socket.socket) -> None:
    """Stop the controller's loop and thread, let a delivery in progress finish, close the socket."""
    if controller is not None:
        controller.stop(no_assert=True)
        if not controller.loop.is_closed():  # aiosmtpd leaves it open when serving failed to start
            controller.loop.close()
    executor.shutdown(wait=True)
    sock.close()


def _trace_headers(sender: str, recipient: str) -> bytes:
    """The lines an MDA puts on top: ``Return-Path`` (``<>`` for bounces) and ``Delivered-To``."""
    reverse_path = "" if sender == "<>" else one_line(sender)  # aiosmtpd gives "MAIL FROM:<>" as "<>"
    lines = f"Return-Path: <{reverse_path}>\r\nDelivered-To: {one_line(recipient)}\r\n"
    return lines.encode("ascii", "backslashreplace")


def _check_port(port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"outbox port must be a whole number from 0 to 65535 (0: any free port), not {port!r}")


def _resolve(host: str, port: int, *, allow_remote: bool) -> tuple[socket.AddressFamily, Any]:
    """The first address ``host`` resolves to, refused unless loopback (or ``allow_remote``)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"outbox host {host!r} can't be resolved: {exc}") from exc
    family, _, _, _, sockaddr = infos[0]
    if not allow_remote:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if not address.is_loopback:
            raise ConfigError(
                f"the outbox only listens on a loopback address (127.0.0.1, ::1, localhost), "
                f"not {host or '*'!r} ({address}): it accepts mail from anyone who can reach it"
            )
    return family, sockaddr


def _listen(family: socket.AddressFamily, sockaddr: Any, host: str, port: int) -> socket.socket:
    """A listening socket on ``sockaddr``; a port in use or a bad address is a one-line ConfigError."""
    try:
        return socket.create_server(sockaddr, family=family, backlog=socket.SOMAXCONN)
    except OSError as exc:
        where = _host_port(host, port)
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"can't listen on {where}: the port is already in use (stop what uses it, or choose another port)"
            ) from exc
        if exc.errno == errno.EACCES:
            raise ConfigError(f"can't listen on {where}: permission denied (ports below 1024 need root)") from exc
        raise ConfigError(f"can't listen on {where}: {one_line(exc.strerror or str(exc))}") from exc


def _open_maildir(path: Path) -> None:
    """Make ``path`` a Maildir (``cur/``, ``new/``, ``tmp/``), creating parents; refuse other directories."""
    try:
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{path}: not a directory, so it can't be the outbox Maildir")
        if path.is_dir() and any(path.iterdir()) and not all((path / part).is_dir() for part in _MAILDIR_PARTS):
            raise ConfigError(f"{path}: a directory that isn't a Maildir (no cur/, new/, tmp/); choose another")
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        for part in _MAILDIR_PARTS:
            (path / part).mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{path}: can't create the outbox Maildir: {one_line(exc.strerror or str(exc))}") from exc


def _host_port(host: str, port: int) -> str:
    shown = host or "*"
    return f"[{shown}]:{port}" if ":" in shown else f"{shown}:{port}"

