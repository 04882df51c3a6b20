"""`/healthz` (the process is up) and `/readyz` (able to serve: not draining, a connector ready;
`degraded` when REDIS_ADDR is set but Redis is unreachable; a `reason` when the server drains
to stop by itself)."""

from __future__ import annotations

from aiohttp import web

from infero.server.lifecycle import Lifecycle
from infero.server.shared import SharedState


def setup(app: web.Application, shared: SharedState, lifecycle: Lifecycle) -> None:
    """Mount both probes (public, no key)."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if lifecycle.draining:
            body = {"status": "draining"}
            if lifecycle.failure:
                body["reason"] = lifecycle.failure
            return web.json_response(body, status=503)
        degraded = shared.degraded()
        if not shared.ready():
            status = "degraded" if degraded else "not_ready"
            return web.json_response({"status": status}, status=503)
        return web.json_response({"status": "degraded" if degraded else "ready"})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
