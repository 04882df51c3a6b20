"""The instances' internal channel: a request for a connector linked to another instance.

`PeerRoute` sends the request over HTTP to the connector's home instance (the client's
method, `POST` or for stored responses `GET`/`DELETE`, to
`{INSTANCE_ADDR}/api/peer/v1/relay/<path>`, key in `X-Infero-Peer-Key`) and feeds an
`Exchange` from the streamed answer, byte for byte, with flow control. The home serves it with
its own scheduler (`max_concurrency` stays exact) and its own queue. Closing the peer request
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
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from infero.protocol import link as lp
from infero.server.events import RequestFinished
from infero.server.exchange import Exchange, ExchangeFailed
from infero.server.openai_api import TARGET_HEADER, OpenAIRelay
from infero.server.shared import Action, Kind, Verdict

logger = logging.getLogger(__name__)

PEER_PREFIX = "/api/peer/v1"
KEY_HEADER = "X-Infero-Peer-Key"
MODEL_HEADER = "X-Infero-Model"
STREAM_HEADER = "X-Infero-Stream"
ERROR_HEADER = "X-Infero-Peer-Error"
"""Set by the home on its own error answers (not a backend's): the error code."""
WINDOW = 1024 * 1024
"""Bytes of a peer answer read ahead of the client."""
CONNECT_TIMEOUT = 5.0
RETRYABLE = frozenset({"upstream_error", "not_found", "model_not_found", "draining"})
"""Home error codes after which another connector is tried (nothing reached a backend)."""


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

    __slots__ = ("_exchange", "_pump", "_sender", "address", "client", "connector_id", "on_finish")

    def __init__(
        self,
        client: PeerClient,
        address: str,
        connector_id: str,
        on_finish: Callable[[PeerRoute, RequestFinished], None],
    ) -> None:
        self.client = client
        self.address = address
        self.connector_id = connector_id
        self.on_finish = on_finish
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
) -> None:
    """Mount the home side: relay to a local connector, and control of a local connector.

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
        response = await relay.forward(
            local,
            body,
            model=model,
            stream=request.headers.get(STREAM_HEADER) == "1",
            target=target,
            started=started,
        )
        if not response.prepared:
            _mark(response)
        return response

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
    app.router.add_post(
        PEER_PREFIX + "/control/{kind:llm|mcp}/{id}/{action:drain|undrain|shutdown}",
        control_handler,
    )


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
