"""The asking side of the peer link: one WebSocket from this instance to each peer it relays to.

The link is dialed on first use (`GET {INSTANCE_ADDR}/api/peer/v1/link`, key in
`X-Infero-Peer-Key`) and kept; each request to the peer is a stream on it, with the connector
link's frames in the other direction (this instance sends Request and body, in one frame when
the body is small, Credit and Cancel; the peer answers Head, body and End: see
docs/protocol.md, "Peer channel"). A link that drops
fails its streams at once (`link_lost`: retryable before the answer's head) and is dialed
again on the next request, no sooner than its backoff allows (the link's `down` callback is
told, as after a failed dial). WebSocket pings every `HEARTBEAT` seconds close a link whose
peer stopped answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable

import aiohttp
from aiohttp import WSMsgType
from pydantic import ValidationError

from infero.protocol import link as lp
from infero.server.exchange import FULL, Exchange, ExchangeFailed

logger = logging.getLogger(__name__)

LINK_PATH = "/api/peer/v1/link"
KEY_HEADER = "X-Infero-Peer-Key"
FEATURES_HEADER = "X-Infero-Peer-Features"
"""On the upgrade: what this instance reads beyond the connector link's frames."""
WHOLE_ANSWERS = "whole-answers"
"""Feature: a small answer may come whole in one `RESPONSE_WHOLE` frame."""
ERROR_HEADER = "X-Infero-Peer-Error"
"""Set by the home on its own error answers (not a backend's): the error code."""
RETRYABLE = frozenset(
    {"upstream_error", "not_found", "model_not_found", "draining", "reservation_expired", FULL}
)
"""Home error codes after which another connector is tried (nothing reached a backend)."""
MAX_STREAMS = 1024
"""Streams open at once on one link (either side refuses more: `busy`)."""
WINDOW = lp.DEFAULT_WINDOW
"""Bytes of one stream's answer the home may send ahead of this instance's client."""
HEARTBEAT = 5.0
"""Seconds between WebSocket pings; a pong missing for half of it closes the link."""
CONNECT_TIMEOUT = 5.0
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
"""A failed dial waits this long (doubling from `BACKOFF_MIN`) before the next one."""
INLINE_BODY = 64 * 1024
"""Request bodies up to this size leave with their `request` frame, in one binary frame."""
REFUSAL_LIMIT = 64 * 1024
"""Bytes of a home's retryable error answer kept for its message."""


_LENGTHS = ("content-length", "transfer-encoding")


def _own_header(header: str) -> bool:
    """Headers of the home's answer that this instance sets itself."""
    low = header.lower()
    return low.startswith("x-infero-") or low in _LENGTHS


def _has_own_header(headers: lp.Headers) -> bool:
    """Whether any of `headers` is one of `_own_header` (one loop, no call per header)."""
    for key, _ in headers:
        low = key.lower()
        if low.startswith("x-infero-") or low in _LENGTHS:
            return True
    return False


def _error_message(text: str) -> str:
    """The `error.message` of an OpenAI-shaped error body, else its start."""
    with contextlib.suppress(ValueError, AttributeError, TypeError, KeyError):
        return str(json.loads(text)["error"]["message"])
    return text[:500]


class PeerExchange(Exchange):
    """A stream's answer from the home: a retryable home error becomes a retryable failure
    (another connector is tried); the home's own headers are dropped."""

    __slots__ = ("_text", "refusal")

    def __init__(self, link: PeerLink, stream_id: int, window: int) -> None:
        super().__init__(link, stream_id, window)
        self.refusal = ""
        """The code of the home's retryable error answer (empty: none)."""
        self._text = bytearray()

    def on_head(self, head: lp.Head) -> None:
        if not _has_own_header(head.headers):
            super().on_head(head)  # the usual case: the home sends none of them
            return
        kept: lp.Headers = []
        for key, value in head.headers:
            if not _own_header(key):
                kept.append((key, value))
            elif key.lower() == "x-infero-peer-error" and value in RETRYABLE:
                self.refusal = value
                return
        super().on_head(lp.Head.model_construct(id=head.id, status=head.status, headers=kept))

    def on_body(self, payload: memoryview) -> bool:
        if not self.refusal:
            return super().on_body(payload)
        if len(self._text) < REFUSAL_LIMIT:
            self._text += payload
        return True

    def on_end(self, end: lp.End) -> None:
        if not self.refusal:
            super().on_end(end)
            return
        text = self._text.decode("utf-8", "replace")
        self.on_failed(ExchangeFailed(self.refusal, _error_message(text), retryable=True))


