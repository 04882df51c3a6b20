"""`/api/mcp/id/{id}`: MCP Streamable HTTP towards clients, relayed over a relay's link.

Each POST, GET or DELETE is one HTTP exchange on the relay's link (the same machinery as
the OpenAI routes): method, MCP headers and body go to the relay, which performs them
against its provider; status, headers and body (JSON or SSE) stream back untouched. The
broker adds access control, JSON-RPC checks of POST bodies, limits, and bookkeeping.
Broker errors are JSON-RPC error responses whose `error.data.mcp` is a stable code
(docs/mcp.md has the table). With REDIS_ADDR, a relay linked to another instance is reached
through that instance (`forward.py`): the caller is checked here, the call is served there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

from infero.protocol import mcp as pm
from infero.protocol.link import Head
from infero.server import errors
from infero.server.auth import KeyRing, bearer_token
from infero.server.bodies import BodyBudget, BodyRefused, Replies, read_body
from infero.server.events import RejectReason
from infero.server.exchange import (
    Exchange,
    ExchangeFailed,
    is_event_stream,
    response_headers,
    write_body,
)
from infero.server.lifecycle import Lifecycle
from infero.server.mcp.access import caller_allowed, may_learn_relays, may_reach_a_relay
from infero.server.mcp.fleet import RemoteRelay
from infero.server.mcp.forward import forward
from infero.server.mcp.metrics import CallOutcome, McpMetrics
from infero.server.mcp.relays import Relay
from infero.server.mcp.resource import metadata_url
from infero.server.middleware import REQUEST_ID_KEY
from infero.server.shared import RelayTable

logger = logging.getLogger(__name__)

SESSION_HEADER = "Mcp-Session-Id"

FORWARDED = frozenset({"content-type", "accept", "last-event-id", "user-agent"})
"""Client headers relayed to the provider besides every `Mcp-*` header. Authorization
(the infero key or relay token), cookies, Origin and Host never leave the server."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Broker limits (from BROKER_* settings, and BODY_TIMEOUT)."""

    max_req_bytes: int
    body_timeout: float
    max_resp_bytes: int
    max_concurrency: int
    call_timeout: float


class _TooLarge(ExchangeFailed):
    def __init__(self) -> None:
        super().__init__("too_large", "the MCP answer exceeds BROKER_MAX_RESP_BYTES")


def _forwarded_headers(request: web.Request) -> list[tuple[str, str]]:
    return [
        (k, v)
        for k, v in request.headers.items()
        if k.lower() in FORWARDED or k.lower().startswith("mcp-")
    ]


