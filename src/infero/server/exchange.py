"""One HTTP exchange relayed over a link, independent of model routing.

The link reader feeds an `Exchange` (Head, body chunks, End) without ever blocking; the
request handler consumes it, granting flow-control credit as it writes to its client
(`write_body`). The OpenAI relay and the MCP broker both build on these pieces.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

from aiohttp import web

from infero.protocol.link import Cancel, Credit, End, Head, LinkError

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "date",
        "server",
    }
)
"""Response headers the server never copies from a connector (it sets its own)."""


JOIN_LIMIT = 256 * 1024
"""Body chunks already received are joined into one client write up to this size."""


class ExchangeFailed(Exception):
    """The exchange cannot go on: link lost, connector error, timeout or protocol breach."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        """True when nothing reached the backend's answer yet and another connector may try."""


FULL = "full"
"""A home's answer to a routing pick whose connector had no free slot: the caller's view was
stale; it routes again (another connector, or the fleet queue), the connector not failed."""

RETRYABLE_CODES = frozenset(
    {"backend_unreachable", "draining", "link_lost", "backend_error", "busy"}
)
"""Connector errors before the Head after which another connector is tried."""


class FrameSender(Protocol):
    """What an exchange needs from its link to talk back."""

    async def send(self, frame: Cancel | Credit) -> None: ...


