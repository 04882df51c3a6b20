"""Connector metrics (`infero_worker_*`), built on an injected registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from infero.common.metrics import register_build_info


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
        register_build_info(registry, "infero-llm")
