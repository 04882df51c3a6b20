"""Server side of the connector link: handshake, frame I/O, flow control, liveness.

`LinkEndpoint` is the WebSocket handler for one link kind (`llm` at /api/workers/connect
and /api/llm/connect; `mcp` at /api/mcp/connect). What a kind does with its links is up to
its `LinkHandler` (the LLM `Fleet`, or the MCP broker). See docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Literal, Protocol, runtime_checkable

from aiohttp import WSMsgType, web
from pydantic import ValidationError

from infero.common.buildinfo import BUILD
from infero.common.liveness import Action, Liveness
from infero.protocol import link as lp
from infero.server.auth import client_key_ok
from infero.server.exchange import Exchange, ExchangeFailed
from infero.server.lifecycle import Lifecycle
from infero.server.link import ConnectorLink, LinkHandler
from infero.server.peerwire import CLOSE_GOING_AWAY, OP_BINARY, OP_TEXT, ws_frame

logger = logging.getLogger(__name__)

INLINE_BODY = 64 * 1024
"""Request bodies up to this size leave in the same write as their Request frame."""

HELLO_TIMEOUT = 10.0
"""Seconds a new link has to send its Hello."""

END_GRACE = 5.0
"""Seconds a slot stays taken after the server gave up on its stream (client gone, timeout),
waiting for the connector's `end`: a connector ends a cancelled call at once, and the bound
keeps an `end` that never comes from holding the slot for ever."""

REFUSALS = frozenset({"busy", "draining"})
"""`end` errors of a request the connector refused: no call of its ended."""

STALE_AFTER = 2.0
"""A link silent for this many heartbeat intervals is stale: a newcomer with its id may
replace it (a live connector is heard from at least once per interval), and `/api/state`
marks its heartbeat late until the next frame arrives."""

CLOSE_POLICY = 1008
CLOSE_NORMAL = 1000

Kind = Literal["llm", "mcp"]


@runtime_checkable
class RawTransport(Protocol):
    """What `Link` needs of the TCP transport under its WebSocket (uvloop's transports are
    not `asyncio.WriteTransport` subclasses, hence a protocol)."""

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...

    def get_write_buffer_size(self) -> int: ...


class Link:
    """One accepted link: sends frames, owns the exchanges of its streams."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        hello: lp.Hello,
        link_id: str,
        *,
        window: int,
        liveness: Liveness,
        clock: Callable[[], float],
    ) -> None:
        self.ws = ws
        self.transport: RawTransport | None = None
        """The link's TCP transport, once known: small Request frames and their body then
        go in one write (see `use_transport`)."""
        self.hello = hello
        self.id = link_id
        self.kind: Kind = hello.kind
        self.window = window
        self.liveness = liveness
        self.clock = clock
        self.exchanges: dict[int, Exchange] = {}
        self.ending: dict[int, tuple[Callable[[], None], asyncio.TimerHandle]] = {}
        """Streams the server gave up on whose `end` has not come: what frees each one's slot
        (see `release_after_end`)."""
        self.owed: list[tuple[Callable[[], None], asyncio.TimerHandle]] = []
        """Slots of requests the connector refused `busy`, freed one by one as it ends calls
        (see `release_at_next_end`)."""
        self.closed = False
        self.shutting_down = False
        """The connector was told to shut down (it said so, or an operator asked here)."""
        self.late = False
        """Silent for `STALE_AFTER` heartbeat intervals; cleared by the next frame received."""
        self._next_stream = 0

    async def send(self, frame: lp.Cancel | lp.Credit | lp.Control | lp.Ping | lp.Pong) -> None:
        """Send a control frame; silently dropped once the link is closed."""
        if self.closed:
            return
        try:
            await self.ws.send_str(lp.encode(frame))
        except ConnectionError:
            return
        self.liveness.sent(self.clock())

    async def open_exchange(
        self,
        *,
        method: str,
        path: str,
        headers: lp.Headers,
        body: bytes | bytearray,
        stream: bool = False,
        model: str = "",
        request_id: str = "",
    ) -> Exchange:
        """Start one HTTP exchange on this link: Request frame, then the body in chunks.

        Raises `ExchangeFailed` (retryable) if the link is already closed or breaks while sending.
        """
        if self.closed:
            raise ExchangeFailed("link_lost", "connector link closed", retryable=True)
        self._next_stream = self._next_stream % 0xFFFFFFFF + 1
        while self._next_stream in self.exchanges or (
            self.ending and self._next_stream in self.ending
        ):
            self._next_stream = self._next_stream % 0xFFFFFFFF + 1
        sid = self._next_stream
        exchange = Exchange(self, sid, self.window)
        self.exchanges[sid] = exchange
        frame = lp.Request(
            id=sid,
            request_id=request_id,
            method=method,
            path=path,
            headers=headers,
            body_len=len(body),
            stream=stream,
            model=model,
        )
        try:
            if not self._send_small_request(frame, body):
                await self.ws.send_str(lp.encode(frame))
                view = memoryview(body)
                for start in range(0, len(body), lp.BODY_CHUNK):
                    await self.ws.send_bytes(
                        lp.pack_body(lp.REQUEST_BODY, sid, view[start : start + lp.BODY_CHUNK])
                    )
        except ConnectionError:
            self.exchanges.pop(sid, None)
            raise ExchangeFailed("link_lost", "connector link closed", retryable=True) from None
        self.liveness.sent(self.clock())
        return exchange

    def use_transport(self, transport: asyncio.BaseTransport | None) -> None:
        """The TCP transport under `ws` (the request's), for `_send_small_request`."""
        self.transport = transport if isinstance(transport, RawTransport) else None

    def _send_small_request(self, frame: lp.Request, body: bytes | bytearray) -> bool:
        """Write the Request frame and its small body as two WebSocket frames in one write.

        Same frames as `send_str` + `send_bytes` (server frames are unmasked and the link is
        uncompressed), one system call and one wake-up of the connector instead of two.
        False (nothing sent) when the body is large or the transport has a backlog: the
        regular path then applies aiohttp's flow control.
        """
        transport = self.transport
        if transport is None or len(body) > INLINE_BODY or transport.get_write_buffer_size():
            return False
        if transport.is_closing() or self.ws.closed:
            raise ConnectionResetError("connector link closed")
        data = ws_frame(OP_TEXT, lp.encode(frame).encode())
        if body:
            data += ws_frame(OP_BINARY, lp.pack_body(lp.REQUEST_BODY, frame.id, body))
        transport.write(data)
        return True

    def replaceable_by(self, hello: lp.Hello) -> bool:
        """May a newcomer with `hello` take this link's id? Yes for the same connector instance
        reconnecting, and when this link is closed or stale; never for another live one."""
        if hello.instance and hello.instance == self.hello.instance:
            return True
        silent = self.clock() - self.liveness.last_received
        return self.closed or silent >= STALE_AFTER * self.liveness.interval

    def forget(self, exchange: Exchange) -> None:
        """Drop an exchange the handler no longer reads (late frames for it are ignored)."""
        if self.exchanges.get(exchange.id) is exchange:
            del self.exchanges[exchange.id]

    def release_after_end(self, exchange: Exchange, release: Callable[[], None]) -> None:
        """Forget `exchange` and call `release` once the connector has ended its stream: at once
        when its `end` came or the link is gone, else at its `end`, when the link goes, or after
        `END_GRACE` s, whichever is first."""
        self.forget(exchange)
        if exchange.end is not None or self.closed:
            release()
            return
        timer = asyncio.get_running_loop().call_later(END_GRACE, self.ended, exchange.id)
        self.ending[exchange.id] = (release, timer)

    def release_at_next_end(self, release: Callable[[], None]) -> None:
        """Call `release` when the connector next ends a stream (it refused one `busy`, so it
        runs a call the server does not count), when the link goes, or after `END_GRACE` s."""
        if self.closed:
            release()
            return
        held: tuple[Callable[[], None], asyncio.TimerHandle]
        timer = asyncio.get_running_loop().call_later(END_GRACE, lambda: self._repay(held))
        held = (release, timer)
        self.owed.append(held)

    def repaid(self) -> None:
        """The connector ended a stream: free the oldest slot owed to a `busy` refusal."""
        self._repay(self.owed[0])

    def _repay(self, held: tuple[Callable[[], None], asyncio.TimerHandle]) -> None:
        self.owed.remove(held)
        release, timer = held
        timer.cancel()
        release()

    def ended(self, stream_id: int) -> None:
        """The stream the server gave up on has ended (or waited `END_GRACE` s): free it."""
        held = self.ending.pop(stream_id, None)
        if held is not None:
            release, timer = held
            timer.cancel()
            release()

    async def close(self, code: int = CLOSE_NORMAL, message: str = "") -> None:
        """Close the WebSocket; the reader loop then detaches the link."""
        self.closed = True
        await self.ws.close(code=code, message=message.encode())

    def fail_exchanges(self, message: str) -> None:
        """The link is gone: every exchange on it fails, every stream given up on is ended."""
        self.closed = True
        exchanges, self.exchanges = self.exchanges, {}
        for exchange in exchanges.values():
            exchange.on_lost(message)
        held = [*self.ending.values(), *self.owed]
        self.ending, self.owed = {}, []
        for release, timer in held:
            timer.cancel()
            release()