class Exchange:
    """Receive side of one relayed exchange (stream id `id` on one link)."""

    __slots__ = (
        "_allowance",
        "_deadline",
        "_events",
        "_link",
        "_timer",
        "_ungranted",
        "_waiter",
        "_window",
        "end",
        "finished",
        "id",
    )

    def __init__(self, link: FrameSender, stream_id: int, window: int) -> None:
        self.id = stream_id
        self._link = link
        self._window = window
        self._allowance = window
        self._ungranted = 0
        self._events: deque[Head | bytes | End | ExchangeFailed] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._deadline = 0.0
        """When the current wait times out (loop clock)."""
        self._timer: asyncio.TimerHandle | None = None
        """One timer for all waits: re-armed only when it fires early or too late."""
        self.end: End | None = None
        """The final frame once received (carries usage)."""
        self.finished = False
        """End or link loss was consumed, or the exchange was cancelled: no Cancel to send."""

    # ---- fed by the link reader (never blocks) ------------------------------------------

    def _push(self, item: Head | bytes | End | ExchangeFailed) -> None:
        self._events.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_head(self, head: Head) -> None:
        """The backend's status and headers arrived."""
        self._push(head)

    def on_body(self, payload: memoryview) -> bool:
        """Body bytes arrived; False when the connector overran its window (stream failed)."""
        self._allowance -= len(payload)
        if self._allowance < 0:
            self._push(ExchangeFailed("flow_control", "connector exceeded its flow-control window"))
            return False
        self._push(bytes(payload))
        return True

    def on_end(self, end: End) -> None:
        """The connector finished the exchange."""
        self.end = end
        self._push(end)

    def on_failed(self, failure: ExchangeFailed) -> None:
        """The exchange failed on its way (a peer instance's error, for instance)."""
        self._push(failure)

    def on_lost(self, message: str) -> None:
        """The link closed under this exchange."""
        self._push(ExchangeFailed("link_lost", message, retryable=True))

    # ---- consumed by the request handler -------------------------------------------------

    async def _next(self, limit: float | None) -> Head | bytes | End | ExchangeFailed:
        if not self._events:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            if limit is not None:
                self._arm(loop, loop.time() + limit)
            else:
                self._deadline = math.inf  # a timer left by an earlier wait lapses
            try:
                await waiter
            finally:
                self._waiter = None
        return self._events.popleft()

    def _arm(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """Time the current wait out at `deadline`.

        A stream waits once per chunk: instead of a timer per wait (two heap operations in
        the loop), the pending timer stays when it fires before the new deadline; it then
        re-arms itself for the rest (`_expire`).
        """
        self._deadline = deadline
        timer = self._timer
        if timer is not None:
            if timer.when() <= deadline:
                return
            timer.cancel()
        self._timer = loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        loop = asyncio.get_running_loop()
        if loop.time() >= self._deadline:
            waiter.set_exception(TimeoutError())
        elif self._deadline != math.inf:
            self._timer = loop.call_at(self._deadline, self._expire)

    async def head(self, limit: float | None) -> Head:
        """Wait up to `limit` s for the Head; raise `ExchangeFailed` (or TimeoutError)."""
        item = await self._next(limit)
        if isinstance(item, Head):
            return item
        if isinstance(item, ExchangeFailed):
            self.finished = item.code == "link_lost"
            raise item
        if isinstance(item, End):
            self.finished = True
            raise _end_failure(item.error)
        raise ExchangeFailed("protocol", "connector sent body before head")

    async def chunk(self, limit: float | None) -> bytes | None:
        """Next body bytes, or None at a clean End; raise on failure (TimeoutError on idle).

        Chunks that arrived together come back joined (up to `JOIN_LIMIT`): one client write.
        """
        item = await self._next(limit)
        if isinstance(item, bytes):
            events = self._events
            if events and isinstance(events[0], bytes):
                parts = [item]
                size = len(item)
                while events and isinstance(events[0], bytes) and size < JOIN_LIMIT:
                    part = events.popleft()
                    assert isinstance(part, bytes)
                    parts.append(part)
                    size += len(part)
                item = b"".join(parts)
            return item
        if isinstance(item, End):
            self.finished = True
            if item.error is None:
                return None
            failure = _end_failure(item.error)
            failure.retryable = False
            raise failure
        if isinstance(item, ExchangeFailed):
            self.finished = item.code == "link_lost"
            item.retryable = False
            raise item
        raise ExchangeFailed("protocol", "connector sent a second head")

    def at_clean_end(self) -> bool:
        """Whether a clean End is already here, next: consume it (the body is complete)."""
        events = self._events
        if len(events) == 1:
            item = events[0]
            if isinstance(item, End) and item.error is None:
                events.popleft()
                self.finished = True
                return True
        return False

    async def consumed(self, size: int) -> None:
        """`size` bytes reached the client: grant credit (batched at half a window)."""
        self._ungranted += size
        if self._ungranted >= self._window // 2 and not self.finished:
            grant, self._ungranted = self._ungranted, 0
            self._allowance += grant
            await self._link.send(Credit(id=self.id, bytes=grant))

    async def cancel(self) -> None:
        """Abort the backend call on the connector (no-op once finished); always call it
        when done with the exchange (it also stops the wait timer)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.finished:
            self.finished = True
            await self._link.send(Cancel(id=self.id))


def _end_failure(error: LinkError | None) -> ExchangeFailed:
    if error is None:
        return ExchangeFailed("protocol", "connector ended the exchange before any answer")
    return ExchangeFailed(error.code, error.message, retryable=error.code in RETRYABLE_CODES)


def response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The connector's headers minus hop-by-hop ones, CORS ones and any holding CR or LF.

    aiohttp refuses to send a header with a line break (it would split the head), and would
    fail the whole answer with a 500 after its head was half written; such a header is dropped.
    CORS is the server's decision (ALLOWED_ORIGINS): a backend's or MCP provider's
    `Access-Control-*` headers never reach the client.
    """
    return [
        (k, v)
        for k, v in headers
        if (low := k.lower()) not in HOP_BY_HOP
        and not low.startswith("access-control-")
        and "\n" not in (line := k + v)
        and "\r" not in line
    ]


def is_event_stream(headers: Iterable[tuple[str, str]]) -> bool:
    """Whether the Content-Type is `text/event-stream` (parameters allowed)."""
    for key, value in headers:
        if key.lower() == "content-type":
            return value.split(";", 1)[0].strip().lower() == "text/event-stream"
    return False


async def write_body(
    response: web.StreamResponse,
    exchange: Exchange,
    *,
    idle_timeout: float | None,
    on_chunk: Callable[[bytes], None] | None = None,
) -> None:
    """Copy body chunks to the client as they come, granting credit; raise on failure."""
    while True:
        try:
            chunk = await exchange.chunk(idle_timeout)
        except TimeoutError:
            raise ExchangeFailed("idle_timeout", "no data from the connector in time") from None
        if chunk is None:
            return
        if on_chunk is not None:
            on_chunk(chunk)
        await response.write(chunk)
        await exchange.consumed(len(chunk))
