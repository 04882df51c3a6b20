"""The OpenAI-compatible relay: `POST /api/v1/{chat/completions,completions,embeddings,responses}`.

Hot path: the body is read once and `json.loads`-ed once (model, stream); the answer is
written chunk by chunk as the connector sends it, an event stream up to its last complete
event (a break then ends it cleanly). See docs/routing.md and docs/errors.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from aiohttp import web

from infero.protocol.link import Head
from infero.server import errors
from infero.server.bodies import BodyBudget, BodyRefused, read_body
from infero.server.events import EventBus, Outcome, RejectReason, RequestFinished, RequestRejected
from infero.server.exchange import (
    FULL,
    Exchange,
    ExchangeFailed,
    is_event_stream,
    response_headers,
)
from infero.server.lifecycle import Lifecycle
from infero.server.middleware import REQUEST_ID_KEY
from infero.server.responses_affinity import (
    RESPONSES_PATH,
    AffinityTable,
    ResponseTap,
    owner_gone,
    previous_owner,
)
from infero.server.settings import ServerSettings
from infero.server.shared import Dispatcher, QueueFull, Route

logger = logging.getLogger(__name__)

ROUTES = ("/chat/completions", "/completions", "/embeddings", "/responses")
"""OpenAI routes relayed under `/api/v1`."""

TARGET_HEADER = "X-Infero-Worker"
"""Request header that pins a request to one connector id."""

OVERHEAD_HEADER = "X-Infero-Overhead-Ms"

MAX_ATTEMPTS = 3
"""Connectors tried for one request when they fail before answering."""

MAX_REFUSED = 3
"""Routing picks of one request a home may refuse as `full` (a stale view, not a failed
connector) before a further refusal counts as a failed connector."""

_FORWARDED = frozenset(
    {"content-type", "accept", "accept-language", "user-agent", "x-request-id", "openai-beta"}
)
"""Client headers passed to the backend (never Authorization)."""

_SSE_HEADERS = [("Content-Type", "text/event-stream")]
"""The head of an answer that begins with `: queued` comments (see `HttpClient.start`)."""
_ERROR_BODY_LIMIT = 64 * 1024
_DONE = b"[DONE]"
"""Data of the last event of an OpenAI event stream: SDKs close the connection as soon as they
read it."""
_EVENT_ENDS = (b"\n\n", b"\r\n\r\n", b"\r\r", b"\n\r")
"""What ends an SSE event: a blank line, that is two line ends (LF, CR or CRLF) in a row. The
usual one first; LF CR covers the mixed rest (the LF of a CRLF that may follow it then begins
the next piece)."""

HELD_LIMIT = 1024 * 1024
"""Bytes of an unfinished SSE event held back at most; a longer event is written as it comes."""


class Answer(Protocol):
    """The answer being written to a relay's client (once its head is decided)."""

    async def write(self, data: bytes, /) -> None: ...

    async def write_eof(self, data: bytes = b"", /) -> None: ...


class Client(Protocol):
    """Who a relayed request answers: the HTTP client of this instance (`HttpClient`), or
    the asking instance at the end of a peer stream (peerhome.py), without an aiohttp request
    and response built in process for it."""

    async def start(
        self,
        status: int,
        headers: list[tuple[str, str]],
        *,
        streamed: bool,
        sse: bool,
        overhead_ms: float,
    ) -> Answer:
        """Begin the answer (`streamed`: its head leaves at once; `sse`: an event stream;
        `overhead_ms`: the server's own time so far, shown to HTTP clients)."""
        ...

    def abort(self) -> None:
        """Drop the connection now (a client that accepts no bytes)."""

    def close(self) -> None:
        """End the connection after what was written (an answer broken midway)."""


