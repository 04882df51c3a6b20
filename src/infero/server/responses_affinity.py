"""The Responses API across a fleet: a stored response lives on the connector that made it.

`POST /responses` answers carry the new response's id; `ResponseTap` reads it from the
first bytes of the answer (the JSON's leading `"id"`, or the `response.created` event of a
stream) and records its connector in an `AffinityTable`. `GET`/`DELETE /responses/{id}`,
`POST /responses/{id}/cancel`, `GET /responses/{id}/input_items` and a follow-up carrying
`previous_response_id` are then sent to that connector. With REDIS_ADDR the table lives in
Redis (`RedisAffinity`), so any instance finds the connector, linked to it or not. See
docs/routing.md and docs/scale-out.md.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from infero.server import errors
from infero.server.bodies import BodyRefused, read_body
from infero.server.exchange import is_event_stream
from infero.server.membership import PREFIX, REDIS_FAILURES

if TYPE_CHECKING:
    from infero.server.openai_api import OpenAIRelay

logger = logging.getLogger(__name__)

RESPONSES_PATH = "/api/v1/responses"
STORED_ROUTES = (
    ("GET", RESPONSES_PATH + "/{response_id}"),
    ("DELETE", RESPONSES_PATH + "/{response_id}"),
    ("POST", RESPONSES_PATH + "/{response_id}/cancel"),
    ("GET", RESPONSES_PATH + "/{response_id}/input_items"),
)
"""Routes answered by the connector that created the response."""

JSON_SCAN_LIMIT = 4 * 1024 * 1024
"""A JSON answer whose `id` is not its first key is parsed whole, up to this size."""

SSE_SCAN_LIMIT = 64 * 1024
"""A streamed answer is scanned for `response.created` in its first bytes only."""

_LEADING_ID = re.compile(rb'\A\s*\{\s*"id"\s*:\s*"([^"\\]{1,256})"')
_ID_LIMIT = 256


@dataclass(frozen=True, slots=True)
class Owner:
    """Where a response was created: the connector id and the model it was asked for."""

    connector_id: str
    model: str


class AffinityTable(Protocol):
    """Response id -> `Owner`; in memory here, shared between instances in Redis."""

    async def remember(self, response_id: str, owner: Owner) -> None: ...

    async def lookup(self, response_id: str) -> Owner | None: ...

    async def forget(self, response_id: str) -> None: ...


class MemoryAffinity:
    """An in-process `AffinityTable`: at most `max_entries` ids (least recently used go
    first), each forgotten `ttl` seconds after it was remembered."""

    def __init__(
        self, *, max_entries: int, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self.clock = clock
        self._entries: OrderedDict[str, tuple[Owner, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def remember(self, response_id: str, owner: Owner) -> None:
        entries = self._entries
        entries[response_id] = (owner, self.clock() + self.ttl)
        entries.move_to_end(response_id)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)

    async def lookup(self, response_id: str) -> Owner | None:
        entry = self._entries.get(response_id)
        if entry is None:
            return None
        owner, expires = entry
        if self.clock() >= expires:
            del self._entries[response_id]
            return None
        self._entries.move_to_end(response_id)
        return owner

    async def forget(self, response_id: str) -> None:
        self._entries.pop(response_id, None)


RESPONSE_KEY = PREFIX + "response:"
"""`{infero}:response:<id>` holds `[connector id, model]` as JSON, with a TTL."""
RESPONSE_INDEX = PREFIX + "responses"
"""Sorted set of the remembered ids by expiry time: what bounds their number."""


class RedisAffinity:
    """The `AffinityTable` of a fleet sharing REDIS_ADDR: every instance finds every id.

    Each id is a key with a TTL of `ttl` seconds (`SET ... PX`); a sorted set indexes them by
    expiry so that at most `max_entries` are kept (the oldest remembered go first). `remember`
    costs one pipeline of 4 commands (2 more when over the cap), `lookup` one command and
    `forget` one pipeline of 2: per Responses request, never per chunk. While Redis is
    unreachable (`degraded()`, or a command fails) the ids this instance saw itself are kept
    and found in a `MemoryAffinity`, as on a single server; a Redis error is logged.
    """

    def __init__(
        self,
        redis: Any,
        *,
        max_entries: int,
        ttl: float,
        degraded: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.max_entries = max_entries
        self.ttl = ttl
        self.degraded = degraded
        self.clock = clock
        self.fallback = MemoryAffinity(max_entries=max_entries, ttl=ttl)
        """The ids this instance remembered, for when Redis cannot answer."""

    async def remember(self, response_id: str, owner: Owner) -> None:
        await self.fallback.remember(response_id, owner)
        if self.degraded():
            return
        value = json.dumps([owner.connector_id, owner.model])
        now = self.clock()
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(RESPONSE_KEY + response_id, value, px=max(1, int(self.ttl * 1000)))
            pipe.zadd(RESPONSE_INDEX, {response_id: now + self.ttl})
            pipe.zremrangebyscore(RESPONSE_INDEX, "-inf", now)
            pipe.zcard(RESPONSE_INDEX)
            *_, count = await pipe.execute()
            if count > self.max_entries:
                oldest = await self.redis.zpopmin(RESPONSE_INDEX, count - self.max_entries)
                if oldest:
                    await self.redis.delete(*(RESPONSE_KEY + _text(i) for i, _ in oldest))
        except REDIS_FAILURES as failure:
            logger.warning("response %s: affinity not stored in Redis (%s)", response_id, failure)

    async def lookup(self, response_id: str) -> Owner | None:
        if self.degraded():
            return await self.fallback.lookup(response_id)
        try:
            raw = await self.redis.get(RESPONSE_KEY + response_id)
        except REDIS_FAILURES as failure:
            logger.warning("response %s: Redis could not be asked (%s)", response_id, failure)
            return await self.fallback.lookup(response_id)
        if raw is None:
            return None
        try:
            connector_id, model = json.loads(raw)
        except (ValueError, TypeError):
            return None
        if not isinstance(connector_id, str) or not isinstance(model, str):
            return None
        return Owner(connector_id, model)

    async def forget(self, response_id: str) -> None:
        await self.fallback.forget(response_id)
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(RESPONSE_KEY + response_id)
            pipe.zrem(RESPONSE_INDEX, response_id)
            await pipe.execute()
        except REDIS_FAILURES as failure:
            logger.warning("response %s: Redis could not forget it (%s)", response_id, failure)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def affinity_table(
    *,
    max_entries: int,
    ttl: float,
    redis: Any = None,
    degraded: Callable[[], bool] = lambda: False,
    clock: Callable[[], float] = time.monotonic,
) -> AffinityTable:
    """The table for this server: in Redis when the state is shared (`redis` given), else in
    memory (`clock` drives the memory table's expiry)."""
    if redis is None:
        return MemoryAffinity(max_entries=max_entries, ttl=ttl, clock=clock)
    return RedisAffinity(redis, max_entries=max_entries, ttl=ttl, degraded=degraded)


class ResponseTap:
    """Learns the id of the response one `POST /responses` creates, before the client can
    see it, and remembers which connector made it.

    The relay calls `start` at the answer's head, `feed` with each chunk before writing it
    and `end` before the final write, while `active`. A JSON answer that starts with its
    `"id"` (OpenAI's, vLLM's and llama.cpp's do) costs one regular expression on the first
    chunk; otherwise the body is kept (up to `JSON_SCAN_LIMIT`) and parsed once at its end.
    A stream is scanned only until its `response.created` event (within `SSE_SCAN_LIMIT`).
    """

    __slots__ = ("_buffer", "_connector_id", "_sse", "_table", "active", "model")

    def __init__(self, table: AffinityTable, model: str) -> None:
        self._table = table
        self.model = model
        self.active = False
        self._sse = False
        self._connector_id = ""
        self._buffer = bytearray()

    def start(self, connector_id: str, status: int, headers: Iterable[tuple[str, str]]) -> None:
        """The answer's head arrived from `connector_id`: scan it if it is a success."""
        self.active = 200 <= status < 300
        self._sse = is_event_stream(headers)
        self._connector_id = connector_id
        self._buffer.clear()

    async def feed(self, chunk: bytes) -> None:
        """Look at the next chunk (before the client gets it)."""
        buffer = self._buffer
        if self._sse:
            buffer += chunk
            found = _created_id(buffer)
            if found is not None or len(buffer) > SSE_SCAN_LIMIT:
                await self._found(found)
            return
        if not buffer:
            match = _LEADING_ID.match(chunk)
            if match is not None:
                await self._found(match.group(1).decode())
                return
        if len(buffer) + len(chunk) > JSON_SCAN_LIMIT:
            await self._found(None)
            return
        buffer += chunk

    async def end(self) -> None:
        """The answer is complete (before its last write): parse a JSON body kept so far."""
        found: str | None = None
        if not self._sse:
            found = _json_id(bytes(self._buffer))
        await self._found(found)

    async def _found(self, response_id: str | None) -> None:
        self.active = False
        self._buffer = bytearray()
        if response_id:
            await self._table.remember(response_id, Owner(self._connector_id, self.model))


def _json_id(body: bytes) -> str | None:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting too deep to parse
        return None
    return _valid_id(doc.get("id")) if isinstance(doc, dict) else None


def _created_id(buffer: bytearray) -> str | None:
    """The response id of a complete `response.created` event in `buffer`, if any."""
    text = bytes(buffer).replace(b"\r\n", b"\n")
    events = text.split(b"\n\n")
    for event in events[:-1]:  # the last part may be incomplete
        data = b"\n".join(
            line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
        )
        if not data:
            continue
        try:
            doc: Any = json.loads(data)
        except (ValueError, RecursionError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("response"), dict):
            found = _valid_id(doc["response"].get("id"))
            if found is not None:
                return found
    return None


def _valid_id(value: object) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= _ID_LIMIT else None


def response_not_found(response_id: str) -> web.Response:
    """404: no connector is known to hold this response."""
    return errors.api_error(
        404,
        f"No response with id {response_id[:_ID_LIMIT]!r} is known to this server.",
        "invalid_request_error",
        "response_not_found",
    )


def owner_gone(response_id: str, connector_id: str) -> web.Response:
    """404: the connector that created the response cannot take requests for it now."""
    return errors.api_error(
        404,
        f"Response {response_id[:_ID_LIMIT]!r} is stored on connector {connector_id!r}, "
        "which is not connected or does not serve the model asked for.",
        "invalid_request_error",
        "response_connector_gone",
    )


async def previous_owner(table: AffinityTable, doc: dict[str, Any]) -> tuple[str, Owner] | None:
    """The `previous_response_id` of a `POST /responses` body and its owner, when known."""
    previous = doc.get("previous_response_id")
    if not isinstance(previous, str) or not previous:
        return None
    owner = await table.lookup(previous)
    return (previous, owner) if owner is not None else None


class StoredResponses:
    """`GET`/`DELETE /responses/{id}`, `POST .../cancel`, `GET .../input_items`: relayed to
    the connector that created the response (queued like any request to it)."""

    def __init__(self, relay: OpenAIRelay, table: AffinityTable) -> None:
        self.relay = relay
        self.table = table

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Look the response up and relay the request to its connector."""
        started = time.perf_counter()
        relay = self.relay
        if relay.lifecycle.draining:
            return relay.reject("", "draining", errors.draining())
        response_id = request.match_info["response_id"]
        owner = await self.table.lookup(response_id)
        if owner is None:
            return relay.reject("", "response_not_found", response_not_found(response_id))
        if not relay.dispatcher.known(owner.model, owner.connector_id):
            return relay.reject(
                owner.model, "response_not_found", owner_gone(response_id, owner.connector_id)
            )
        settings = relay.settings
        try:
            body = await read_body(
                request,
                limit=settings.max_body_bytes,
                idle_timeout=settings.body_timeout,
                budget=relay.bodies,
            )
        except BodyRefused as refused:
            return relay.reject(owner.model, refused.reason, refused.response)
        try:
            response = await relay.forward(
                request,
                body,
                model=owner.model,
                stream=request.query.get("stream", "").lower() == "true",
                target=owner.connector_id,
                started=started,
            )
        finally:
            relay.bodies.give_back(len(body))
        if request.method == "DELETE" and 200 <= response.status < 300:
            await self.table.forget(response_id)
        return response
