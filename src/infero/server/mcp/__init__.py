"""The MCP broker: `/api/mcp/connect` for relays and `/api/mcp/id/{id}` for MCP clients."""

from __future__ import annotations

from aiohttp import web

from infero.server import keys
from infero.server.linkserver import LinkEndpoint
from infero.server.mcp import forward, resource
from infero.server.mcp.broker import Broker, Limits
from infero.server.mcp.metrics import McpMetrics
from infero.server.metrics import REGISTRY as METRICS_REGISTRY
from infero.server.settings import ServerSettings

BROKER = web.AppKey("mcp_broker", Broker)
"""The broker (its `relays` table lists the connected relays)."""

ROUTE = "/api/mcp/id/{id}"


def setup(app: web.Application, settings: ServerSettings) -> None:
    """Mount the MCP routes on `app` (relay control: `infero.server.control`)."""
    shared = app[keys.SHARED]
    lifecycle = app[keys.LIFECYCLE]
    relays = shared.relays
    holder: list[McpMetrics] = []
    broker = Broker(
        relays,
        keyring=app[keys.KEYRING],
        lifecycle=lifecycle,
        limits=Limits(
            max_req_bytes=settings.broker_max_req_bytes,
            body_timeout=settings.body_timeout,
            max_resp_bytes=settings.broker_max_resp_bytes,
            max_concurrency=settings.broker_max_concurrency_per_client,
            call_timeout=settings.broker_call_timeout,
        ),
        bodies=app[keys.BODIES],
        metrics=lambda: holder[0] if holder else None,
    )
    app[BROKER] = broker
    endpoint = LinkEndpoint(
        kind="mcp",
        handler=shared.link_handler("mcp"),
        client_key=settings.client_key,
        lifecycle=lifecycle,
        heartbeat_interval=settings.heartbeat_interval,
        dead_after=settings.link_dead_after,
        claim=relays.claim,
    )
    endpoint.mount(app, "/api/mcp/connect")
    for method in ("POST", "GET", "DELETE"):
        app.router.add_route(method, ROUTE, broker.handle)
    if settings.redis_addr:
        forward.mount_home(app, broker.handle_forwarded)
    resource.mount(app)

    async def register_metrics(app: web.Application) -> None:
        if METRICS_REGISTRY in app:
            holder.append(McpMetrics(app[METRICS_REGISTRY], relays.gauges))

    app.on_startup.append(register_metrics)
