"""The instances' internal channel: a request for a connector linked to another instance.

`PeerRoute` sends the request over HTTP to the connector's home instance (the client's
method, `POST` or for stored responses `GET`/`DELETE`, to
`{INSTANCE_ADDR}/api/peer/v1/relay/<path>`, key in `X-Infero-Peer-Key`) and feeds an
`Exchange` from the streamed answer, byte for byte, with flow control. The home admits it with
its own scheduler, so `max_concurrency` stays exact. The head of the fleet-wide queue
(fleetqueue.py) first reserves a slot at the home (`/queue/reserve`), then sends its request
with the reservation, ahead of anyone else; a home with room wakes the head's instance
(`/queue/wake`). Closing the peer request
cancels the request at the home, which cancels it at the connector. An error of the home before
any byte (connector gone, draining, all failed, home unreachable) is retryable: the caller tries
another connector. See docs/protocol.md ("Peer channel") and docs/scale-out.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import aiohttp
from aiohttp import web

from infero.protocol import link as lp
from infero.server.events import RequestFinished
from infero.server.exchange import Exchange, ExchangeFailed
from infero.server.openai_api import TARGET_HEADER, OpenAIRelay
from infero.server.shared import Action, Dispatcher, Kind, Route, Ticket, Verdict

logger = logging.getLogger(__name__)

PEER_PREFIX = "/api/peer/v1"
KEY_HEADER = "X-Infero-Peer-Key"
MODEL_HEADER = "X-Infero-Model"
STREAM_HEADER = "X-Infero-Stream"
RESERVATION_HEADER = "X-Infero-Reservation"
"""A slot reserved at the home for this request (the head of the fleet-wide queue)."""
ERROR_HEADER = "X-Infero-Peer-Error"
"""Set by the home on its own error answers (not a backend's): the error code."""
WINDOW = 1024 * 1024
"""Bytes of a peer answer read ahead of the client."""
CONNECT_TIMEOUT = 5.0
RETRYABLE = frozenset(
    {"upstream_error", "not_found", "model_not_found", "draining", "reservation_expired"}
)
"""Home error codes after which another connector is tried (nothing reached a backend)."""
RESERVE_TTL = 5.0
"""Seconds a slot reserved for a fleet queue's head waits for its request, then is freed."""


class PeerClient:
    """One pooled HTTP client for every peer instance (opened lazily, closed at shutdown)."""

    def __init__(self, peer_key: str) -> None:
        self.peer_key = peer_key
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared session (keep-alive connections to every peer)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT),
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def steer(
        self, address: str, kind: Kind, connector_id: str, action: Action, by: str
    ) -> Verdict | None:
        """Ask the home instance to steer its connector; None when it cannot be reached."""
        url = f"{address}{PEER_PREFIX}/control/{kind}/{connector_id}/{action}"
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT * 2):
                async with self.session.post(
                    url, json={"by": by}, headers={KEY_HEADER: self.peer_key}
                ) as answer:
                    if answer.status != 200:
                        return None
                    verdict: Verdict = (await answer.json())["verdict"]
                    return verdict
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError):
            return None

    async def reserve(self, address: str, model: str, connector_id: str) -> str | None:
        """Reserve a slot of a connector at its home; the reservation token, or None."""
        doc = await self._post(
            f"{address}{PEER_PREFIX}/queue/reserve", {"model": model, "connector": connector_id}
        )
        token = doc.get("token") if doc is not None else None
        return token if isinstance(token, str) and token else None

    async def wake(self, address: str, model: str, hint: str) -> None:
        """Tell an instance that its waiter heads `model`'s queue and `hint` has room."""
        await self._post(f"{address}{PEER_PREFIX}/queue/wake", {"model": model, "hint": hint})

    async def _post(self, url: str, doc: dict[str, str]) -> dict[str, object] | None:
        """POST a small JSON document to a peer; its JSON answer (None when unreachable)."""
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT * 2):
                async with self.session.post(
                    url, json=doc, headers={KEY_HEADER: self.peer_key}
                ) as answer:
                    if answer.status != 200:
                        return {}
                    found = await answer.json()
                    return found if isinstance(found, dict) else {}
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return None

    async def close(self) -> None:
        """Close the pooled connections."""
        if self._session is not None:
            await self._session.close()


