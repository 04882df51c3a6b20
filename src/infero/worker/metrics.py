"""Connector metrics (`infero_worker_*`), built on an injected registry."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from infero.common.buildinfo import BUILD


class WorkerMetrics:
    """The series the seed lists for `infero llm`, plus `infero_build_info`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.connected_to_server = Gauge(
            "infero_worker_connected_to_server",
            "1 while the link to the server is up.",
            registry=registry,
        )
        self.connected_to_backend = Gauge(
            "infero_worker_connected_to_backend",
            "1 while the backend answers model discovery.",
            registry=registry,
        )
        self.current_jobs = Gauge(
            "infero_worker_current_jobs", "Requests being served now.", registry=registry
        )
        self.max_concurrency = Gauge(
            "infero_worker_max_concurrency",
            "Requests this connector serves at once (0 while the backend is down).",
            registry=registry,
        )
        self.jobs_started = Counter(
            "infero_worker_jobs_started", "Requests accepted.", registry=registry
        )
        self.jobs_succeeded = Counter(
            "infero_worker_jobs_succeeded",
            "Requests relayed to the end (any HTTP status).",
            registry=registry,
        )
        self.jobs_failed = Counter(
            "infero_worker_jobs_failed",
            "Requests that failed (backend unreachable, broken answer, timeout).",
            registry=registry,
        )
        self.job_duration = Histogram(
            "infero_worker_job_duration_seconds",
            "Time from start to end of a relayed request.",
            registry=registry,
        )
        build = Gauge(
            "infero_build_info",
            "Build of this process (value is always 1).",
            ["component", "version", "sha", "date"],
            registry=registry,
        )
        build.labels("infero-llm", BUILD.version, BUILD.sha, BUILD.date).set(1)


def create_metrics_app(registry: CollectorRegistry) -> web.Application:
    """`GET /metrics` in the Prometheus text format."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app
