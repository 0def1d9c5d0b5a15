"""uvicorn as ``newsletter serve`` runs it: a deadline on every request, and no limit by connection count.

uvicorn reads requests with no timer of its own: a connection that never sends a byte, or
sends half a request header and stops (slowloris), stays open for as long as the client
likes. Its keep-alive timer runs only after a response and stops at the first byte of the
next request, and its ``limit_concurrency`` counts open connections, idle ones included, so
256 silent sockets made every request answer 503. :class:`DeadlineH11Protocol` gives each
request :data:`REQUEST_TIMEOUT` seconds to arrive whole (headers and body), counted from the
moment the connection is open or the previous response was sent, and closes the connection
when it has not; so no count of connections is needed, and none is kept.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = [
    "DeadlineH11Protocol",
    "REQUEST_TIMEOUT",
    "raise_open_file_limit",
]

log = logging.getLogger("newsletter.web")

#: seconds a client has to send a whole request (a one-click POST is well under 1 KB)
REQUEST_TIMEOUT = 10.0
#: the most open files :func:`raise_open_file_limit` asks for (one per connection, ~10 KB each)
OPEN_FILES_WANTED = 65536


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request doesn't arrive in time.

    The deadline is set when the connection opens and again after each response, and is
    never moved by the data that arrives: a client trickling one byte a second gets no more
    time than one sending nothing. When it passes and the request is still incomplete (the
    client is idle, or still sending the header or the body), the connection is closed; an
    application waiting for that body sees the client disconnect. A request that arrived
    whole is never cut short, however long the answer takes.
    """

    #: seconds for each request to arrive whole; a subclass may change it
    request_timeout: float = REQUEST_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._request_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_request_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_request_deadline()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_request_deadline()

    def _arm_request_deadline(self) -> None:
        self._disarm_request_deadline()
        if not self.transport.is_closing():
            self._request_deadline = self.loop.call_later(self.request_timeout, self._request_deadline_passed)

    def _disarm_request_deadline(self) -> None:
        if self._request_deadline is not None:
            self._request_deadline.cancel()
            self._request_deadline = None

    def _request_deadline_passed(self) -> None:
        self._request_deadline = None
        # IDLE: no request, or its header unfinished; SEND_BODY: its body unfinished (also
        # after an early answer such as 413, while the client goes on sending).
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            log.debug("closing a connection from %s: no whole request within %s s", self.client, self.request_timeout)
            self.transport.close()


def raise_open_file_limit(wanted: int = OPEN_FILES_WANTED) -> int:
    """Raise this process's soft limit on open files towards ``wanted`` (within the hard limit); the new limit.

    Every connection is an open file, and the usual soft limit, 1024, would stop the
    server accepting connections at about a thousand idle ones, which is what this module
    otherwise defends against. The hard limit (systemd's ``LimitNOFILE=``) stays the cap.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:  # e.g. a kernel cap below the hard limit: keep what we have
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, target, exc)
            return soft
        return target
    return soft