class HttpClient:
    """The client of an HTTP request to this instance: the answer is an aiohttp response."""

    __slots__ = ("request", "response")

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None

    async def start(
        self,
        status: int,
        headers: list[tuple[str, str]],
        *,
        streamed: bool,
        sse: bool,
        overhead_ms: float,
    ) -> web.StreamResponse:
        response = _HeadSoon(status=status) if streamed else _HeadWithBody(status=status)
        out = response.headers
        for key, value in headers:
            out.add(key, value)
        if sse:
            out.setdefault("Cache-Control", "no-cache")
            out.setdefault("X-Accel-Buffering", "no")
        out[OVERHEAD_HEADER] = f"{overhead_ms:.3f}"
        await response.prepare(self.request)
        self.response = response
        return response

    def abort(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    def close(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.close()


class _HeadWithBody(web.StreamResponse):
    """A non-streamed answer: its head waits for the first body bytes (or the end), so that
    head, body and end usually leave in one write, as with aiohttp's `Response`."""

    _send_headers_immediately = False


class _HeadSoon(web.StreamResponse):
    """A streamed answer: its head leaves with the first body bytes when they are already
    here, else at the next turn of the event loop (the client has it at once either way)."""

    _send_headers_immediately = False

    async def _write_headers(self) -> None:
        await super()._write_headers()
        send = getattr(self._payload_writer, "send_headers", None)  # aiohttp 3.11 and later
        if send is not None:
            asyncio.get_running_loop().call_soon(_send_head, send)


def _send_head(send: Callable[[], None]) -> None:
    with contextlib.suppress(ConnectionError):  # the client left before its head: nobody to tell
        send()


class _Done(Exception):
    """Stop relaying: `response` is the error answer, None when the client has its answer."""

    def __init__(self, response: web.Response | None) -> None:
        self.response = response


class OpenAIRelay:
    """Handlers of the relayed OpenAI routes."""

    def __init__(
        self,
        settings: ServerSettings,
        *,
        dispatcher: Dispatcher,
        lifecycle: Lifecycle,
        events: EventBus,
        affinity: AffinityTable,
        bodies: BodyBudget,
    ) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.lifecycle = lifecycle
        self.events = events
        self.affinity = affinity
        """Which connector created each stored response (see responses_affinity.py)."""
        self.bodies = bodies
        """Bytes of request bodies held by requests in progress (shared with the MCP broker)."""

    def reject(self, model: str, reason: RejectReason, response: web.Response) -> web.Response:
        """Report a rejection and return its response."""
        self.events.request_rejected(RequestRejected(model=model, reason=reason))
        return response

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Validate, route and relay one request."""
        started = time.perf_counter()
        if self.lifecycle.draining:
            return self.reject("", "draining", errors.draining())
        if request.content_type != "application/json":
            return self.reject(
                "", "bad_request", errors.bad_request("Content-Type must be application/json.")
            )
        settings = self.settings
        try:
            body = await read_body(
                request,
                limit=settings.max_body_bytes,
                idle_timeout=settings.body_timeout,
                budget=self.bodies,
            )
        except BodyRefused as refused:
            return self.reject("", refused.reason, refused.response)
        try:
            return await self._checked(request, body, started)
        finally:
            self.bodies.give_back(len(body))

    async def _checked(
        self, request: web.Request, body: bytes | bytearray, started: float
    ) -> web.StreamResponse:
        """Parse, check and forward a request whose body is read."""
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nesting too deep to parse
            return self.reject("", "bad_request", errors.bad_request("Body is not valid JSON."))
        if not isinstance(doc, dict):
            return self.reject("", "bad_request", errors.bad_request("Body must be a JSON object."))
        model = doc.get("model")
        if not isinstance(model, str) or not model:
            return self.reject(
                "", "bad_request", errors.bad_request("`model` is required.", "missing_model")
            )
        target = request.headers.get(TARGET_HEADER) or None
        tap: ResponseTap | None = None
        if request.path == RESPONSES_PATH:
            tap = ResponseTap(self.affinity, model)
            previous = None if target else await previous_owner(self.affinity, doc)
            if previous is not None:
                target = previous[1].connector_id
                if not self.dispatcher.known(model, target):
                    return self.reject(model, "response_not_found", owner_gone(previous[0], target))
        if not self.dispatcher.known(model, target):
            return self.reject(model, "model_not_found", errors.model_not_found(model))
        stream = doc.get("stream") is True
        del doc  # the parsed body can be as large as the body: not held while relaying
        return await self.forward(
            request, body, model=model, stream=stream, target=target, started=started, tap=tap
        )

    async def forward(
        self,
        request: web.Request,
        body: bytes | bytearray,
        *,
        model: str,
        stream: bool,
        target: str | None,
        started: float,
        tap: ResponseTap | None = None,
    ) -> web.StreamResponse:
        """Route and relay a checked request of this instance's HTTP client (`target`: only
        that connector id)."""
        client = HttpClient(request)
        # The query goes on as the client sent it, byte for byte (`query_string` is decoded).
        _, mark, query = request.raw_path.partition("?")
        failed = await self.relay(
            client,
            method=request.method,
            path=request.path.removeprefix("/api/v1") + mark + query,
            headers=request.headers.items(),
            request_id=request.get(REQUEST_ID_KEY, ""),
            body=body,
            model=model,
            stream=stream,
            target=target,
            started=started,
            tap=tap,
        )
        return failed or client.response or web.Response()

    async def relay(
        self,
        client: Client,
        *,
        method: str,
        path: str,
        headers: Iterable[tuple[str, str]],
        request_id: str,
        body: bytes | bytearray,
        model: str,
        stream: bool,
        target: str | None,
        started: float,
        tap: ResponseTap | None = None,
        dispatcher: Dispatcher | None = None,
        may_wait: bool = True,
    ) -> web.Response | None:
        """Route and relay a checked request (`path`: under /api/v1, with its query;
        `headers`: the request's, of which the backend gets `_FORWARDED`) to `client`.
        Returns the error answer when nothing was sent yet, None when `client` got the answer
        (whole, or ended by an error event).
        `dispatcher`: instead of this relay's own, for this request; `may_wait` False: never
        queued, a 503 `full` when no connector has room at once."""
        self.lifecycle.enter()
        relay = _Relay(
            self,
            client,
            body,
            model,
            stream,
            target,
            started,
            tap,
            method=method,
            path=path,
            headers=[(k, v) for k, v in headers if k.lower() in _FORWARDED],
            request_id=request_id,
            dispatcher=dispatcher if dispatcher is not None else self.dispatcher,
            may_wait=may_wait,
        )
        try:
            return await relay.run()
        except ConnectionResetError:
            return None  # the client went away while we wrote to it: already counted
        finally:
            self.lifecycle.leave()


class _Relay:
    """One request's journey: queue, dispatch, failover, relay, accounting."""

    def __init__(
        self,
        api: OpenAIRelay,
        client: Client,
        body: bytes | bytearray,
        model: str,
        stream: bool,
        target: str | None,
        started: float,
        tap: ResponseTap | None,
        *,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        request_id: str,
        dispatcher: Dispatcher,
        may_wait: bool,
    ) -> None:
        self.api = api
        self.dispatcher = dispatcher
        self.client = client
        self.method = method
        self.path = path
        """Under /api/v1, with the query as the client sent it."""
        self.headers = headers
        """The request's headers the backend gets."""
        self.request_id = request_id
        self.body = body
        self.model = model
        self.stream = stream
        self.target = target
        self.started = started
        self.tap = tap
        """Learns the id of a response this `POST /responses` creates (None elsewhere)."""
        self.waited = 0.0
        """Seconds spent waiting on the queue or the connector (not server overhead).

        Measured with `time.perf_counter()` like `started`: uvloop's `loop.time()` is a cached
        millisecond clock, kept only for deadlines."""
        self.queue_wait = 0.0
        self.answer: Answer | None = None
        """The client's answer once its head is decided."""
        self.answer_status = 0
        self.answer_sse = False
        """The answer is an event stream (a break then ends it with an error event)."""
        self.written = b""
        """The last piece of the body the client's transport accepted. In an event stream it
        is whole events: all of `data: [DONE]`, even when that arrived in several chunks."""
        self.complete = False
        """The whole answer was handed to the client's transport (only the end may be missing)."""
        self.writing = 0.0
        """When the body write in progress began (loop clock), 0 between writes."""
        self.watchdog: asyncio.TimerHandle | None = None
        """The STALL_TIMEOUT timer, once the answer's body is being written."""
        self.tried: set[str] = set()
        """Connectors that failed this request before answering (at most MAX_ATTEMPTS)."""
        self.refused = False
        """The last connector answered `busy`: the request takes its place back at the head."""
        self.deadline = 0.0
        """When the queue wait ends (loop clock), kept when the request waits again after `busy`."""
        self.last_failure: ExchangeFailed | None = None
        self.picks_refused = 0
        """Routing picks refused as `full` by their home (the route's view was stale)."""
        self.may_wait = may_wait
        """False: answer `full` where the request would join a queue (another instance's
        routing pick, which that instance routes again)."""

    async def run(self) -> web.Response | None:
        try:
            while len(self.tried) < MAX_ATTEMPTS:
                route = await self._acquire()
                if await self._attempt(route):
                    return None
            raise _Done(await self._all_failed())
        except _Done as done:
            return done.response
        finally:
            if self.watchdog is not None:
                self.watchdog.cancel()

    # ---- routing ------------------------------------------------------------------------

    async def _acquire(self) -> Route:
        dispatcher = self.dispatcher
        exclude = frozenset(self.tried)
        first, self.refused = self.refused, False
        if not first:
            route = await dispatcher.acquire_now(self.model, exclude, self.target)
            if route is not None:
                return route
            if self.tried and not dispatcher.serving_beyond(self.model, exclude, self.target):
                raise _Done(await self._all_failed())
        if not self.may_wait:  # a pick of another instance's stale view: it routes again
            raise _Done(await self._fail(503, f"No free slot for {self.model!r} now.", FULL))
        try:
            ticket = await dispatcher.enqueue(self.model, exclude, self.target, first=first)
        except QueueFull:
            self.api.events.request_rejected(RequestRejected(model=self.model, reason="queue_full"))
            raise _Done(
                await self._fail(
                    429, f"Too many requests waiting for {self.model!r}.", "queue_full", retry=True
                )
            ) from None
        settings = self.api.settings
        loop = asyncio.get_running_loop()
        entered = time.perf_counter()
        now = loop.time()
        if not (first and self.deadline):
            self.deadline = now + settings.queue_timeout
        deadline = self.deadline
        # A stream's status stays open (errors keep their real status) until a wait is long
        # enough to need headers and `: queued` comments to keep proxies from cutting it.
        notice_at = now + settings.queue_headers_after if self.stream else math.inf
        shown = 0
        try:
            while True:
                now = loop.time()
                if now >= notice_at:
                    position = await ticket.position()
                    if position and (position != shown or self.answer is None):
                        await self._comment(f"queued position={position}")
                        shown = position
                remaining = deadline - now
                if remaining <= 0:
                    break
                step = settings.keepalive_interval if now >= notice_at else notice_at - now
                try:
                    async with asyncio.timeout(min(remaining, step)):
                        route = await ticket.wait()
                except TimeoutError:
                    if self.answer is not None and loop.time() < deadline:
                        position = await ticket.position()
                        if position:
                            await self._comment(f"queued position={position}")
                    continue
                if route is not None:
                    return route
            self.api.events.request_rejected(
                RequestRejected(model=self.model, reason="queue_timeout")
            )
            raise _Done(
                await self._fail(
                    503,
                    f"No capacity for {self.model!r} within the queue timeout.",
                    "queue_timeout",
                    retry=True,
                )
            )
        finally:
            await ticket.leave()
            spent = time.perf_counter() - entered
            self.waited += spent
            self.queue_wait += spent

    # ---- one connector --------------------------------------------------------------------

    async def _attempt(self, route: Route) -> bool:
        """Relay on `route`; False when it failed before answering and another may try."""
        api = self.api
        dispatched = time.perf_counter()
        ttft: float | None = None
        outcome: Outcome = "error"
        error = ""
        status = 0
        exchange: Exchange | None = None
        try:
            exchange = await route.open_exchange(
                method=self.method,
                path=self.path,
                headers=self.headers,
                body=self.body,
                stream=self.stream,
                model=self.model,
                request_id=self.request_id,
            )
            head = await self._await_head(exchange)
            status = head.status
            if self.tap is not None:
                self.tap.start(route.connector_id, head.status, head.headers)
            answer = await self._start_response(head)
            ttft, outcome, error = await self._relay_body(exchange, answer, head, dispatched)
            return True
        except ExchangeFailed as failure:
            # Here nothing of an answer reached the client (failures after the head end in
            # `_relay_body`): only `: queued` or `: keepalive` comments may have, so another
            # connector may still answer on the same stream.
            error = failure.message or failure.code
            if failure.code == FULL and self.picks_refused < MAX_REFUSED:
                self.picks_refused += 1  # a stale view: route again, the connector did not fail
                return False
            if failure.code == "busy" and route.waits_when_busy:
                # The connector has no room after all (the server's count lagged behind it):
                # wait for a slot again, at the head; the route neither frees nor counts it yet.
                self.refused = True
                logger.info(
                    "request %s: connector %s is busy, waiting for a slot again",
                    self.request_id,
                    route.connector_id,
                )
                return False
            if failure.retryable:
                self.tried.add(route.connector_id)
                self.last_failure = failure
                logger.warning(
                    "request %s: connector %s failed before answering (%s), trying another",
                    self.request_id,
                    route.connector_id,
                    failure.code,
                )
                return False
            if failure.code == "first_byte_timeout":
                api.events.request_rejected(
                    RequestRejected(model=self.model, reason="first_byte_timeout")
                )
                raise _Done(
                    await self._fail(504, "The connector did not answer in time.", "timeout")
                ) from None
            raise _Done(
                await self._fail(502, _upstream_message(failure), "upstream_error")
            ) from None
        except (asyncio.CancelledError, ConnectionResetError):
            # A client that leaves once it has the whole answer (SDKs close right after
            # `[DONE]`) got what it asked for; one that leaves earlier cancelled it.
            if self.complete or _ends_with_done(self.written):
                outcome, error = "success", ""
            else:
                outcome, error = "cancelled", "client disconnected"
            raise
        finally:
            duration = time.perf_counter() - dispatched
            usage = exchange.end.usage if exchange is not None and exchange.end else None
            await route.finish(
                RequestFinished(
                    model=self.model,
                    worker_id=route.connector_id,
                    outcome=outcome,
                    status=status,
                    duration_s=duration,
                    ttft_s=ttft,
                    queue_wait_s=self.queue_wait,
                    tokens_in=usage.prompt_tokens if usage else 0,
                    tokens_out=usage.completion_tokens if usage else 0,
                    error=error,
                )
            )

    async def _await_head(self, exchange: Exchange) -> Head:
        settings = self.api.settings
        loop = asyncio.get_running_loop()
        entered = time.perf_counter()
        deadline = loop.time() + settings.first_byte_timeout
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise ExchangeFailed("first_byte_timeout", "no answer in time")
                step = min(remaining, settings.keepalive_interval) if self.stream else remaining
                try:
                    return await exchange.head(step)
                except TimeoutError:
                    if self.stream and loop.time() < deadline:
                        await self._comment("keepalive")
        finally:
            self.waited += time.perf_counter() - entered

    async def _start_response(self, head: Head) -> Answer:
        if self.answer is not None:
            return self.answer
        sse = is_event_stream(head.headers)
        return await self._start(head.status, response_headers(head.headers), sse=sse)

    async def _start(self, status: int, headers: list[tuple[str, str]], *, sse: bool) -> Answer:
        overhead = (time.perf_counter() - self.started - self.waited) * 1000
        streamed = self.stream or sse
        answer = await self.client.start(
            status, headers, streamed=streamed, sse=sse, overhead_ms=overhead
        )
        self.answer = answer
        self.answer_status = status
        self.answer_sse = sse
        return answer

    async def _relay_body(
        self, exchange: Exchange, answer: Answer, head: Head, dispatched: float
    ) -> tuple[float | None, Outcome, str]:
        idle = self.api.settings.request_timeout
        converted = head.status >= 400 and self.answer_status < 400
        tap = self.tap
        loop = asyncio.get_running_loop()
        if self.watchdog is None:
            self.watchdog = loop.call_later(self.api.settings.stall_timeout, self._watch_writes)
        ttft: float | None = None
        collected = bytearray()
        events = not converted and self._ends_with_event()
        # An event stream's unfinished last event waits here until it is complete (or the
        # answer ends cleanly): a break never leaves a fragment before the error event.
        held = b""
        try:
            while True:
                try:
                    chunk = await exchange.chunk(idle)
                except TimeoutError:
                    raise ExchangeFailed("idle_timeout", "connector went silent") from None
                if chunk is None:
                    break
                size = len(chunk)
                if ttft is None:
                    ttft = time.perf_counter() - dispatched
                if tap is not None and tap.active:
                    await tap.feed(chunk)
                if converted:
                    if len(collected) < _ERROR_BODY_LIMIT:
                        collected += chunk
                elif exchange.at_clean_end():
                    # The whole rest of the answer is here: body and end in one write.
                    if tap is not None and tap.active:
                        await tap.end()
                    self.writing = loop.time()
                    await answer.write_eof(held + chunk if held else chunk)
                    return ttft, "success", ""
                else:
                    if events and (held or not chunk.endswith(_EVENT_ENDS)):
                        chunk, held = _whole_events(held, chunk)
                    if chunk:
                        self.writing = loop.time()
                        await answer.write(chunk)
                        self.writing = 0.0
                        self.written = chunk
                await exchange.consumed(size)
        except ExchangeFailed as failure:
            await self._broken(answer, failure)
            return ttft, "error", failure.message or failure.code
        if converted:
            await answer.write(_error_event_from(head.status, bytes(collected)))
            await answer.write_eof()
            return ttft, "error", f"backend status {head.status}"
        if tap is not None and tap.active:
            await tap.end()
        self.complete = True
        await answer.write_eof(held)
        return ttft, "success", ""

    def _watch_writes(self) -> None:
        """STALL_TIMEOUT: a client that accepts no bytes of its answer for that long loses its
        request. One timer per request, re-armed only when it fires: per chunk, the relay only
        stamps when its write began (`writing`, 0 once done). Aborting the connection ends the
        stuck write, and the relay then cancels the exchange (its slot is free once the
        connector ended it)."""
        loop = asyncio.get_running_loop()
        stall = self.api.settings.stall_timeout
        began = self.writing
        now = loop.time()
        if began and now - began >= stall:
            logger.info(
                "request %s: the client accepted no bytes for %ss, cancelling it",
                self.request_id,
                stall,
            )
            self.client.abort()
            return
        self.watchdog = loop.call_at((began or now) + stall, self._watch_writes)

    def _ends_with_event(self) -> bool:
        """Whether a break of this answer ends with an SSE error event (else the connection
        is cut): a stream asked for, or an event stream."""
        return self.stream or self.answer_sse

    async def _broken(self, answer: Answer, failure: ExchangeFailed) -> None:
        """The answer broke after it started: SSE error event, or cut the connection."""
        logger.warning(
            "request %s: answer broke after it started (%s: %s)",
            self.request_id,
            failure.code,
            failure.message,
        )
        if self._ends_with_event():
            await answer.write(
                errors.sse_error_event(_upstream_message(failure), "server_error", "upstream_error")
            )
            await answer.write_eof()
            return
        self.client.close()

    # ---- client-facing helpers -------------------------------------------------------------

    async def _all_failed(self) -> web.Response | None:
        """502: every connector tried failed before answering."""
        self.api.events.request_rejected(RequestRejected(model=self.model, reason="upstream_error"))
        return await self._fail(502, _upstream_message(self.last_failure), "upstream_error")

    async def _comment(self, text: str) -> None:
        answer = self.answer
        if answer is None:  # the wait is long enough for an event stream of comments
            answer = await self._start(200, _SSE_HEADERS, sse=True)
        await answer.write(f": {text}\n\n".encode())

    async def _fail(
        self, status: int, message: str, code: str, *, retry: bool = False
    ) -> web.Response | None:
        """The error answer: JSON with `status` (returned), or a final SSE error event once
        streaming (written; None returned)."""
        type_ = "server_error"
        if self.answer is not None:
            await self.answer.write(errors.sse_error_event(message, type_, code))
            await self.answer.write_eof()
            return None
        if retry:
            return errors.retry_later(status, message, code)
        return errors.api_error(status, message, type_, code)


def _whole_events(held: bytes, chunk: bytes) -> tuple[bytes, bytes]:
    """`held` then `chunk` of an event stream, split into the complete events to write now and
    the unfinished event to hold back (unless it is `HELD_LIMIT` bytes or more: then written
    too). The caller skips it for a chunk that ends an event with nothing held (the usual
    case: no scan, no copy)."""
    start = 0
    if held:
        start = max(len(held) - 3, 0)  # a blank line may begin in the held bytes
        chunk = held + chunk
    if chunk.endswith(_EVENT_ENDS):
        return chunk, b""
    end = 0
    for blank in _EVENT_ENDS:
        found = chunk.rfind(blank, max(start, end - 3))  # only past the last end found
        if found >= 0:
            end = max(end, found + len(blank))
    if len(chunk) - end >= HELD_LIMIT:
        return chunk, b""
    return chunk[:end], chunk[end:]


def _ends_with_done(written: bytes) -> bool:
    """Whether the last piece written ends an OpenAI event stream (`[DONE]` and its blank
    line, with any of the SSE spec's line ends)."""
    return written.endswith(_EVENT_ENDS) and written.rstrip(b"\r\n").endswith(_DONE)


def _upstream_message(failure: ExchangeFailed | None) -> str:
    if failure is None:
        return "No connector could serve the request."
    return f"Upstream failure ({failure.code}): {failure.message}".rstrip(": ")


def _error_event_from(status: int, body: bytes) -> bytes:
    """Turn a backend error answer into a final SSE error event (stream already started)."""
    detail: Any = None
    try:
        detail = json.loads(body).get("error")
    except (ValueError, RecursionError, AttributeError):
        detail = None
    if isinstance(detail, dict) and isinstance(detail.get("message"), str):
        payload = {"error": {**detail, "code": detail.get("code") or str(status)}}
        return b"data: " + json.dumps(payload).encode() + b"\n\n"
    text = body.decode("utf-8", "replace")[:2000] or f"backend answered {status}"
    return errors.sse_error_event(text, "upstream_error", str(status))
