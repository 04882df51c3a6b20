"""The asking side of the peer link: one WebSocket from this instance to each peer it relays to.

The link is dialed on first use (`GET {INSTANCE_ADDR}/api/peer/v1/link`, key in
`X-Infero-Peer-Key`) and kept; each request to the peer is a stream on it, with the connector
link's frames in the other direction (this instance sends Request and body, in one frame when
the body is small, Credit and Cancel; the peer answers Head, body and End: see
docs/protocol.md, "Peer channel"). A link that drops
fails its streams at once (`link_lost`: retryable before the answer's head) and is dialed
again on the next request, no sooner than its backoff allows (the link's `down` callback is
told, as after a failed dial). The link's WebSocket is a `peerwire.Wire`: the home's frames
reach their exchanges as they arrive, without a reader task; after `HEARTBEAT` seconds
without a frame a ping, and a link whose peer stopped answering closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable

from pydantic import ValidationError

from infero.protocol import link as lp
from infero.server.exchange import FULL, Exchange, ExchangeFailed
from infero.server.peerwire import CLOSE_GOING_AWAY, OP_BINARY, OP_TEXT, Wire, dial

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
"""Seconds without a frame before a WebSocket ping; no answer within half of it closes the
link (at both ends)."""
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


class _Connection:
    """One connection of a link: its wire and its streams; reads the home's frames as they
    arrive (`Receiver`)."""

    __slots__ = ("exchanges", "link", "wire")

    def __init__(self, link: PeerLink) -> None:
        self.link = link
        self.wire: Wire | None = None
        self.exchanges: dict[int, Exchange] = {}

    def on_binary(self, data: bytes) -> None:
        try:
            kind, sid, payload = lp.unpack_body(data)
        except lp.BadFrame as exc:
            logger.warning("peer link to %s: %s", self.link.address, exc)
            return
        exchanges = self.exchanges
        if kind == lp.RESPONSE_WHOLE:
            if (exchange := exchanges.pop(sid, None)) is not None:
                self.link.whole(exchange, payload)
            return
        exchange = exchanges.get(sid)
        if kind == lp.RESPONSE_BODY and exchange is not None and not exchange.on_body(payload):
            del exchanges[sid]  # it overran its window: failed

    def on_text(self, data: bytes) -> None:
        try:
            frame = _decode(data)
        except ValidationError as exc:
            logger.warning("peer link to %s: bad frame ignored: %s", self.link.address, exc)
            return
        if isinstance(frame, lp.Head):
            exchange = self.exchanges.get(frame.id)
            if exchange is not None:
                exchange.on_head(frame)
        elif isinstance(frame, lp.End):
            exchange = self.exchanges.pop(frame.id, None)
            if exchange is not None:
                exchange.on_end(frame)

    def on_closed(self, why: str) -> None:
        self.link.connection_ended(self, why)


_decode = lp.CONNECTOR_FRAMES.validate_json


class PeerLink:
    """This instance's link to one peer instance."""

    def __init__(
        self,
        address: str,
        peer_key: str,
        *,
        max_streams: int = MAX_STREAMS,
        clock: Callable[[], float] = time.monotonic,
        down: Callable[[PeerLink], None] = lambda link: None,
    ) -> None:
        self.address = address
        self.peer_key = peer_key
        self.max_streams = max_streams
        self.clock = clock
        self.down = down
        """Told when the link's connection ended or a dial failed (not after `close`)."""
        self.used_at = clock()
        """When a request last asked for the link, or its connection last ended."""
        self.dials = 0
        """Successful dials so far (one per link the peer accepted)."""
        self._connection: _Connection | None = None
        self._dialing = asyncio.Lock()
        self._backoff = 0.0
        self._retry_at = 0.0
        self._next_stream = 0
        self.closed = False
        self._closed_why = ""

    @property
    def connected(self) -> bool:
        """Its connection is open."""
        connection = self._connection
        return connection is not None and connection.wire is not None

    @property
    def exchanges(self) -> dict[int, Exchange]:
        """The streams open on the current connection."""
        connection = self._connection
        return connection.exchanges if connection is not None else {}

    def _lost(self, why: object) -> ExchangeFailed:
        return ExchangeFailed(
            "link_lost", f"instance at {self.address} unreachable or gone: {why}", retryable=True
        )

    async def _connected(self) -> _Connection:
        connection = self._connection
        if connection is not None:
            return connection
        async with self._dialing:
            connection = self._connection
            if connection is not None:
                return connection
            if self.closed:
                raise self._lost(self._closed_why)
            now = self.clock()
            if now < self._retry_at:
                raise self._lost(f"not dialed again for {self._retry_at - now:.1f}s")
            connection = _Connection(self)
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    wire = await dial(
                        self.address + LINK_PATH,
                        {KEY_HEADER: self.peer_key, FEATURES_HEADER: WHOLE_ANSWERS},
                        connection,
                        max_size=lp.MAX_FRAME,
                        heartbeat=HEARTBEAT,
                    )
            except (OSError, TimeoutError) as failure:  # HandshakeFailed is a ConnectionError
                self._backoff = min(max(self._backoff * 2, BACKOFF_MIN), BACKOFF_MAX)
                self._retry_at = self.clock() + self._backoff
                self.down(self)
                raise self._lost(failure or type(failure).__name__) from None
            if self.closed:  # closed while dialing: nothing to leave open
                wire.close(CLOSE_GOING_AWAY, "shutdown")
                raise self._lost(self._closed_why)
            if wire.closed:  # ended already (the home closed it at once)
                raise self._lost(wire.why)
            self._backoff = 0.0
            self.dials += 1
            connection.wire = wire
            self._connection = connection
            logger.info("peer link to %s open", self.address)
            return connection

    def connection_ended(self, connection: _Connection, why: str) -> None:
        """`connection` closed: its streams fail; the next request dials again."""
        if self._connection is connection:
            self._connection = None
        self._fail(connection.exchanges, why)
        logger.info("peer link to %s closed", self.address)
        if not self.closed:
            self.used_at = self.clock()
            self.down(self)

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
        connection = self._connection
        if connection is None:  # else no coroutine for `_connected`: the usual case
            connection = await self._connected()
        wire = connection.wire
        assert wire is not None
        exchanges = connection.exchanges
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
                wire.send(OP_BINARY, whole)
                if wire.paused:
                    await wire.drain()
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
            wire.send(OP_TEXT, lp.encode(frame).encode())
            view = memoryview(body)
            for start in range(0, len(body), lp.BODY_CHUNK):
                piece = view[start : start + lp.BODY_CHUNK]
                await wire.drain()
                wire.send(OP_BINARY, lp.pack_body(lp.REQUEST_BODY, sid, piece))
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
        connection = self._connection
        wire = connection.wire if connection is not None else None
        if wire is None:
            return
        with contextlib.suppress(ConnectionError):
            wire.send(OP_TEXT, lp.encode(frame).encode())
            if wire.paused:
                await wire.drain()

    def forget(self, exchange: Exchange) -> None:
        """Drop an exchange nobody reads any more (late frames for it are ignored)."""
        exchanges = self.exchanges
        if exchanges.get(exchange.id) is exchange:
            del exchanges[exchange.id]

    def whole(self, exchange: Exchange, payload: memoryview) -> None:
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
        """For good (shutdown, or the peer left the fleet): fail the open streams and close
        the link."""
        self.closed = True
        self._closed_why = why
        connection, self._connection = self._connection, None
        if connection is None:
            return
        self._fail(connection.exchanges, why)
        if connection.wire is not None:
            connection.wire.close(CLOSE_GOING_AWAY, "shutdown")
            await connection.wire.wait_closed()
