"""The MCP broker: `/api/mcp/connect` for relays and `/api/mcp/id/{id}` for MCP clients."""

from __future__ import annotations

from aiohttp import web

from infero.server import control, keys
from infero.server.linkserver import Link, LinkEndpoint, shut_down_links
from infero.server.mcp.broker import Broker, Limits
from infero.server.mcp.metrics import McpMetrics
from infero.server.mcp.relays import RelayRegistry
from infero.server.metrics import REGISTRY as METRICS_REGISTRY
from infero.server.settings import ServerSettings

BROKER = web.AppKey("mcp_broker", Broker)
"""The broker (its `registry` lists the connected relays)."""

ROUTE = "/api/mcp/id/{id}"
RELAYS = "/api/mcp/relays"
"""Fleet control of relays: `POST /api/mcp/relays/{id}/drain|undrain|shutdown`."""


def setup(app: web.Application, settings: ServerSettings) -> None:
    """Mount the MCP routes on `app` and contribute `mcp` to the state snapshot."""
    fleet = app[keys.FLEET]
    lifecycle = app[keys.LIFECYCLE]
    registry = RelayRegistry(on_change=fleet.changes.bump)
    holder: list[McpMetrics] = []
    broker = Broker(
        registry,
        keyring=app[keys.KEYRING],
        lifecycle=lifecycle,
        limits=Limits(
            max_req_bytes=settings.broker_max_req_bytes,
            max_resp_bytes=settings.broker_max_resp_bytes,
            max_concurrency=settings.broker_max_concurrency_per_client,
            call_timeout=settings.broker_call_timeout,
        ),
        metrics=lambda: holder[0] if holder else None,
    )
    app[BROKER] = broker
    app[keys.MCP_STATE] = registry.state
    endpoint = LinkEndpoint(
        kind="mcp",
        handler=registry,
        client_key=settings.client_key,
        lifecycle=lifecycle,
        heartbeat_interval=settings.heartbeat_interval,
        dead_after=settings.link_dead_after,
    )
    app.router.add_get("/api/mcp/connect", endpoint.handle)
    control.mount(app, RELAYS, "relay", _relay_link(registry), app[keys.KEYRING])
    for method in ("POST", "GET", "DELETE"):
        app.router.add_route(method, ROUTE, broker.handle)

    async def register_metrics(app: web.Application) -> None:
        if METRICS_REGISTRY in app:
            holder.append(McpMetrics(app[METRICS_REGISTRY], registry.state))

    async def close_links(_: web.Application) -> None:
        await shut_down_links(relay.link for relay in registry.relays.values())

    app.on_startup.append(register_metrics)
    app.on_shutdown.append(close_links)


def _relay_link(registry: RelayRegistry) -> control.LinkLookup:
    def lookup(relay_id: str) -> Link | None:
        relay = registry.live(relay_id)
        return relay.link if relay is not None else None

    return lookup
