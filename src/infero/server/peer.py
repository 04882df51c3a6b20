"""The instances' internal channel: a request for a connector linked to another instance.

`PeerRoute` sends the request on the peer link to the connector's home instance
(peerlink.py: one WebSocket per peer, each request a stream with flow control) and the home
serves it (peerhome.py, `setup` below) with its own scheduler, so `max_concurrency` stays
exact; the answer streams back byte for byte into an `Exchange`. The head of the fleet-wide
queue (fleetqueue.py) first reserves a slot at the home (`/queue/reserve`), then sends its
request with the reservation, ahead of anyone else; a home with room wakes the head's instance
(`/queue/wake`); operators' actions on a remote connector go to its home (`/control/...`):
all three are small streams on the same link. Cancelling the exchange cancels the request at
the home, which cancels it at the connector. An error of the home before any byte (connector
gone, draining, all failed, home unreachable) is retryable: the caller tries another
connector. A connector the caller picked itself (`PICK_HEADER`, not its client's pin) that has
no free slot is refused at once as `full`, never queued at the home: the caller routes again.
MCP exchanges are streams on the same link too (mcp/forward.py). See
docs/protocol.md ("Peer channel") and docs/scale-out.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, get_args

from aiohttp import web

from infero.protocol import link as lp
from infero.server.events import RequestFinished
from infero.server.exchange import FULL, Exchange, ExchangeFailed
from infero.server.openai_api import TARGET_HEADER, OpenAIRelay
from infero.server.peerhome import HomeEndpoint, PeerStream
from infero.server.peerlink import (
    CONNECT_TIMEOUT,
    ERROR_HEADER,
    LINK_PATH,
    PeerExchange,
    PeerLink,
)
from infero.server.shared import Action, Dispatcher, Kind, Route, Ticket, Verdict

logger = logging.getLogger(__name__)

RESERVATION_HEADER = "X-Infero-Reservation"
"""A slot reserved at the home for this request (the head of the fleet-wide queue)."""
PICK_HEADER = "X-Infero-Pick"
"""The target is the asking instance's routing pick, not its client's pin: a home whose
connector has no free slot answers `full` at once instead of queueing the request."""
RESERVE_TTL = 5.0
"""Seconds a slot reserved for a fleet queue's head waits for its request, then is freed."""
CALL_TIMEOUT = CONNECT_TIMEOUT * 2
"""Longest wait for the answer of a reserve, wake or control stream."""
PEER_HOME = web.AppKey("peer_home", HomeEndpoint)
"""The links other instances dialed to this one (closed at shutdown)."""
UNUSED_AFTER = 60.0
"""Seconds a link without a connection stays in the table when no request asks for it."""


