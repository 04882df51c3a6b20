"""MCP over the peer channel: a caller at instance B, its relay linked to instance A.

B checks the caller (access, its own drain, body limits, the JSON-RPC envelope) and forwards
the MCP HTTP exchange to A: `POST|GET|DELETE {A}/api/peer/v1/mcp/<relay id>[?query]` with
`X-Infero-Peer-Key`, the headers the broker forwards to relays and `X-Request-Id`. A serves
it with its broker, as a call of its own minus the access check: limits, session bookkeeping,
call counters and metrics all stay at the relay's home. B copies A's answer byte for byte (SSE
included); the caller leaving B closes the peer request, which cancels the call at A and at
the relay. See docs/protocol.md ("Peer channel") and docs/scale-out.md.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from infero.protocol import mcp as pm
from infero.server.exchange import is_event_stream, response_headers
from infero.server.mcp.fleet import RemoteRelay
from infero.server.middleware import REQUEST_ID, REQUEST_ID_KEY
from infero.server.peer import PEER_PREFIX
from infero.server.peerhome import authorized
from infero.server.peerlink import KEY_HEADER

logger = logging.getLogger(__name__)

ROUTE = PEER_PREFIX + "/mcp/{id}"

GONE = "the MCP relay went away during the call"
"""What the caller reads when the relay's home instance breaks off (as for a lost relay)."""

UNREACHABLE = "the instance the MCP relay is linked to cannot be reached"

READ = 64 * 1024
"""Most bytes read from the home at once (aiohttp's flow control bounds what is buffered)."""


def _kept(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The home's answer headers minus what this instance sets itself."""
    return [
        (k, v)
        for k, v in response_headers(headers)
        if not k.lower().startswith("x-infero-") and k.lower() != "x-request-id"
    ]


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
    url = f"{remote.address}{PEER_PREFIX}/mcp/{remote.id}" + (f"?{query}" if query else "")
    sent = [*headers, (KEY_HEADER, remote.client.peer_key)]
    request_id = request.get(REQUEST_ID_KEY)
    if request_id:
        sent.append((REQUEST_ID, request_id))
    first_id = request_ids[0] if request_ids else None
    try:
        answer = await remote.client.session.request(
            request.method, url, data=bytes(body) if body else None, headers=sent
        )
    except (aiohttp.ClientError, OSError) as failure:
        logger.warning("mcp relay %s: instance %s: %s", remote.id, remote.instance, failure)
        return unavailable(UNREACHABLE, first_id)
    done = False
    try:
        kept = _kept(list(answer.headers.items()))
        if not is_event_stream(kept):
            try:
                data = await answer.read()
            except (aiohttp.ClientError, OSError) as failure:
                logger.warning("mcp relay %s: answer broke off: %s", remote.id, failure)
                return unavailable(GONE, first_id)
            done = True
            return web.Response(status=answer.status, body=data, headers=CIMultiDict(kept))
        response = web.StreamResponse(status=answer.status)
        for key, value in kept:
            response.headers.add(key, value)
        await response.prepare(request)
        tail = b""
        while True:
            try:
                chunk = await answer.content.readany()
            except (aiohttp.ClientError, OSError) as failure:
                logger.warning("mcp relay %s: stream broke off: %s", remote.id, failure)
                if request_ids:
                    events = pm.sse_error_events("MCP_PROVIDER_UNAVAILABLE", GONE, request_ids)
                    await response.write(pm.close_partial_event(tail) + events)
                return response
            if not chunk:
                break
            await response.write(chunk)
            tail = (tail + chunk[-4:])[-4:]
        done = True
        await response.write_eof()
        return response
    finally:
        if done:
            answer.release()
        else:
            answer.close()  # the home cancels the call at the relay


def mount_home(
    app: web.Application,
    handle: Callable[[web.Request], Awaitable[web.StreamResponse]],
    peer_key: str,
) -> None:
    """Serve exchanges other instances forward to this instance's relays (`handle`: the
    broker without its access check)."""

    async def from_peer(request: web.Request) -> web.StreamResponse:
        if not authorized(request, peer_key):
            return web.json_response({"error": {"message": "bad peer key"}}, status=401)
        return await handle(request)

    for method in ("POST", "GET", "DELETE"):
        app.router.add_route(method, ROUTE, from_peer)