def _error(
    status: int,
    code: pm.McpCode,
    message: str,
    *,
    request_id: pm.RequestId | None = None,
    rpc_code: int = pm.SERVER_ERROR,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.Response(
        status=status,
        body=pm.error_body(code, message, request_id=request_id, rpc_code=rpc_code),
        content_type="application/json",
        headers=headers,
    )


RETRY_AFTER = "5"
LISTEN = "subscriptions/listen"

BODY_REPLIES = Replies(
    too_large=lambda _: _error(
        413, "MCP_LIMIT_EXCEEDED", "the request exceeds BROKER_MAX_REQ_BYTES"
    ),
    overloaded=lambda: _error(
        503,
        "MCP_LIMIT_EXCEEDED",
        "the server holds too many request bodies right now (MAX_HELD_BODY_BYTES)",
        headers={"Retry-After": str(errors.RETRY_AFTER_S)},
    ),
    timed_out=lambda: _error(
        408,
        "MCP_TIMEOUT",
        "the request body stopped arriving for BODY_TIMEOUT",
        headers={"Connection": "close"},
    ),
    bad_request=lambda message: _error(400, "MCP_SCHEMA_ERROR", message, rpc_code=pm.PARSE_ERROR),
)
"""The answers to a refused POST body (docs/mcp.md), as JSON-RPC errors."""

BODY_OUTCOMES: dict[RejectReason, CallOutcome] = {
    "too_large": "too_large",
    "body_timeout": "timeout",
}
"""How a refused body counts in `infero_mcp_calls_total` (others: `rejected`)."""

UPSTREAM_FAILURES = {
    "backend_unreachable": "the MCP provider cannot be reached",
    "backend_error": "the MCP provider's answer broke off",
}
"""Relay errors about the provider itself (502 MCP_UPSTREAM_ERROR), and what the client reads."""

LOCAL_FAILURES = frozenset({"cancelled", "busy", "draining"})
"""Failures that say nothing wrong about the relay or its provider (not its `last_error`)."""


def _unavailable(message: str, *, request_id: pm.RequestId | None = None) -> web.Response:
    return _error(
        503,
        "MCP_PROVIDER_UNAVAILABLE",
        message,
        request_id=request_id,
        headers={"Retry-After": RETRY_AFTER},
    )


def _failure_reply(failure: ExchangeFailed, request_id: pm.RequestId | None) -> web.Response:
    """The client's answer when a call fails before the provider's answer started."""
    if failure.code in ("first_byte_timeout", "idle_timeout", "timeout"):
        return _error(
            504, "MCP_TIMEOUT", "the MCP provider did not answer in time", request_id=request_id
        )
    if failure.code == "busy":
        return _error(
            429,
            "MCP_LIMIT_EXCEEDED",
            "the relay is running as many calls as it allows",
            request_id=request_id,
            headers={"Retry-After": "1"},
        )
    if failure.code in UPSTREAM_FAILURES:
        return _error(
            502,
            "MCP_UPSTREAM_ERROR",
            UPSTREAM_FAILURES[failure.code],
            request_id=request_id,
            headers={"Retry-After": RETRY_AFTER},
        )
    if failure.code == "draining":
        return _unavailable("the MCP relay is draining", request_id=request_id)
    return _unavailable("the MCP relay went away during the call", request_id=request_id)


def _broken_code(failure: ExchangeFailed) -> tuple[pm.McpCode, str]:
    if isinstance(failure, _TooLarge):
        return "MCP_LIMIT_EXCEEDED", failure.message
    if failure.code in ("first_byte_timeout", "idle_timeout", "timeout"):
        return "MCP_TIMEOUT", "the MCP provider stopped answering in time"
    if failure.code in UPSTREAM_FAILURES:
        return "MCP_UPSTREAM_ERROR", UPSTREAM_FAILURES[failure.code]
    return "MCP_PROVIDER_UNAVAILABLE", "the MCP relay went away during the call"


def _outcome(failure: ExchangeFailed) -> CallOutcome:
    if isinstance(failure, _TooLarge):
        return "too_large"
    if "timeout" in failure.code:
        return "timeout"
    return "error"


def unauthorized(request: web.Request, token: str | None) -> web.Response:
    """401 with a Bearer challenge pointing MCP clients at the resource metadata."""
    challenge = f'Bearer realm="infero", resource_metadata="{metadata_url(request)}"'
    if token is not None:
        challenge += ', error="invalid_token"'
    return _error(
        401,
        "MCP_UNAUTHORIZED",
        "an API key is expected: send Authorization: Bearer <an API key from the operator of "
        "this server, or the relay's AUTH_TOKEN>; this server issues no OAuth tokens",
        headers={"WWW-Authenticate": challenge},
    )


class Broker:
    """Serves `/api/mcp/id/{id}` for every relay in `relays`."""

    def __init__(
        self,
        relays: RelayTable,
        *,
        keyring: KeyRing,
        lifecycle: Lifecycle,
        limits: Limits,
        bodies: BodyBudget,
        metrics: Callable[[], McpMetrics | None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.relays = relays
        self.keyring = keyring
        self.lifecycle = lifecycle
        self.limits = limits
        self.bodies = bodies
        """Bytes of request bodies held at once, shared with the OpenAI routes."""
        self._metrics = metrics
        self._clock = clock

    def _count(self, relay: str, method: str, outcome: CallOutcome, duration: float | None) -> None:
        metrics = self._metrics()
        if metrics is not None:
            metrics.call(relay, method, outcome, duration)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Entry point for POST, GET and DELETE."""
        return await self._serve(request, request.match_info["id"], from_peer=False)

    async def handle_forwarded(self, request: web.Request, relay_id: str) -> web.StreamResponse:
        """An exchange another instance forwarded (it checked the caller's access)."""
        return await self._serve(request, relay_id, from_peer=True)

    async def _serve(
        self, request: web.Request, relay_id: str, *, from_peer: bool
    ) -> web.StreamResponse:
        token = bearer_token(request)
        if not from_peer and not may_reach_a_relay(
            token, keyring=self.keyring, knows_token=self.relays.knows_token
        ):
            if self.relays.lookup(relay_id) is not None:  # counted as before for a relay here
                self._count(relay_id, "", "unauthorized", None)
            return unauthorized(request, token)  # before any lookup that could reach Redis
        relay = self.relays.lookup(relay_id)
        if relay is None:
            remote = None if from_peer else await self.relays.locate(relay_id)
            if remote is not None:
                return await self._remote(request, remote, token)
            if not from_peer and not may_learn_relays(token, self.keyring):
                return unauthorized(request, token)
            return _unavailable("no MCP relay is connected with this id")
        allowed = from_peer or caller_allowed(
            token, keyring=self.keyring, relay_digest=relay.auth_digest
        )
        if not allowed:
            self._count(relay.id, "", "unauthorized", None)
            return unauthorized(request, token)
        if relay.status == "not_ready":
            return _unavailable("the MCP relay cannot reach its MCP provider")
        closing = self._closing(relay)
        if closing and request.method == "GET":
            return _unavailable(closing)
        if request.method == "POST":
            return await self._with_body(
                request, relay.id, lambda body: self._call(request, relay, closing, body)
            )
        return await self._other(request, relay)

    def _closing(self, relay: Relay) -> str | None:
        """Why new calls are refused now (server or relay draining), else None.

        Only new calls and listening streams are refused: notifications, answers to
        server-initiated requests and DELETE still pass, so calls in flight can finish
        (a tool waiting for a sampling answer, a client cancelling its call).
        """
        if self.lifecycle.draining:
            return "the server is draining"
        if relay.status == "draining":
            return "the MCP relay is draining"
        return None

    async def _remote(
        self, request: web.Request, remote: RemoteRelay, token: str | None
    ) -> web.StreamResponse:
        """A relay linked to another instance: check the caller here, forward the exchange."""
        if not caller_allowed(token, keyring=self.keyring, relay_digest=remote.auth_digest):
            self._count(remote.id, "", "unauthorized", None)
            return unauthorized(request, token)
        closing = "the server is draining" if self.lifecycle.draining else None
        headers = _forwarded_headers(request)
        if request.method != "POST":
            if closing and request.method == "GET":
                return _unavailable(closing)
            return await forward(request, remote, b"", headers, [])
        return await self._with_body(
            request,
            remote.id,
            lambda body: self._forward_post(request, remote, body, headers, closing),
        )

    async def _forward_post(
        self,
        request: web.Request,
        remote: RemoteRelay,
        body: bytes | bytearray,
        headers: list[tuple[str, str]],
        closing: str | None,
    ) -> web.StreamResponse:
        """Check the JSON-RPC envelope and forward the POST to the relay's home."""
        envelope = self._envelope(remote.id, body)
        if isinstance(envelope, web.Response):
            return envelope
        request_ids = [rid for rid, _ in envelope.requests]
        if envelope.is_call and closing:
            return _unavailable(closing, request_id=request_ids[0] if request_ids else None)
        is_call = envelope.is_call and [m for _, m in envelope.requests] != [LISTEN]
        if is_call:
            self.lifecycle.enter()
        try:
            return await forward(request, remote, body, headers, request_ids)
        finally:
            if is_call:
                self.lifecycle.leave()

    async def _with_body(
        self,
        request: web.Request,
        relay_id: str,
        serve: Callable[[bytes | bytearray], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Read a POST body within BROKER_MAX_REQ_BYTES, BODY_TIMEOUT and the server's share of
        MAX_HELD_BODY_BYTES, and `serve` it; the body is held in that share until `serve` ends.
        A refused body is counted and answered here."""
        try:
            body = await read_body(
                request,
                limit=self.limits.max_req_bytes,
                idle_timeout=self.limits.body_timeout,
                budget=self.bodies,
                replies=BODY_REPLIES,
            )
        except BodyRefused as refused:
            self._count(relay_id, "", BODY_OUTCOMES.get(refused.reason, "rejected"), None)
            return refused.response
        try:
            return await serve(body)
        finally:
            self.bodies.give_back(len(body))

    def _envelope(self, relay_id: str, body: bytes | bytearray) -> pm.Envelope | web.Response:
        """The checked JSON-RPC envelope of a POST body, or the 400 answer."""
        try:
            return pm.parse_envelope(body)
        except pm.EnvelopeError as exc:
            self._count(relay_id, "", "rejected", None)
            return _error(
                400,
                "MCP_SCHEMA_ERROR",
                str(exc),
                request_id=pm.request_id_of(body),
                rpc_code=exc.code,
            )

    async def _call(
        self, request: web.Request, relay: Relay, closing: str | None, body: bytes | bytearray
    ) -> web.StreamResponse:
        """Check the JSON-RPC envelope and relay the call."""
        envelope = self._envelope(relay.id, body)
        if isinstance(envelope, web.Response):
            return envelope
        for _, method in envelope.requests:
            relay.count(method)
        for method in envelope.notifications:
            relay.count(method)
        method = envelope.first_method
        first_id = envelope.requests[0][0] if envelope.requests else None
        session_id = request.headers.get(SESSION_HEADER)
        if envelope.is_call and closing:
            return _unavailable(closing, request_id=first_id)
        # A 2026-07-28 `subscriptions/listen` is a listening stream, like GET: no call limit,
        # no call timeout, no size limit.
        listening = [m for _, m in envelope.requests] == [LISTEN]
        is_call = envelope.is_call and not listening
        if is_call:
            limit = self.relays.limit(relay, self.limits.max_concurrency)
            if not self.relays.start_call(relay, session_id, limit):
                self._count(relay.id, method, "rejected", None)
                return _error(
                    429,
                    "MCP_LIMIT_EXCEEDED",
                    f"too many concurrent calls on this relay (limit {limit})",
                    request_id=first_id,
                    headers={"Retry-After": "1"},
                )
            self.lifecycle.enter()
        started = self._clock()
        ok = False
        try:
            response, outcome = await self._exchange(
                request,
                relay,
                body,
                method=method,
                request_ids=[rid for rid, _ in envelope.requests],
                idle_timeout=None if listening else self.limits.call_timeout,
                max_bytes=None if listening else self.limits.max_resp_bytes,
            )
            ok = outcome == "success"
            self._count(relay.id, method, outcome, self._clock() - started)
            return response
        except asyncio.CancelledError:
            self._count(relay.id, method, "cancelled", self._clock() - started)
            raise
        finally:
            if is_call:
                self.relays.finish_call(relay, session_id, ok=ok)
                self.lifecycle.leave()

    async def _other(self, request: web.Request, relay: Relay) -> web.StreamResponse:
        """GET (the listening stream, long-lived, no size limit) and DELETE (ends a session)."""
        label = "listen" if request.method == "GET" else "delete"
        response, outcome = await self._exchange(
            request,
            relay,
            b"",
            method=label,
            request_ids=[],
            idle_timeout=None if request.method == "GET" else self.limits.call_timeout,
            max_bytes=None,
        )
        self._count(relay.id, label, outcome, None)
        return response

    async def _exchange(
        self,
        request: web.Request,
        relay: Relay,
        body: bytes | bytearray,
        *,
        method: str,
        request_ids: list[pm.RequestId],
        idle_timeout: float | None,
        max_bytes: int | None,
    ) -> tuple[web.StreamResponse, CallOutcome]:
        """Relay one exchange; the response sent and how it ended."""
        session_id = request.headers.get(SESSION_HEADER)
        first_id = request_ids[0] if request_ids else None
        path = "/" + (f"?{request.query_string}" if request.query_string else "")
        try:
            exchange = await self.relays.open_exchange(
                relay,
                method=request.method,
                path=path,
                headers=_forwarded_headers(request),
                body=body,
                stream=True,
                model=method,
                request_id=request.get(REQUEST_ID_KEY, ""),
            )
        except ExchangeFailed as failure:
            self._failed(relay, failure)
            return _failure_reply(failure, first_id), "error"
        try:
            return await self._answer(
                request,
                relay,
                exchange,
                method=method,
                session_id=session_id,
                request_ids=request_ids,
                idle_timeout=idle_timeout,
                max_bytes=max_bytes,
            )
        finally:
            await exchange.cancel()
            self.relays.forget(relay, exchange)

    async def _answer(
        self,
        request: web.Request,
        relay: Relay,
        exchange: Exchange,
        *,
        method: str,
        session_id: str | None,
        request_ids: list[pm.RequestId],
        idle_timeout: float | None,
        max_bytes: int | None,
    ) -> tuple[web.StreamResponse, CallOutcome]:
        first_id = request_ids[0] if request_ids else None
        try:
            head = await exchange.head(self.limits.call_timeout)
        except TimeoutError:
            timeout = ExchangeFailed("first_byte_timeout", "")
            self._failed(relay, timeout)
            return _failure_reply(timeout, first_id), "timeout"
        except ExchangeFailed as failure:
            self._failed(relay, failure)
            if failure.code != "cancelled":
                logger.warning("mcp relay %s: %s failed: %s", relay.id, method, failure.message)
            return _failure_reply(failure, first_id), _outcome(failure)
        self._track_session(relay, head.status, head.headers, session_id, method, request.method)
        sse = is_event_stream(head.headers)
        if not sse:
            return await self._json_answer(relay, exchange, head, method, first_id, max_bytes)
        response = web.StreamResponse(status=head.status)
        for key, value in response_headers(head.headers):
            response.headers.add(key, value)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
        await response.prepare(request)
        sent = 0
        tail = b""

        def count(chunk: bytes) -> None:
            nonlocal sent, tail
            sent += len(chunk)
            if max_bytes is not None and sent > max_bytes:
                raise _TooLarge()
            tail = (tail + chunk[-4:])[-4:]

        try:
            await write_body(response, exchange, idle_timeout=idle_timeout, on_chunk=count)
        except ExchangeFailed as failure:
            self._failed(relay, failure)
            code, message = _broken_code(failure)
            if request_ids:
                logger.warning("mcp relay %s: %s broke off: %s", relay.id, method, failure.message)
                events = pm.sse_error_events(code, message, request_ids)
                await response.write(pm.close_partial_event(tail) + events)
            else:
                logger.info("mcp relay %s: %s stream ended: %s", relay.id, method, failure.message)
            return response, _outcome(failure)
        await response.write_eof()
        return response, "success" if head.status < 400 else "error"

    async def _json_answer(
        self,
        relay: Relay,
        exchange: Exchange,
        head: Head,
        method: str,
        first_id: pm.RequestId | None,
        max_bytes: int | None,
    ) -> tuple[web.StreamResponse, CallOutcome]:
        """A non-SSE answer is one message: read it whole, so any failure is a clean error."""
        body = bytearray()
        try:
            while True:
                try:
                    chunk = await exchange.chunk(self.limits.call_timeout)
                except TimeoutError:
                    raise ExchangeFailed("idle_timeout", "no data in time") from None
                if chunk is None:
                    break
                body += chunk
                if max_bytes is not None and len(body) > max_bytes:
                    raise _TooLarge()
                await exchange.consumed(len(chunk))
        except ExchangeFailed as failure:
            logger.warning("mcp relay %s: %s broke off: %s", relay.id, method, failure.message)
            self._failed(relay, failure)
            if isinstance(failure, _TooLarge):
                reply = _error(502, "MCP_LIMIT_EXCEEDED", failure.message, request_id=first_id)
                return reply, "too_large"
            return _failure_reply(failure, first_id), _outcome(failure)
        headers = CIMultiDict(response_headers(head.headers))
        response = web.Response(status=head.status, body=bytes(body), headers=headers)
        return response, "success" if head.status < 400 else "error"

    def _failed(self, relay: Relay, failure: ExchangeFailed) -> None:
        """Keep a relay- or provider-side failure as the relay's `last_error`."""
        if failure.code not in LOCAL_FAILURES and not isinstance(failure, _TooLarge):
            code, message = _broken_code(failure)
            self.relays.call_failed(relay, f"{code}: {message}")

    def _track_session(
        self,
        relay: Relay,
        status: int,
        headers: list[tuple[str, str]],
        asked: str | None,
        method: str,
        http_method: str,
    ) -> None:
        issued = next((v for k, v in headers if k.lower() == "mcp-session-id"), None)
        if asked and (status == 404 or (http_method == "DELETE" and status < 300)):
            self.relays.session_ended(relay, asked)
            return
        session = issued or asked
        if session and status < 400 and len(session) <= 256:
            self.relays.session_seen(relay, session, method if http_method == "POST" else "")
