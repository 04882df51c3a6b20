"""Prometheus pieces every infero process shares: `infero_build_info` and a `/metrics` app."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge
from prometheus_client.exposition import generate_latest

from infero.common.buildinfo import BUILD


def register_build_info(registry: CollectorRegistry, component: str) -> None:
    """Add `infero_build_info{component,version,sha,date} 1` to `registry`."""
    build = Gauge(
        "infero_build_info",
        "Build of this process (value is always 1).",
        ["component", "version", "sha", "date"],
        registry=registry,
    )
    build.labels(component, BUILD.version, BUILD.sha, BUILD.date).set(1)


def create_metrics_app(registry: CollectorRegistry) -> web.Application:
    """`GET /metrics` in the Prometheus text format."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app
