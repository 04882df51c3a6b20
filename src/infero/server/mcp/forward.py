"""MCP over the peer link: a caller at instance B, its relay linked to instance A.

B checks the caller (access, its own drain, body limits, the JSON-RPC envelope) and forwards
the MCP HTTP exchange to A as a stream on its peer link (peerlink.py): the method, path
`/mcp/<relay id>[?query]`, the headers the broker forwards to relays and the request id. A
serves it with its broker, as a call of its own minus the access check: limits, session
bookkeeping, call counters and metrics all stay at the relay's home. B copies A's answer byte
for byte (SSE included), granting credit as its caller reads; the caller leaving B cancels the
stream, which cancels the call at A and at the relay. See docs/protocol.md ("Peer channel")
and docs/scale-out.md.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from urllib.parse import quote, unquote

from aiohttp import web
from multidict import CIMultiDict

from infero.protocol import mcp as pm
from infero.server.exchange import Exchange, ExchangeFailed, is_event_stream, response_headers
from infero.server.mcp.fleet import RemoteRelay
from infero.server.middleware import REQUEST_ID_KEY
from infero.server.peer import PEER_HOME
from infero.server.peerhome import PeerStream

logger = logging.getLogger(__name__)

PREFIX = "/mcp/"
"""Stream paths of MCP exchanges on the peer link: `/mcp/<relay id, quoted>[?query]`."""

GONE = "the MCP relay went away during the call"
"""What the caller reads when the relay's home instance breaks off (as for a lost relay)."""

UNREACHABLE = "the instance the MCP relay is linked to cannot be reached"


def _kept(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The home's answer headers minus what this instance sets itself."""
    return [(k, v) for k, v in response_headers(headers) if k.lower() != "x-request-id"]


def unavailable(message: str, request_id: pm.RequestId | None) -> web.Response:
    """503 MCP_PROVIDER_UNAVAILABLE, as the broker answers for a relay that went away."""
    return web.Response(
        status=503,
        body=pm.error_body("MCP_PROVIDER_UNAVAILABLE", message, request_id=request_id),
        content_type="application/json",
        headers={"Retry-After": "5"},
    )


async def forward(
    request: web.Request,
    remote: RemoteRelay,
    body: bytes | bytearray,
    headers: list[tuple[str, str]],
    request_ids: list[pm.RequestId],
) -> web.StreamResponse:
    """Send the exchange to the relay's home and copy its answer to the caller."""
    query = request.rel_url.raw_query_string
    path = PREFIX + quote(remote.id, safe="") + (f"?{query}" if query else "")
    first_id = request_ids[0] if request_ids else None
    link = remote.client.link(remote.address)
    try:
        exchange = await link.open_exchange(
            method=request.method,
            path=path,
            headers=headers,
            body=body,
            request_id=request.get(REQUEST_ID_KEY, ""),
        )
    except ExchangeFailed as failure:
        logger.warning("mcp relay %s: instance %s: %s", remote.id, remote.instance, failure)
        return unavailable(UNREACHABLE, first_id)
    try:
        try:
            head = await exchange.head(None)
        except ExchangeFailed as failure:
            logger.warning("mcp relay %s: instance %s: %s", remote.id, remote.instance, failure)
            return unavailable(UNREACHABLE, first_id)
        kept = _kept(head.headers)
        if not is_event_stream(kept):
            try:
                data = await _whole(exchange)
            except ExchangeFailed as failure:
                logger.warning("mcp relay %s: answer broke off: %s", remote.id, failure)
                return unavailable(GONE, first_id)
            return web.Response(status=head.status, body=data, headers=CIMultiDict(kept))
        response = web.StreamResponse(status=head.status)
        for key, value in kept:
            response.headers.add(key, value)
        await response.prepare(request)
        tail = b""
        while True:
            try:
                chunk = await exchange.chunk(None)
            except ExchangeFailed as failure:
                logger.warning("mcp relay %s: stream broke off: %s", remote.id, failure)
                if request_ids:
                    events = pm.sse_error_events("MCP_PROVIDER_UNAVAILABLE", GONE, request_ids)
                    await response.write(pm.close_partial_event(tail) + events)
                return response
            if chunk is None:
                break
            await response.write(chunk)
            await exchange.consumed(len(chunk))
            tail = (tail + chunk[-4:])[-4:]
        await response.write_eof()
        return response
    finally:
        await exchange.cancel()  # the home cancels the call at the relay unless it ended
        link.forget(exchange)


async def _whole(exchange: Exchange) -> bytes:
    """The rest of the answer (credit granted as it comes)."""
    parts: list[bytes] = []
    while (chunk := await exchange.chunk(None)) is not None:
        parts.append(chunk)
        await exchange.consumed(len(chunk))
    return b"".join(parts)


def mount_home(
    app: web.Application,
    handle: Callable[[web.Request, str], Awaitable[web.StreamResponse]],
) -> None:
    """Serve exchanges other instances forward to this instance's relays (`handle`: the
    broker without its access check) on the peer link."""

    async def from_peer(stream: PeerStream) -> web.StreamResponse:
        tail = stream.frame.path.removeprefix(PREFIX)
        request = stream.request("/api/mcp/id/" + tail, with_body=True)
        return await handle(request, unquote(tail.split("?", 1)[0]))

    app[PEER_HOME].routes[PREFIX] = from_peer
