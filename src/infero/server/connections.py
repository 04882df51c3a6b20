"""HTTP connections of the public server (and its metrics listener): how long a client may
hold one without progress, and one quiet log line for malformed requests.

aiohttp alone keeps an idle connection for an hour and never times out a request head, so
sockets that send nothing, or half a head, would stay open for ever. `ServerRunner` adds:
a request head must be complete within HEADER_TIMEOUT of the connection opening or of its
first byte; an idle keep-alive connection closes after KEEPALIVE_TIMEOUT. (The body's idle
gap, BODY_TIMEOUT, is enforced where bodies are read: `bodies.read_body`.) See
docs/server.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from infero.server.settings import ServerSettings

logger = logging.getLogger(__name__)

MALFORMED_LOG_EVERY = 10.0
"""Seconds between two WARNING lines about malformed requests (the others are counted)."""


class MalformedLog:
    """One WARNING line per malformed HTTP request, at most every MALFORMED_LOG_EVERY s;
    the requests in between are counted in the next line (no traceback: they are the
    client's fault, and anyone can send them)."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._next = 0.0
        self._skipped = 0

    def report(self, peer: str, error: BaseException) -> None:
        """Log (or count) one malformed request from `peer`."""
        now = self._clock()
        if now < self._next:
            self._skipped += 1
            return
        more = f" ({self._skipped} more since the last report)" if self._skipped else ""
        self._skipped = 0
        self._next = now + MALFORMED_LOG_EVERY
        reason = getattr(error, "message", "") or type(error).__name__
        logger.warning("malformed HTTP request from %s: %s%s", peer, reason, more)


class _GuardedHandler(RequestHandler):
    """aiohttp's connection protocol plus the header timeout and the quiet malformed log."""

    __slots__ = ("_head_count", "_head_timer", "header_timeout", "malformed")

    def __init__(
        self, manager: web.Server, *, header_timeout: float, malformed: MalformedLog, **kw: Any
    ) -> None:
        super().__init__(manager, **kw)
        self.header_timeout = header_timeout
        self.malformed = malformed
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_count = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:  # a whole head arrived
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
        elif self._head_timer is None and not self._request_in_progress and not self._messages:
            # The first bytes of the next head. (Body bytes that arrive before the handler
            # started, `_messages` still holding their request, must not arm it: the timer would
            # close the connection HEADER_TIMEOUT later, idle on keep-alive, possibly just as the
            # client sends its next request on it.)
            self._arm_head()

    def _arm_head(self) -> None:
        self._head_count = self._request_count
        loop = asyncio.get_running_loop()
        self._head_timer = loop.call_later(self.header_timeout, self._head_expired)

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._request_count == self._head_count and not self._request_in_progress:
            self.force_close()

    def log_exception(self, *args: Any, **kw: Any) -> None:
        error = kw.get("exc_info")
        if isinstance(error, HttpProcessingError):
            peer = self.transport.get_extra_info("peername") if self.transport else None
            self.malformed.report(str(peer[0]) if peer else "?", error)
            return
        super().log_exception(*args, **kw)


class _GuardedServer(web.Server):
    """aiohttp's low-level server making `_GuardedHandler` connections."""

    header_timeout = 10.0
    malformed = MalformedLog()

    def __call__(self) -> RequestHandler:
        return _GuardedHandler(
            self,
            header_timeout=self.header_timeout,
            malformed=self.malformed,
            loop=self._loop,
            **self._kwargs,
        )


class ServerRunner(web.AppRunner):
    """`web.AppRunner` whose connections time out (see the module docstring)."""

    def __init__(
        self,
        app: web.Application,
        *,
        header_timeout: float,
        keepalive_timeout: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, keepalive_timeout=keepalive_timeout, **kwargs)
        self._header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The same server object, now making guarded connections (aiohttp offers no hook
        # for the protocol class).
        server.__class__ = _GuardedServer
        assert isinstance(server, _GuardedServer)
        server.header_timeout = self._header_timeout
        server.malformed = MalformedLog()
        return server


def server_runner(app: web.Application, settings: ServerSettings, **kwargs: Any) -> ServerRunner:
    """The runner of a server listener, with the connection timeouts of `settings`."""
    return ServerRunner(
        app,
        header_timeout=settings.header_timeout,
        keepalive_timeout=settings.keepalive_timeout,
        access_log=None,
        **kwargs,
    )