class PeerLink:
    """This instance's link to one peer instance."""

    def __init__(
        self,
        session: Callable[[], aiohttp.ClientSession],
        address: str,
        peer_key: str,
        *,
        max_streams: int = MAX_STREAMS,
        clock: Callable[[], float] = time.monotonic,
        down: Callable[[PeerLink], None] = lambda link: None,
    ) -> None:
        self._session = session
        self.address = address
        self.peer_key = peer_key
        self.max_streams = max_streams
        self.clock = clock
        self.down = down
        """Told when the link's connection ended or a dial failed (not after `close`)."""
        self.used_at = clock()
        """When a request last asked for the link, or its connection last ended."""
        self.exchanges: dict[int, Exchange] = {}
        self.dials = 0
        """Successful dials so far (one per link the peer accepted)."""
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._dialing = asyncio.Lock()
        self._backoff = 0.0
        self._retry_at = 0.0
        self._next_stream = 0
        self.closed = False
        self._closed_why = ""

    @property
    def connected(self) -> bool:
        """Its WebSocket is open."""
        return self._ws is not None and not self._ws.closed

    def _lost(self, why: object) -> ExchangeFailed:
        return ExchangeFailed(
            "link_lost", f"instance at {self.address} unreachable or gone: {why}", retryable=True
        )

    async def _connected(self) -> aiohttp.ClientWebSocketResponse:
        ws = self._ws
        if ws is not None and not ws.closed:
            return ws
        async with self._dialing:
            ws = self._ws
            if ws is not None and not ws.closed:
                return ws
            if self.closed:
                raise self._lost(self._closed_why)
            now = self.clock()
            if now < self._retry_at:
                raise self._lost(f"not dialed again for {self._retry_at - now:.1f}s")
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    ws = await self._session().ws_connect(
                        self.address + LINK_PATH,
                        headers={KEY_HEADER: self.peer_key, FEATURES_HEADER: WHOLE_ANSWERS},
                        heartbeat=HEARTBEAT,
                        max_msg_size=lp.MAX_FRAME,
                        compress=0,
                    )
            except (aiohttp.ClientError, OSError, TimeoutError) as failure:
                self._backoff = min(max(self._backoff * 2, BACKOFF_MIN), BACKOFF_MAX)
                self._retry_at = self.clock() + self._backoff
                self.down(self)
                raise self._lost(failure or type(failure).__name__) from None
            if self.closed:  # closed while dialing: no reader to leave behind
                await ws.close()
                raise self._lost(self._closed_why)
            self._backoff = 0.0
            self.dials += 1
            self._ws = ws
            self.exchanges = {}  # the streams of this connection (stream ids go on counting)
            self._reader = asyncio.create_task(
                self._read(ws, self.exchanges), name=f"peer-link-{self.address}"
            )
            logger.info("peer link to %s open", self.address)
            return ws

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
    ) -> PeerExchange:
        """Send one request on its own stream (`path`: under /api/peer/v1); its answer comes
        into the exchange. Raises a retryable `ExchangeFailed` when the peer cannot be reached
        or the link has `max_streams` open."""
        self.used_at = self.clock()
        ws = self._ws
        if ws is None or ws.closed:  # else no coroutine for `_connected`: the usual case
            ws = await self._connected()
        exchanges = self.exchanges
        if len(exchanges) >= self.max_streams:
            raise ExchangeFailed(
                "busy", f"{self.max_streams} requests open to {self.address}", retryable=True
            )
        sid = self._next_stream = self._next_stream % 0xFFFFFFFF + 1
        while sid in exchanges:
            sid = self._next_stream = sid % 0xFFFFFFFF + 1
        exchange = exchanges[sid] = PeerExchange(self, sid, WINDOW)
        try:
            if len(body) <= INLINE_BODY:  # one frame, one write
                whole = lp.pack_new_request(
                    sid,
                    request_id=request_id,
                    method=method,
                    path=path,
                    headers=headers,
                    body=body,
                    stream=stream,
                    model=model,
                )
                await ws.send_bytes(whole)
                return exchange
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
            await ws.send_str(lp.encode(frame))
            view = memoryview(body)
            for start in range(0, len(body), lp.BODY_CHUNK):
                piece = view[start : start + lp.BODY_CHUNK]
                await ws.send_bytes(lp.pack_body(lp.REQUEST_BODY, sid, piece))
        except ConnectionError as failure:
            exchanges.pop(sid, None)
            raise self._lost(failure) from None
        return exchange

    async def call(self, path: str, doc: dict[str, str], limit: float) -> dict[str, object]:
        """POST a small JSON document on a stream; the JSON object answered (empty when the
        answer is not 200 or not an object). Raises `ExchangeFailed` or `TimeoutError`."""
        exchange = await self.open_exchange(
            method="POST",
            path=path,
            headers=[("Content-Type", "application/json")],
            body=json.dumps(doc).encode(),
        )
        try:
            async with asyncio.timeout(limit):
                head = await exchange.head(None)
                data = bytearray()
                while (chunk := await exchange.chunk(None)) is not None:
                    data += chunk
        finally:
            await exchange.cancel()
            self.forget(exchange)
        if head.status != 200:
            return {}
        try:
            found = json.loads(data)
        except ValueError:
            return {}
        return found if isinstance(found, dict) else {}

    async def send(self, frame: lp.Cancel | lp.Credit) -> None:
        """A stream's credit or cancel (dropped when the link is gone)."""
        ws = self._ws
        if ws is None or ws.closed:
            return
        with contextlib.suppress(ConnectionError):
            await ws.send_str(lp.encode(frame))

    def forget(self, exchange: Exchange) -> None:
        """Drop an exchange nobody reads any more (late frames for it are ignored)."""
        if self.exchanges.get(exchange.id) is exchange:
            del self.exchanges[exchange.id]

    async def _read(
        self, ws: aiohttp.ClientWebSocketResponse, exchanges: dict[int, Exchange]
    ) -> None:
        decode = lp.CONNECTOR_FRAMES.validate_json
        why = "link closed"
        try:
            while True:  # `receive` itself: `async for` adds a coroutine per message
                msg = await ws.receive()
                if msg.type == WSMsgType.BINARY:
                    try:
                        kind, sid, payload = lp.unpack_body(msg.data)
                    except lp.BadFrame as exc:
                        logger.warning("peer link to %s: %s", self.address, exc)
                        continue
                    if kind == lp.RESPONSE_WHOLE:
                        if (exchange := exchanges.pop(sid, None)) is not None:
                            self._whole(exchange, payload)
                        continue
                    exchange = exchanges.get(sid)
                    ok = kind != lp.RESPONSE_BODY or exchange is None or exchange.on_body(payload)
                    if not ok:
                        del exchanges[sid]  # it overran its window: failed
                    continue
                if msg.type != WSMsgType.TEXT:
                    break  # closing, closed or an error: the link is done
                try:
                    frame = decode(msg.data)
                except ValidationError as exc:
                    logger.warning("peer link to %s: bad frame ignored: %s", self.address, exc)
                    continue
                if isinstance(frame, lp.Head):
                    exchange = exchanges.get(frame.id)
                    if exchange is not None:
                        exchange.on_head(frame)
                elif isinstance(frame, lp.End):
                    exchange = exchanges.pop(frame.id, None)
                    if exchange is not None:
                        exchange.on_end(frame)
        except (aiohttp.ClientError, OSError) as failure:
            why = str(failure) or type(failure).__name__
        finally:
            if self._ws is ws:
                self._ws = None
            self._fail(exchanges, why)
            logger.info("peer link to %s closed", self.address)
            if not self.closed:
                self.used_at = self.clock()
                self.down(self)

    def _whole(self, exchange: Exchange, payload: memoryview) -> None:
        """A stream's whole answer, in one frame: head, body and a clean end."""
        try:
            head, body = lp.unpack_answer(payload)
        except lp.BadFrame as exc:
            logger.warning("peer link to %s: %s", self.address, exc)
            exchange.on_failed(ExchangeFailed("protocol", f"bad answer from the home: {exc}"))
            return
        exchange.on_head(head)
        if body and not exchange.on_body(body):
            return  # over its window (a home never sends that much whole): failed
        exchange.on_end(lp.End(id=exchange.id))

    def _fail(self, exchanges: dict[int, Exchange], why: str) -> None:
        message = self._lost(why).message
        streams = list(exchanges.values())
        exchanges.clear()
        for exchange in streams:
            exchange.on_lost(message)

    async def close(self, why: str = "this instance is shutting down") -> None:
        """For good (shutdown, or the peer left the fleet): fail the open streams, close the
        link, end its reader."""
        self.closed = True
        self._closed_why = why
        ws, reader = self._ws, self._reader
        self._fail(self.exchanges, why)
        if ws is not None:
            with contextlib.suppress(ConnectionError):
                await ws.close()
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