async def shut_down_links(links: Iterable[ConnectorLink]) -> None:
    """Server shutdown: fail every exchange on `links`, then close them all at once (1001)."""
    links = list(links)
    for link in links:
        link.fail_exchanges("server shutting down")
    with contextlib.suppress(ConnectionError):
        await asyncio.gather(*(link.close(CLOSE_GOING_AWAY, "server shutdown") for link in links))


class LinkEndpoint:
    """The WebSocket endpoint of one link kind."""

    def __init__(
        self,
        *,
        kind: Kind,
        handler: LinkHandler,
        client_key: str,
        lifecycle: Lifecycle,
        heartbeat_interval: float,
        dead_after: float,
        window: int = lp.DEFAULT_WINDOW,
        hello_timeout: float = HELLO_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        on_late: Callable[[], None] = lambda: None,
        claim: Callable[[str, lp.Hello], Awaitable[lp.Refused | str]] | None = None,
    ) -> None:
        """`on_late` is called when a link turns late and when it recovers (see `Link.late`);
        `claim`, after `admit` accepted an id, may still refuse it (fleet-wide MCP relay ids)."""
        self.kind = kind
        self.handler = handler
        self.client_key = client_key
        self.lifecycle = lifecycle
        self.heartbeat_interval = heartbeat_interval
        self.dead_after = dead_after
        self.window = window
        self.hello_timeout = hello_timeout
        self.clock = clock
        self.on_late = on_late
        self.claim = claim
        self._handshakes: set[web.WebSocketResponse] = set()
        """Links waiting for their hello (closed at once when the server shuts down)."""

    def mount(self, app: web.Application, *paths: str) -> None:
        """Serve links at `paths`; at shutdown, close the ones still waiting for their hello
        instead of waiting up to `hello_timeout` for them."""
        for path in paths:
            app.router.add_get(path, self.handle)
        app.on_shutdown.append(self._close_handshakes)

    async def _close_handshakes(self, _: web.Application) -> None:
        waiting = [
            ws.close(code=CLOSE_GOING_AWAY, message=b"server shutdown") for ws in self._handshakes
        ]
        with contextlib.suppress(ConnectionError):
            await asyncio.gather(*waiting)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """aiohttp handler: upgrade, handshake, then serve the link until it closes."""
        ws = web.WebSocketResponse(
            max_msg_size=lp.MAX_FRAME, compress=False, autoping=True, heartbeat=None
        )
        await ws.prepare(request)
        peer = request.remote or "?"
        self._handshakes.add(ws)
        try:
            with self.handler.connecting(peer):
                accepted = await self._accept(ws, peer)
        finally:
            self._handshakes.discard(ws)
        if accepted is None:
            return ws
        link, replaced = accepted
        link.use_transport(request.transport)
        hello = link.hello
        if replaced is not None:
            logger.info("link %s: replaced by a new connection from %s", replaced.id, peer)
            replaced.fail_exchanges("replaced by a new connection")
            await replaced.close(CLOSE_NORMAL, "replaced")
        logger.info(
            "link %s (%s) connected from %s: %s models, capacity %s, protocol %s",
            link.id,
            self.kind,
            peer,
            len(hello.models),
            hello.max_concurrency,
            hello.protocol,
        )
        watchdog = asyncio.create_task(self._watch(link), name=f"link-liveness-{link.id}")
        try:
            await self._read(link)
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            link.closed = True
            link.fail_exchanges("connector link lost")
            self.handler.detached(link)
            if not ws.closed:
                await ws.close()
            logger.info("link %s (%s) closed", link.id, self.kind)
        return ws

    async def _accept(
        self, ws: web.WebSocketResponse, peer: str
    ) -> tuple[Link, ConnectorLink | None] | None:
        """Handshake and admission; the attached link and the one it replaces, or None."""
        hello = await self._handshake(ws, peer)
        if hello is None:
            return None
        verdict = self.handler.admit(hello)
        if not isinstance(verdict, lp.Refused) and self.claim is not None:
            verdict = await self.claim(verdict, hello)
        if isinstance(verdict, lp.Refused):
            await self._refuse(ws, peer, verdict.reason, verdict.message)
            return None
        liveness = Liveness(
            interval=self.heartbeat_interval, dead_after=self.dead_after, now=self.clock()
        )
        link = Link(ws, hello, verdict, window=self.window, liveness=liveness, clock=self.clock)
        welcome = lp.Welcome(
            id=verdict,
            server_version=BUILD.version,
            heartbeat_interval=self.heartbeat_interval,
            dead_after=self.dead_after,
            window=self.window,
        )
        try:
            await ws.send_str(lp.encode(welcome))
        except ConnectionError:
            logger.info("link %s from %s left during the handshake", verdict, peer)
            return None
        return link, self.handler.attached(hello, link)

    async def _handshake(self, ws: web.WebSocketResponse, peer: str) -> lp.Hello | None:
        try:
            async with asyncio.timeout(self.hello_timeout):
                msg = await ws.receive()
        except TimeoutError:
            await self._refuse(ws, peer, "invalid", "no hello in time")
            return None
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            logger.info("link from %s closed before its hello", peer)
            return None
        if msg.type != WSMsgType.TEXT:
            await self._refuse(ws, peer, "invalid", "expected a hello text frame")
            return None
        try:
            raw = json.loads(msg.data)
        except (ValueError, RecursionError):  # RecursionError: nesting too deep to parse
            await self._refuse(ws, peer, "invalid", "hello is not JSON")
            return None
        if isinstance(raw, dict) and raw.get("type") == "hello":
            protocol = raw.get("protocol")
            if protocol not in lp.SUPPORTED_VERSIONS:
                supported = ", ".join(map(str, sorted(lp.SUPPORTED_VERSIONS)))
                await self._refuse(
                    ws,
                    peer,
                    "protocol",
                    f"protocol {protocol!r} not supported (server speaks {supported})",
                )
                return None
        try:  # from the text again: pydantic's JSON parser refuses lone surrogates
            hello = lp.Hello.model_validate_json(msg.data)
        except ValidationError as exc:
            detail = exc.errors(include_url=False)[0]
            where = ".".join(map(str, detail.get("loc", ()))) or "hello"
            await self._refuse(ws, peer, "invalid", f"bad hello: {where}: {detail.get('msg')}")
            return None
        if not client_key_ok(self.client_key, hello.client_key):
            await self._refuse(ws, peer, "unauthorized", "wrong or missing CLIENT_KEY")
            return None
        if hello.kind != self.kind:
            await self._refuse(ws, peer, "invalid", f"this endpoint takes {self.kind} links")
            return None
        if self.lifecycle.draining:
            await self._refuse(ws, peer, "draining", "server is draining")
            return None
        return hello

    async def _refuse(
        self,
        ws: web.WebSocketResponse,
        peer: str,
        reason: lp.RefusedReason,
        message: str,
    ) -> None:
        logger.warning("link from %s refused (%s): %s", peer, reason, message)
        with contextlib.suppress(ConnectionError):
            await ws.send_str(lp.encode(lp.Refused(reason=reason, message=message)))
        await ws.close(code=CLOSE_POLICY, message=reason.encode())

    async def _read(self, link: Link) -> None:
        ws = link.ws
        exchanges = link.exchanges
        liveness = link.liveness
        clock = self.clock
        decode = lp.CONNECTOR_FRAMES.validate_json
        async for msg in ws:
            liveness.received(clock())
            if link.late:
                link.late = False
                self.on_late()
            if msg.type == WSMsgType.BINARY:
                try:
                    kind, sid, payload = lp.unpack_body(msg.data)
                except lp.BadFrame as exc:
                    logger.warning("link %s: %s", link.id, exc)
                    continue
                exchange = exchanges.get(sid)
                if kind != lp.RESPONSE_BODY or exchange is None:
                    continue
                if not exchange.on_body(payload):
                    logger.warning("link %s: stream %s overran its window", link.id, sid)
                    del exchanges[sid]
                continue
            if msg.type != WSMsgType.TEXT:
                break
            try:
                frame = decode(msg.data)
            except ValidationError as exc:
                logger.warning("link %s: bad frame ignored: %s", link.id, _first(exc))
                continue
            if isinstance(frame, lp.Head):
                exchange = exchanges.get(frame.id)
                if exchange is not None:
                    exchange.on_head(frame)
            elif isinstance(frame, lp.End):
                exchange = exchanges.pop(frame.id, None)
                if exchange is not None:
                    exchange.on_end(frame)
                elif link.ending:
                    link.ended(frame.id)
                if link.owed and (frame.error is None or frame.error.code not in REFUSALS):
                    link.repaid()
            elif isinstance(frame, lp.Ping):
                await link.send(lp.Pong(ts=frame.ts))
            elif isinstance(frame, lp.StatusUpdate):
                link.shutting_down = link.shutting_down or frame.shutting_down
                self.handler.status(link, frame)
            elif isinstance(frame, lp.Hello):
                logger.warning("link %s: second hello ignored", link.id)

    async def _watch(self, link: Link) -> None:
        liveness = link.liveness
        stale = STALE_AFTER * liveness.interval
        while True:
            now = self.clock()
            if not link.late and now - liveness.last_received >= stale:
                link.late = True
                self.on_late()
            action = liveness.tick(now)
            if action is Action.CLOSE:
                logger.warning(
                    "link %s: silent for %.1fs, closing", link.id, now - liveness.last_received
                )
                link.fail_exchanges("connector link silent")
                await link.close(CLOSE_GOING_AWAY, "dead")
                return
            if action is Action.PING:
                await link.send(lp.Ping(ts=time.time()))
            now = self.clock()
            wait = liveness.next_deadline(now)
            if not link.late:
                wait = min(wait, liveness.last_received + stale - now)
            await asyncio.sleep(max(wait, 0.001))


def _first(exc: ValidationError) -> str:
    detail = exc.errors(include_url=False)[0]
    return f"{'.'.join(map(str, detail.get('loc', ())))}: {detail.get('msg')}"