class _Sender:
    """The exchange's way back: credit frees read-ahead, cancel stops the peer request."""

    __slots__ = ("credit", "route", "unread")

    def __init__(self, route: PeerRoute) -> None:
        self.route = route
        self.unread = 0
        self.credit = asyncio.Event()

    async def send(self, frame: lp.Cancel | lp.Credit) -> None:
        if isinstance(frame, lp.Credit):
            self.unread -= frame.bytes
            self.credit.set()
        else:
            self.route.stop()


class PeerRoute:
    """A request for a connector linked to another instance."""

    __slots__ = (
        "_exchange",
        "_pump",
        "_sender",
        "address",
        "client",
        "connector_id",
        "on_finish",
        "reservation",
    )

    def __init__(
        self,
        client: PeerClient,
        address: str,
        connector_id: str,
        on_finish: Callable[[PeerRoute, RequestFinished], None],
        reservation: str = "",
    ) -> None:
        self.client = client
        self.address = address
        self.connector_id = connector_id
        self.on_finish = on_finish
        self.reservation = reservation
        """A slot the home reserved for this request (empty: the home admits it as usual)."""
        self._pump: asyncio.Task[None] | None = None
        self._exchange: Exchange | None = None
        self._sender = _Sender(self)

    async def open_exchange(
        self,
        *,
        method: str,
        path: str,
        headers: lp.Headers,
        body: bytes | bytearray,
        stream: bool,
        model: str,
        request_id: str,
    ) -> Exchange:
        exchange = self._exchange = Exchange(self._sender, 0, WINDOW)
        sent = [*headers, (KEY_HEADER, self.client.peer_key), (MODEL_HEADER, model)]
        sent += [(TARGET_HEADER, self.connector_id), (STREAM_HEADER, "1" if stream else "0")]
        if request_id:
            sent.append(("X-Request-Id", request_id))
        if self.reservation:
            sent.append((RESERVATION_HEADER, self.reservation))
        url = f"{self.address}{PEER_PREFIX}/relay{path}"
        self._pump = asyncio.create_task(
            self._run(exchange, method, url, sent, bytes(body)), name="peer-exchange"
        )
        return exchange

    async def _run(
        self, exchange: Exchange, method: str, url: str, headers: lp.Headers, body: bytes
    ) -> None:
        try:
            async with self.client.session.request(
                method, url, data=body, headers=headers
            ) as answer:
                code = answer.headers.get(ERROR_HEADER)
                if code is not None and code in RETRYABLE:
                    text = (await answer.read()).decode("utf-8", "replace")
                    exchange.on_failed(ExchangeFailed(code, _message(text), retryable=True))
                    return
                kept = [(k, v) for k, v in answer.headers.items() if not _own(k)]
                exchange.on_head(lp.Head(id=0, status=answer.status, headers=kept))
                await self._copy(exchange, answer.content)
        except (aiohttp.ClientError, OSError) as failure:
            exchange.on_lost(f"instance at {self.address} unreachable or gone: {failure}")
            return
        exchange.on_end(lp.End(id=0))

    async def _copy(self, exchange: Exchange, content: aiohttp.StreamReader) -> None:
        sender = self._sender
        while True:
            chunk = await content.read(WINDOW // 4)
            if not chunk:
                return
            while sender.unread + len(chunk) > WINDOW:
                sender.credit.clear()
                await sender.credit.wait()
            sender.unread += len(chunk)
            exchange.on_body(memoryview(chunk))

    def stop(self) -> None:
        """Close the peer request (the home cancels its request at the connector)."""
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()

    async def finish(self, done: RequestFinished) -> None:
        if self._exchange is not None:
            await self._exchange.cancel()  # stops its wait timer (and the pump if running)
        self.stop()
        if self._pump is not None:
            await asyncio.gather(self._pump, return_exceptions=True)
        self.on_finish(self, done)


class Reservations:
    """Slots this home reserved for the heads of the fleet-wide queue, until their request
    arrives (`RESERVE_TTL` at most; then the slot is freed)."""

    def __init__(
        self,
        acquire: Callable[[str, str], Route | None],
        free: Callable[[Route], None],
        ttl: float = RESERVE_TTL,
    ) -> None:
        self._acquire = acquire
        """A slot of connector (2nd) for model (1st) if it has room."""
        self._free = free
        self.ttl = ttl
        self._held: dict[str, tuple[Route, asyncio.TimerHandle]] = {}

    def reserve(self, model: str, connector_id: str) -> str | None:
        """Take a slot of the connector for `model`; its token, or None when it has no room."""
        route = self._acquire(model, connector_id)
        if route is None:
            return None
        token = secrets.token_urlsafe(12)
        timer = asyncio.get_running_loop().call_later(self.ttl, self._expire, token)
        self._held[token] = (route, timer)
        return token

    def claim(self, token: str) -> Route | None:
        """The reserved slot (once); None when unknown or expired."""
        held = self._held.pop(token, None)
        if held is None:
            return None
        held[1].cancel()
        return held[0]

    def _expire(self, token: str) -> None:
        held = self._held.pop(token, None)
        if held is not None:
            logger.info("a slot reserved on %s was not used in time: freed", held[0].connector_id)
            self._free(held[0])

    def give_back(self, route: Route) -> None:
        """Free a claimed slot that its request never used."""
        self._free(route)

    def close(self) -> None:
        """Free every reserved slot (shutdown)."""
        for route, timer in self._held.values():
            timer.cancel()
            self._free(route)
        self._held.clear()


class FleetDoor(Protocol):
    """The home side of the fleet-wide queue."""

    @property
    def reservations(self) -> Reservations: ...

    def woken(self, model: str, hint: str | None) -> None:
        """Another instance says our waiter heads `model`'s queue and `hint` has room."""
        ...


class _Reserved:
    """A dispatcher that first hands out a reserved slot, then defers to the home's own."""

    __slots__ = ("_route", "_then")

    def __init__(self, route: Route, then: Dispatcher) -> None:
        self._route: Route | None = route
        self._then = then

    def known(self, model: str, target: str | None) -> bool:
        return self._then.known(model, target)

    def serving_beyond(self, model: str, exclude: frozenset[str], target: str | None) -> bool:
        return self._then.serving_beyond(model, exclude, target)

    async def acquire_now(
        self, model: str, exclude: frozenset[str], target: str | None
    ) -> Route | None:
        route, self._route = self._route, None
        return route if route is not None else await self._then.acquire_now(model, exclude, target)

    async def enqueue(self, model: str, exclude: frozenset[str], target: str | None) -> Ticket:
        return await self._then.enqueue(model, exclude, target)

    def unused(self) -> Route | None:
        """The reserved slot if the request never took it."""
        return self._route


def _own(header: str) -> bool:
    low = header.lower()
    return low.startswith("x-infero-") or low in ("content-length", "transfer-encoding")


def _message(text: str) -> str:
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        return str(json.loads(text)["error"]["message"])
    return text[:500]


def authorized(request: web.Request, peer_key: str) -> bool:
    """Whether the request carries the peer key (constant-time compare)."""
    given = request.headers.get(KEY_HEADER, "")
    return bool(peer_key) and hmac.compare_digest(given.encode(), peer_key.encode())


def setup(
    app: web.Application,
    *,
    peer_key: str,
    relay: OpenAIRelay,
    steer: Callable[[Kind, str, Action, str], Awaitable[Verdict]],
    door: FleetDoor,
) -> None:
    """Mount the home side: relay to a local connector, control of a local connector, and
    the fleet queue's reservations and wake messages.

    `relay` routes over this instance's own connectors only (never back to a peer).
    """

    async def relay_handler(request: web.Request) -> web.StreamResponse:
        if not authorized(request, peer_key):
            return web.json_response({"error": {"message": "bad peer key"}}, status=401)
        started = time.perf_counter()
        model = request.headers.get(MODEL_HEADER, "")
        target = request.headers.get(TARGET_HEADER) or None
        if not relay.dispatcher.known(model, target):
            return _peer_error(404, "not_found", f"connector {target!r} is not linked here")
        if relay.lifecycle.draining:
            return _peer_error(503, "draining", "this instance is draining")
        tail = request.rel_url.raw_path_qs.removeprefix(PEER_PREFIX + "/relay")
        local = request.clone(rel_url="/api/v1" + tail)  # the path the relay forwards
        body = await local.read()
        reserved: _Reserved | None = None
        token = request.headers.get(RESERVATION_HEADER)
        if token is not None:
            route = door.reservations.claim(token)
            if route is None:
                return _peer_error(409, "reservation_expired", "the reserved slot expired")
            reserved = _Reserved(route, relay.dispatcher)
        try:
            response = await relay.forward(
                local,
                body,
                model=model,
                stream=request.headers.get(STREAM_HEADER) == "1",
                target=target,
                started=started,
                dispatcher=reserved,
            )
        finally:
            unused = reserved.unused() if reserved is not None else None
            if unused is not None:
                door.reservations.give_back(unused)
        if not response.prepared:
            _mark(response)
        return response

    async def reserve_handler(request: web.Request) -> web.Response:
        if not authorized(request, peer_key):
            return web.json_response({"error": {"message": "bad peer key"}}, status=401)
        doc = await _small_json(request)
        token = None
        if not relay.lifecycle.draining:
            token = door.reservations.reserve(doc.get("model", ""), doc.get("connector", ""))
        return web.json_response({"token": token})

    async def wake_handler(request: web.Request) -> web.Response:
        if not authorized(request, peer_key):
            return web.json_response({"error": {"message": "bad peer key"}}, status=401)
        doc = await _small_json(request)
        door.woken(doc.get("model", ""), doc.get("hint") or None)
        return web.json_response({})

    async def control_handler(request: web.Request) -> web.Response:
        if not authorized(request, peer_key):
            return web.json_response({"error": {"message": "bad peer key"}}, status=401)
        info = request.match_info
        doc = await request.json()
        kind: Kind = "mcp" if info["kind"] == "mcp" else "llm"
        action: Action = info["action"]  # type: ignore[assignment]  # the route admits only actions
        verdict = await steer(kind, info["id"], action, str(doc.get("by", "")))
        return web.json_response({"verdict": verdict})

    for method in ("POST", "GET", "DELETE"):  # GET/DELETE: stored responses (Responses API)
        app.router.add_route(method, PEER_PREFIX + "/relay/{tail:.+}", relay_handler)
    app.router.add_post(PEER_PREFIX + "/queue/reserve", reserve_handler)
    app.router.add_post(PEER_PREFIX + "/queue/wake", wake_handler)
    app.router.add_post(
        PEER_PREFIX + "/control/{kind:llm|mcp}/{id}/{action:drain|undrain|shutdown}",
        control_handler,
    )


async def _small_json(request: web.Request) -> dict[str, str]:
    """The string fields of a small JSON object body (anything else is ignored)."""
    try:
        doc = await request.json()
    except ValueError:
        return {}
    if not isinstance(doc, dict):
        return {}
    return {k: v for k, v in doc.items() if isinstance(k, str) and isinstance(v, str)}


def _peer_error(status: int, code: str, message: str) -> web.Response:
    response = web.json_response({"error": {"message": message, "code": code}}, status=status)
    response.headers[ERROR_HEADER] = code
    return response


def _mark(response: web.StreamResponse) -> None:
    """Tag an error answer of this instance's relay, so the asking instance may fail over."""
    code = ""
    if isinstance(response, web.Response) and response.body is not None:
        with contextlib.suppress(ValueError, AttributeError, TypeError, KeyError):
            assert isinstance(response.body, bytes)
            code = str(json.loads(response.body)["error"]["code"])
    response.headers[ERROR_HEADER] = code or "error"
