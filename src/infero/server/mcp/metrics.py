"""Prometheus series of the MCP broker, on the app's registry (see docs/metrics.md).

Labels stay bounded: relay ids go through the shared `Bounded` cap, and methods are
folded into the MCP method names (anything else is `other`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from infero.server.mcp.relays import RelayGauges
from infero.server.metrics import LATENCY_BUCKETS, MAX_SERIES, Bounded

CallOutcome = Literal[
    "success", "error", "unauthorized", "rejected", "too_large", "timeout", "cancelled"
]

KNOWN_METHODS = frozenset(
    {
        "initialize",
        "ping",
        "server/discover",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "notifications/initialized",
        "notifications/cancelled",
        "notifications/progress",
        "notifications/roots/list_changed",
        "response",
        "listen",
        "delete",
    }
)


def method_label(method: str) -> str:
    """The metrics label for a JSON-RPC method (bounded set)."""
    return method if method in KNOWN_METHODS else "other"


class McpMetrics:
    """Calls by relay, method and outcome; call durations by method; relay/session gauges.

    The gauges are read at scrape time from `gauges` (the relay table's own figures), never
    from a built `mcp` state.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        gauges: Callable[[], RelayGauges],
        *,
        max_series: int = MAX_SERIES,
    ) -> None:
        evicted = Counter(
            "infero_mcp_series_evicted",
            "MCP series dropped because a labelled family reached its cap.",
            registry=registry,
        )
        self.calls = Bounded(
            Counter(
                "infero_mcp_calls",
                "MCP messages posted to relays, by relay, method and outcome.",
                ["relay", "method", "outcome"],
                registry=registry,
            ),
            max_series,
            evicted,
        )
        self.duration = Histogram(
            "infero_mcp_call_duration_seconds",
            "Time from an MCP POST to the end of its answer, by method.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        registry.register(_McpGauges(gauges))

    def call(self, relay: str, method: str, outcome: CallOutcome, duration: float | None) -> None:
        """Count one MCP POST (GET and DELETE use the methods `listen` and `delete`)."""
        label = method_label(method)
        self.calls.labels(relay, label, outcome).inc()
        if duration is not None:
            self.duration.labels(label).observe(duration)


class _McpGauges:
    """Relays, sessions and calls in flight, read from the relay table at scrape time."""

    def __init__(self, gauges: Callable[[], RelayGauges]) -> None:
        self._gauges = gauges

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        relays, sessions, inflight = self._families()
        figures = self._gauges()
        relays.add_metric([], figures.relays)
        sessions.add_metric([], figures.sessions)
        inflight.add_metric([], figures.inflight)
        return relays, sessions, inflight

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("infero_mcp_relays", "Connected MCP relays."),
            GaugeMetricFamily("infero_mcp_sessions", "Live MCP client sessions through relays."),
            GaugeMetricFamily("infero_mcp_calls_inflight", "MCP calls in flight."),
        )
