"""`create_app(settings)`: the whole public server as one aiohttp application."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from infero.common.settings import ConfigError
from infero.server import (
    control,
    dashboard,
    health,
    keys,
    mcp,
    metrics,
    models_api,
    openapi,
    peer,
    proxies,
    tls,
)
from infero.server import state as state_api
from infero.server.auth import KeyRing, load_keyring
from infero.server.bodies import BodyBudget
from infero.server.embedded import EmbeddedState
from infero.server.events import EventBus
from infero.server.federated import FederatedState
from infero.server.lifecycle import Lifecycle
from infero.server.linkserver import LinkEndpoint, shut_down_links
from infero.server.middleware import OriginPolicy, make_middleware, on_response_prepare
from infero.server.openai_api import ROUTES, OpenAIRelay
from infero.server.redisclient import connect
from infero.server.responses_affinity import (
    STORED_ROUTES,
    AffinityTable,
    StoredResponses,
    affinity_table,
)
from infero.server.settings import ServerSettings


def create_app(
    settings: ServerSettings,
    *,
    keyring: KeyRing | None = None,
    clock: Callable[[], float] = time.monotonic,
    affinity: AffinityTable | None = None,
) -> web.Application:
    """Build the server: OpenAI relay, links, state, health, control, and the others' parts.

    `affinity` records which connector created each stored response (Responses API);
    by default a table bounded by RESPONSE_AFFINITY_MAX/_RETENTION, in Redis with REDIS_ADDR,
    else in memory.
    Raises `ConfigError` when the API keys file, the TLS certificate or REDIS_ADDR is unusable
    (and, at start-up, `DuplicateInstance` when a live instance holds INSTANCE_ID).
    """
    keyring = keyring if keyring is not None else load_keyring(settings)
    lifecycle = Lifecycle()
    events = EventBus()
    embedded = EmbeddedState(
        gone_retention=settings.gone_retention,
        queue_max=settings.queue_max,
        lifecycle=lifecycle,
        events=events,
        clock=clock,
    )
    shared: EmbeddedState | FederatedState = embedded
    federated: FederatedState | None = None
    if settings.redis_addr:
        try:
            redis = connect(settings.redis_addr)
        except ValueError as bad:
            raise ConfigError(f"REDIS_ADDR is not a usable Redis URL: {bad}") from None
        shared = federated = FederatedState(
            local=embedded, settings=settings, redis=redis, on_duplicate=lifecycle.fail
        )
    origins = OriginPolicy(settings.allowed_origins)
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[make_middleware(keyring, origins, events)],
    )
    app.on_response_prepare.append(on_response_prepare)
    app[keys.SETTINGS] = settings
    app[keys.EVENTS] = events
    app[keys.KEYRING] = keyring
    app[keys.SHARED] = shared
    app[keys.LIFECYCLE] = lifecycle
    app[keys.BODIES] = bodies = BodyBudget(settings.max_held_body_bytes)

    if affinity is None:
        federated = shared if isinstance(shared, FederatedState) else None
        affinity = affinity_table(
            max_entries=settings.response_affinity_max,
            ttl=settings.response_affinity_retention,
            redis=federated.redis if federated is not None else None,
            degraded=federated.degraded if federated is not None else lambda: False,
            clock=clock,
        )
    relay = OpenAIRelay(
        settings,
        dispatcher=shared.dispatcher,
        lifecycle=lifecycle,
        events=events,
        affinity=affinity,
        bodies=bodies,
    )
    for route in ROUTES:
        app.router.add_post("/api/v1" + route, relay.handle)
    stored = StoredResponses(relay, affinity)
    for method, path in STORED_ROUTES:
        app.router.add_route(method, path, stored.handle)
    models_api.setup(app, shared)
    if federated is not None:
        home = OpenAIRelay(
            settings,
            dispatcher=federated.home_dispatcher,
            lifecycle=lifecycle,
            events=events,
            affinity=affinity,
            bodies=bodies,
        )
        peer.setup(
            app,
            peer_key=settings.peer_key,
            relay=home,
            steer=embedded.control.steer,
            door=federated,
            max_body=max(settings.max_body_bytes, settings.broker_max_req_bytes),
        )

    endpoint = LinkEndpoint(
        kind="llm",
        handler=shared.link_handler("llm"),
        client_key=settings.client_key,
        lifecycle=lifecycle,
        heartbeat_interval=settings.heartbeat_interval,
        dead_after=settings.link_dead_after,
        clock=clock,
        on_late=shared.changes.bump,
    )
    endpoint.mount(app, "/api/workers/connect", "/api/llm/connect")

    health.setup(app, shared, lifecycle)
    state_api.setup(app, shared, lifecycle)
    control.setup(app, shared.control, keyring)

    async def close_links(_: web.Application) -> None:
        lifecycle.stopping.set()
        shared.changes.bump()
        await shut_down_links(shared.local_links())

    app.on_shutdown.append(close_links)

    async def upkeep(_: web.Application) -> AsyncIterator[None]:
        if isinstance(shared, FederatedState):
            try:
                await shared.claim()  # before anything of this instance is written to Redis
            except ConfigError:
                await shared.redis.aclose()
                raise
        task = asyncio.create_task(shared.run(), name="shared-state")
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    app.cleanup_ctx.append(upkeep)

    mcp.setup(app, settings)
    tls.setup(app, settings)
    proxies.setup(app, settings)
    metrics.setup(
        app,
        settings,
        fleet_totals=shared.counters.models if isinstance(shared, FederatedState) else None,
    )
    dashboard.setup(app)
    openapi.setup(app, settings)
    return app
