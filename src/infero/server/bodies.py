"""Request bodies: read once into one buffer, bounded in size, in idle time and in the bytes
all bodies hold at once across the server. See docs/routing.md and docs/errors.md."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from infero.server import errors
from infero.server.events import RejectReason


class BodyBudget:
    """Bytes of request bodies held at once (MAX_HELD_BODY_BYTES); `take` before holding,
    `give_back` once the request is over."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        """Reserve `size` bytes; False (nothing reserved) when that would pass the limit."""
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        """Release bytes reserved with `take`."""
        self.held -= size


@dataclass(frozen=True, slots=True)
class Replies:
    """How a route answers a refused body, in its own API's error shape."""

    too_large: Callable[[int], web.Response]
    overloaded: Callable[[], web.Response]
    timed_out: Callable[[], web.Response]
    bad_request: Callable[[str], web.Response]


OPENAI = Replies(errors.too_large, errors.overloaded, errors.body_timeout, errors.bad_request)
"""The OpenAI routes' answers (docs/errors.md)."""


class BodyRefused(Exception):
    """The body cannot be taken; `response` is the answer and `reason` what to count."""

    def __init__(self, reason: RejectReason, response: web.Response) -> None:
        super().__init__(reason)
        self.reason = reason
        self.response = response


async def read_body(
    request: web.Request,
    *,
    limit: int,
    idle_timeout: float,
    budget: BodyBudget,
    replies: Replies = OPENAI,
) -> bytes | bytearray:
    """The whole body, reserved in `budget` (the caller gives back `len(body)` when done).

    Chunks go straight into one buffer sized from `Content-Length` (no joined second copy);
    a body that arrived with the head is taken as it is, without a timer. Raises `BodyRefused`:
    413 over `limit`, 503 when the budget is spent, 408 after `idle_timeout` s without a byte,
    400 for a broken body encoding; each answer built by `replies`.
    """
    length = request.content_length
    if length is not None and length > limit:
        raise BodyRefused("too_large", replies.too_large(limit))
    content = request.content
    if length is not None:
        if not budget.take(length):
            raise BodyRefused("overloaded", replies.overloaded())
        first = content.read_nowait()
        if len(first) == length:
            return first
        reserved = length
        buffer = bytearray(length)
        buffer[: len(first)] = first
        filled = len(first)
    else:
        reserved = filled = 0
        buffer = bytearray()
    try:
        while not content.at_eof():
            chunk = content.read_nowait()
            if not chunk:
                try:
                    async with asyncio.timeout(idle_timeout):
                        chunk = await content.readany()
                except TimeoutError:
                    raise BodyRefused(
                        "body_timeout", await _answer_and_close(request, replies.timed_out())
                    ) from None
            size = len(chunk)
            if length is None:
                if filled + size > limit:
                    raise BodyRefused("too_large", replies.too_large(limit))
                if not budget.take(size):
                    raise BodyRefused("overloaded", replies.overloaded())
                reserved += size
                buffer += chunk
            else:
                buffer[filled : filled + size] = chunk
            filled += size
    except HttpProcessingError:
        budget.give_back(reserved)
        raise BodyRefused(
            "bad_request", replies.bad_request("The request body is malformed.")
        ) from None
    except BaseException:
        budget.give_back(reserved)
        raise
    if filled != reserved:  # a body shorter than its Content-Length (the parser stops it)
        budget.give_back(reserved)
        raise BodyRefused("bad_request", replies.bad_request("The request body is incomplete."))
    return buffer


async def _answer_and_close(request: web.Request, response: web.Response) -> web.Response:
    """Send the 408 `response` and close the connection now: waiting for the rest of a body
    that stopped arriving (aiohttp lingers up to 10 s for it) would hold the socket for nothing."""
    await response.prepare(request)
    await response.write_eof()
    if request.transport is not None:
        request.transport.close()
    return response
