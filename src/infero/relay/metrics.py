"""Prometheus series of `infero mcp` (served on METRICS_PORT; see docs/metrics.md)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from infero.common.metrics import register_build_info

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class RelayMetrics:
    """Link and provider health, exchanges by outcome, and process metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        register_build_info(registry, "infero-mcp")
        self.connected_to_server = Gauge(
            "infero_mcp_relay_connected_to_server",
            "1 while the link to the server is up.",
            registry=registry,
        )
        self.provider_ready = Gauge(
            "infero_mcp_relay_provider_ready",
            "1 while the MCP provider answers the probe.",
            registry=registry,
        )
        self.calls_inflight = Gauge(
            "infero_mcp_relay_calls_inflight",
            "MCP calls (POSTs with requests) being relayed; MCP_MAX_INFLIGHT bounds them.",
            registry=registry,
        )
        self.sessions = Gauge(
            "infero_mcp_relay_sessions",
            "Client sessions open through the stdio/SSE facade (0 for http providers).",
            registry=registry,
        )
        self.draining = Gauge(
            "infero_mcp_relay_draining",
            "1 while the relay takes no new calls (drain or shutdown).",
            registry=registry,
        )
        self.inflight = Gauge(
            "infero_mcp_relay_exchanges_inflight",
            "MCP exchanges (calls and listening streams) being relayed.",
            registry=registry,
        )
        self.exchanges = Counter(
            "infero_mcp_relay_exchanges",
            "MCP exchanges relayed to the provider, by outcome.",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("success", "error", "cancelled", "refused"):
            self.exchanges.labels(outcome)
        self.duration = Histogram(
            "infero_mcp_relay_exchange_duration_seconds",
            "Time from the server's request to the end of the provider's answer.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
