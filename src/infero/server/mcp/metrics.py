"""Prometheus series of the MCP broker, on the app's registry (see docs/metrics.md).

Labels stay bounded: relay ids go through the shared `Bounded` cap, and methods are
folded into the MCP method names (anything else is `other`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from infero.protocol.state import McpState
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
    """Calls by relay, method and outcome; call durations by method; relay/session gauges."""

    def __init__(
        self,
        registry: CollectorRegistry,
        state: Callable[[], McpState],
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
        registry.register(_McpGauges(state))

    def call(self, relay: str, method: str, outcome: CallOutcome, duration: float | None) -> None:
        """Count one MCP POST (GET and DELETE use the methods `listen` and `delete`)."""
        label = method_label(method)
        self.calls.labels(relay, label, outcome).inc()
        if duration is not None:
            self.duration.labels(label).observe(duration)


class _McpGauges:
    """Relays and sessions, read from the registry at scrape time."""

    def __init__(self, state: Callable[[], McpState]) -> None:
        self._state = state

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        relays, sessions, inflight = self._families()
        state = self._state()
        relays.add_metric([], len(state.clients))
        sessions.add_metric([], len(state.sessions))
        inflight.add_metric([], sum(c.inflight for c in state.clients))
        return relays, sessions, inflight

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("infero_mcp_relays", "Connected MCP relays."),
            GaugeMetricFamily("infero_mcp_sessions", "Live MCP client sessions through relays."),
            GaugeMetricFamily("infero_mcp_calls_inflight", "MCP calls in flight."),
        )