class PeerClient:
    """This instance's links to its peers (each dialed on first use); a link to a peer that
    left the fleet is closed and dropped (`forget`), and so is one left without a connection
    and unused for `unused_after` seconds (however its peer went: the table stays bounded even
    when no departure is ever seen); the others at shutdown."""

    def __init__(self, peer_key: str, *, unused_after: float = UNUSED_AFTER) -> None:
        self.peer_key = peer_key
        self.unused_after = unused_after
        self.links: dict[str, PeerLink] = {}
        self._closing: set[asyncio.Task[None]] = set()
        """Links being closed by `forget` (awaited at shutdown)."""
        self._unused: dict[str, asyncio.TimerHandle] = {}
        """A timer for each link without a connection: it drops the link once unused."""

    def link(self, address: str) -> PeerLink:
        """The link to the instance at `address`."""
        link = self.links.get(address)
        if link is None:
            link = self.links[address] = PeerLink(address, self.peer_key, down=self._down)
        return link

    def forget(self, address: str, why: str = "the instance left the fleet") -> None:
        """Drop the link to `address` from the table and close it (its open streams fail as
        on a dropped link); a later request dials a new one."""
        timer = self._unused.pop(address, None)
        if timer is not None:
            timer.cancel()
        link = self.links.pop(address, None)
        if link is None:
            return
        closing = asyncio.create_task(link.close(why), name=f"peer-link-close-{address}")
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    def _down(self, link: PeerLink) -> None:
        """A link lost its connection or failed to dial: look again once it could be unused."""
        if link.address not in self._unused:
            self._later(link, self.unused_after)

    def _later(self, link: PeerLink, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self._unused[link.address] = loop.call_later(delay, self._drop_unused, link)

    def _drop_unused(self, link: PeerLink) -> None:
        """Drop the link if it is still without a connection and unused since `unused_after`."""
        self._unused.pop(link.address, None)
        if self.links.get(link.address) is not link or link.connected:
            return  # replaced, or connected again: its next loss starts a new timer
        left = link.used_at + self.unused_after - link.clock()
        if left > 0:
            self._later(link, left)
            return
        logger.info("peer link to %s unused without a connection: dropped", link.address)
        self.forget(link.address, "the link was unused without a connection")

    async def steer(
        self, address: str, kind: Kind, connector_id: str, action: Action, by: str
    ) -> Verdict | None:
        """Ask the home instance to steer its connector; None when it cannot be reached."""
        doc = await self._call(address, f"/control/{kind}/{connector_id}/{action}", {"by": by})
        verdict = doc.get("verdict") if doc is not None else None
        for known in get_args(Verdict):
            if verdict == known:
                return known  # type: ignore[no-any-return]  # one of Verdict's literals
        return None

    async def reserve(self, address: str, model: str, connector_id: str) -> str | None:
        """Reserve a slot of a connector at its home; the reservation token, or None."""
        doc = await self._call(
            address, "/queue/reserve", {"model": model, "connector": connector_id}
        )
        token = doc.get("token") if doc is not None else None
        return token if isinstance(token, str) and token else None

    async def wake(self, address: str, model: str, hint: str) -> None:
        """Tell an instance that its waiter heads `model`'s queue and `hint` has room."""
        await self._call(address, "/queue/wake", {"model": model, "hint": hint})

    async def _call(self, address: str, path: str, doc: dict[str, str]) -> dict[str, object] | None:
        """A small JSON stream to a peer; its JSON answer (None when unreachable)."""
        try:
            return await self.link(address).call(path, doc, CALL_TIMEOUT)
        except (ExchangeFailed, TimeoutError):
            return None

    async def close(self) -> None:
        """Close the links."""
        for timer in self._unused.values():
            timer.cancel()
        self._unused.clear()
        await asyncio.gather(*self._closing, *(link.close() for link in self.links.values()))


class PeerRoute:
    """A request for a connector linked to another instance."""

    __slots__ = ("_exchange", "connector_id", "link", "on_finish", "pick", "reservation")

    def __init__(
        self,
        link: PeerLink,
        connector_id: str,
        on_finish: Callable[[RequestFinished, bool], None],
        reservation: str = "",
        *,
        pick: bool = False,
    ) -> None:
        self.link = link
        self.connector_id = connector_id
        self.on_finish = on_finish
        """Told once the request ended, and whether the home refused it as `full`."""
        self.reservation = reservation
        """A slot the home reserved for this request (empty: the home admits it as usual)."""
        self.pick = pick
        """The connector is this instance's routing pick (not a client's pin): the home serves
        it at once or refuses it (`full`), never queues it."""
        self._exchange: PeerExchange | None = None

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
        sent = [*headers, (TARGET_HEADER, self.connector_id)]
        if self.reservation:
            sent.append((RESERVATION_HEADER, self.reservation))
        elif self.pick:
            sent.append((PICK_HEADER, "1"))
        self._exchange = await self.link.open_exchange(
            method=method,
            path="/relay" + path,
            headers=sent,
            body=body,
            stream=stream,
            model=model,
            request_id=request_id,
        )
        return self._exchange

    @property
    def waits_when_busy(self) -> bool:
        return False

    async def finish(self, done: RequestFinished) -> None:
        exchange = self._exchange
        if exchange is not None:
            await exchange.cancel()  # stops its wait timer (and the request at the home if open)
            self.link.forget(exchange)
        self.on_finish(done, exchange is not None and exchange.refusal == FULL)


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

    async def enqueue(
        self, model: str, exclude: frozenset[str], target: str | None, *, first: bool = False
    ) -> Ticket:
        return await self._then.enqueue(model, exclude, target, first=first)

    def unused(self) -> Route | None:
        """The reserved slot if the request never took it."""
        return self._route


def setup(
    app: web.Application,
    *,
    peer_key: str,
    relay: OpenAIRelay,
    steer: Callable[[Kind, str, Action, str], Awaitable[Verdict]],
    door: FleetDoor,
    max_body: int,
) -> None:
    """Mount the home side of the peer link: streams relayed to a local connector
    (`/relay/<path>`), control of a local connector (`/control/<kind>/<id>/<action>`), and
    the fleet queue's reservations and wake messages (`/queue/reserve`, `/queue/wake`).

    `relay` routes over this instance's own connectors only (never back to a peer).
    """

    async def relay_stream(stream: PeerStream, tail: str) -> web.Response | None:
        started = time.perf_counter()
        frame = stream.frame
        model = frame.model
        target = stream.headers.get(TARGET_HEADER) or None
        if not relay.dispatcher.known(model, target):
            return _peer_error(404, "not_found", f"connector {target!r} is not linked here")
        if relay.lifecycle.draining:
            return _peer_error(503, "draining", "this instance is draining")
        reserved: _Reserved | None = None
        token = stream.headers.get(RESERVATION_HEADER)
        if token is not None:
            route = door.reservations.claim(token)
            if route is None:
                return _peer_error(409, "reservation_expired", "the reserved slot expired")
            reserved = _Reserved(route, relay.dispatcher)
        try:
            failed = await relay.relay(
                stream,  # the answer leaves as frames, no aiohttp request or response built
                method=frame.method,
                path=tail,
                headers=frame.headers,
                request_id=frame.request_id,
                body=stream.body,
                model=model,
                stream=frame.stream,
                target=target,
                started=started,
                dispatcher=reserved,
                may_wait=PICK_HEADER not in stream.headers,  # a pick: a slot now, else `full`
            )
        finally:
            unused = reserved.unused() if reserved is not None else None
            if unused is not None:
                door.reservations.give_back(unused)
        if failed is not None:
            _mark(failed)
        return failed

    async def serve(stream: PeerStream) -> web.StreamResponse | None:
        path = stream.frame.path
        if path.startswith("/relay/"):
            return await relay_stream(stream, path.removeprefix("/relay"))
        doc = _small_json(stream.body)
        if path == "/queue/reserve":
            token = None
            if not relay.lifecycle.draining:
                token = door.reservations.reserve(doc.get("model", ""), doc.get("connector", ""))
            return web.json_response({"token": token})
        if path == "/queue/wake":
            door.woken(doc.get("model", ""), doc.get("hint") or None)
            return web.json_response({})
        for prefix, handler in endpoint.routes.items():
            if path.startswith(prefix):
                return await handler(stream)
        parts = path.split("/")  # /control/<kind>/<id>/<action>
        if len(parts) == 5 and parts[1] == "control" and parts[2] in ("llm", "mcp"):
            kind: Kind = "mcp" if parts[2] == "mcp" else "llm"
            for action in get_args(Action):
                if parts[4] == action:
                    verdict = await steer(kind, parts[3], action, doc.get("by", ""))
                    return web.json_response({"verdict": verdict})
        return web.json_response({"error": {"message": f"no peer route {path}"}}, status=404)

    endpoint = app[PEER_HOME] = HomeEndpoint(peer_key=peer_key, handler=serve, max_body=max_body)
    app.router.add_get(LINK_PATH, endpoint.handle)
    app.on_shutdown.append(_close_links)


async def _close_links(app: web.Application) -> None:
    await app[PEER_HOME].close()


def _small_json(body: bytes | bytearray) -> dict[str, str]:
    """The string fields of a small JSON object body (anything else is ignored)."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(doc, dict):
        return {}
    return {k: v for k, v in doc.items() if isinstance(k, str) and isinstance(v, str)}


def _peer_error(status: int, code: str, message: str) -> web.Response:
    response = web.json_response({"error": {"message": message, "code": code}}, status=status)
    response.headers[ERROR_HEADER] = code
    return response


def _mark(response: web.Response) -> None:
    """Tag an error answer of this instance's relay, so the asking instance may fail over."""
    code = ""
    if response.body is not None:
        with contextlib.suppress(ValueError, AttributeError, TypeError, KeyError):
            assert isinstance(response.body, bytes)
            code = str(json.loads(response.body)["error"]["code"])
    response.headers[ERROR_HEADER] = code or "error"
