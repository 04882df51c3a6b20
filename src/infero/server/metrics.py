"""Prometheus metrics of the server: `/metrics`, from a registry owned by the app.

Request series are fed by the core's `EventBus`; fleet gauges (queue depth, connectors) are
read from the fleet's and the scheduler's own counters at scrape time (never a snapshot).
Every labelled family keeps at most `max_series` series: when a new label set would exceed
it, the least recently updated series is dropped (and `infero_metrics_series_evicted_total`
counts it), so a churning fleet or a flood of model names cannot grow memory or scrape size
without bound. See docs/metrics.md.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar, get_args

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from infero.common.metrics import register_build_info
from infero.server import keys, tls
from infero.server.connections import server_runner
from infero.server.events import Outcome, RejectReason, RequestFinished, RequestRejected
from infero.server.registry import Counters
from infero.server.settings import ServerSettings
from infero.server.shared import FleetGauges

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""Classic Prometheus text format, understood by every scraper."""

MAX_SERIES = 1000
"""Default cap on series per labelled family."""

MAX_LABEL_LEN = 200
"""Longer label values (model names from connectors) are cut to this length."""

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
"""Seconds; LLM answers run from milliseconds (embeddings) to minutes (long generations)."""

QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)
"""The app's registry: other server modules (MCP) register their own collectors here."""


@dataclass(slots=True)
class MetricsListener:
    """The separate `/metrics` listener when METRICS_PORT differs from PORT."""

    runner: web.AppRunner | None = None

    @property
    def port(self) -> int | None:
        """Bound TCP port once started (useful when METRICS_PORT is 0)."""
        if self.runner is None:
            return None
        for address in self.runner.addresses:
            if isinstance(address, tuple):
                return int(address[1])
        return None


METRICS_LISTENER = web.AppKey("metrics_listener", MetricsListener)
"""Present only when metrics are served on their own port."""

M = TypeVar("M", bound=MetricWrapperBase)


class Bounded(Generic[M]):
    """A labelled metric that keeps at most `limit` series, dropping the least recently used.

    Labelled children are cached with their LRU entry, so a repeated label set costs one
    dict lookup instead of prometheus_client's `labels()` (lock, validation, lookup).
    """

    def __init__(self, metric: M, limit: int, evicted: Counter) -> None:
        self._metric = metric
        self._limit = limit
        self._evicted = evicted
        self._recent: OrderedDict[tuple[str, ...], M] = OrderedDict()

    def labels(self, *values: str) -> M:
        """The child for these label values (cut to MAX_LABEL_LEN), evicting if over the cap."""
        child = self._recent.get(values)
        if child is not None:
            self._recent.move_to_end(values)
            return child
        key = tuple(value[:MAX_LABEL_LEN] for value in values)
        child = self._recent.get(key)
        if child is not None:
            self._recent.move_to_end(key)
            return child
        child = self._metric.labels(*key)
        self._recent[key] = child
        if len(self._recent) > self._limit:
            oldest, _ = self._recent.popitem(last=False)
            self._metric.remove(*oldest)
            self._evicted.inc()
        return child


class ServerMetrics:
    """Request counters and histograms; an `EventBus` listener."""

    def __init__(self, registry: CollectorRegistry, *, max_series: int = MAX_SERIES) -> None:
        evicted = Counter(
            "infero_metrics_series_evicted",
            "Series dropped because a labelled family reached its cap.",
            registry=registry,
        )
        register_build_info(registry, "server")
        self.requests = Bounded(
            Counter(
                "infero_model_requests",
                "Requests relayed to a connector, by model and outcome.",
                ["model", "outcome"],
                registry=registry,
            ),
            max_series,
            evicted,
        )
        self.tokens = Bounded(
            Counter(
                "infero_model_tokens",
                "Tokens reported by connectors, by model and kind (in, out).",
                ["model", "kind"],
                registry=registry,
            ),
            max_series,
            evicted,
        )
        self.duration = Bounded(
            Histogram(
                "infero_request_duration_seconds",
                "Time from dispatch to the end of the answer.",
                ["worker_id", "model"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            max_series,
            evicted,
        )
        self.ttfb = Bounded(
            Histogram(
                "infero_time_to_first_byte_seconds",
                "Time from dispatch to the first byte of the answer.",
                ["model"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            max_series,
            evicted,
        )
        self.queue_wait = Bounded(
            Histogram(
                "infero_queue_wait_seconds",
                "Time a relayed request waited in its model's queue (0 when dispatched at once).",
                ["model"],
                buckets=QUEUE_BUCKETS,
                registry=registry,
            ),
            max_series,
            evicted,
        )
        self.rejected = Counter(
            "infero_requests_rejected",
            "Requests answered with an error by the server itself, by reason.",
            ["reason"],
            registry=registry,
        )
        for reason in get_args(RejectReason):
            self.rejected.labels(reason)
        self.relayed = Counter(
            "infero_requests_relayed",
            "Requests this instance relayed to a connector of another instance (REDIS_ADDR), "
            "by outcome; the instance that served them counts them in infero_model_requests.",
            ["outcome"],
            registry=registry,
        )
        self._relayed = {outcome: self.relayed.labels(outcome) for outcome in get_args(Outcome)}
        """The relayed counter's child of each outcome, looked up once (`labels()` takes a lock
        and validates its values on every call)."""

    def request_finished(self, event: RequestFinished) -> None:
        """Count a relayed request, its tokens and its timings."""
        self.requests.labels(event.model, event.outcome).inc()
        if event.tokens_in > 0:
            self.tokens.labels(event.model, "in").inc(event.tokens_in)
        if event.tokens_out > 0:
            self.tokens.labels(event.model, "out").inc(event.tokens_out)
        self.duration.labels(event.worker_id, event.model).observe(event.duration_s)
        self.queue_wait.labels(event.model).observe(event.queue_wait_s)
        if event.ttft_s is not None:
            self.ttfb.labels(event.model).observe(event.ttft_s)

    def request_rejected(self, event: RequestRejected) -> None:
        """Count a rejection by reason (the model is client input: never a label here)."""
        self.rejected.labels(event.reason).inc()

    def request_relayed(self, event: RequestFinished) -> None:
        """Count a request relayed to another instance (that instance counts the rest)."""
        self._relayed[event.outcome].inc()


class FleetCollector:
    """Gauges read from the fleet's own counters at scrape time."""

    def __init__(self, gauges: Callable[[], FleetGauges]) -> None:
        self._gauges = gauges

    def describe(self) -> Iterable[Metric]:
        """The families this collector yields (no samples; lets the registry spot clashes)."""
        return self._families().values()

    def collect(self) -> Iterable[Metric]:
        """Read the figures once and yield the gauges."""
        gauges = self._gauges()
        families = self._families()
        for model, (depth, oldest) in sorted(gauges.queues.items()):
            name = model[:MAX_LABEL_LEN]
            families["depth"].add_metric([name], depth)
            families["oldest"].add_metric([name], oldest)
        families["inflight"].add_metric([], gauges.inflight)
        families["connected"].add_metric([], gauges.connected)
        families["draining"].add_metric([], gauges.draining)
        return families.values()

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        return {
            "depth": GaugeMetricFamily(
                "infero_queue_depth", "Requests waiting in the queue, by model.", labels=["model"]
            ),
            "oldest": GaugeMetricFamily(
                "infero_queue_oldest_wait_seconds",
                "Age of the oldest waiting request, by model.",
                labels=["model"],
            ),
            "inflight": GaugeMetricFamily(
                "infero_requests_inflight", "Requests dispatched and not finished."
            ),
            "connected": GaugeMetricFamily("infero_connectors_connected", "Live LLM connectors."),
            "draining": GaugeMetricFamily(
                "infero_connectors_draining", "Live LLM connectors that are draining."
            ),
        }


class FleetTotalsCollector:
    """With REDIS_ADDR: the fleet's request counters as kept in Redis, the same on every
    instance (never sum them across instances), for at most `max_series` models."""

    def __init__(
        self, models: Callable[[], Mapping[str, Counters]], *, max_series: int = MAX_SERIES
    ) -> None:
        self._models = models
        self._max_series = max_series

    def describe(self) -> Iterable[Metric]:
        """The families this collector yields (no samples)."""
        return self._families()

    def collect(self) -> Iterable[Metric]:
        """Read the fleet's totals once and yield the counters."""
        requests, tokens = families = self._families()
        for name, c in sorted(self._models().items())[: self._max_series]:
            model = name[:MAX_LABEL_LEN]
            requests.add_metric([model, "success"], c.success_total)
            requests.add_metric([model, "error"], c.error_total)
            requests.add_metric([model, "cancelled"], c.cancelled_total)
            tokens.add_metric([model, "in"], c.tokens_in_total)
            tokens.add_metric([model, "out"], c.tokens_out_total)
        return families

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, CounterMetricFamily]:
        return (
            CounterMetricFamily(
                "infero_fleet_model_requests",
                "Requests served by the whole fleet (REDIS_ADDR), by model and outcome; the "
                "same on every instance.",
                labels=["model", "outcome"],
            ),
            CounterMetricFamily(
                "infero_fleet_model_tokens",
                "Tokens reported by the whole fleet's connectors (REDIS_ADDR), by model and "
                "kind; the same on every instance.",
                labels=["model", "kind"],
            ),
        )


def metrics_handler(registry: CollectorRegistry) -> Handler:
    """`GET /metrics` for `registry`."""

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE})

    return handle


def _separate_listener(
    listener: MetricsListener, handler: Handler, settings: ServerSettings, port: int
) -> Callable[[web.Application], AsyncIterator[None]]:
    host = settings.host

    async def serve(app: web.Application) -> AsyncIterator[None]:
        side = web.Application()
        side.router.add_get("/metrics", handler)
        runner = server_runner(side, settings)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, ssl_context=tls.context_of(app)).start()
        except OSError:
            await runner.cleanup()
            raise
        listener.runner = runner
        logger.info("metrics listening on %s port %s", host, listener.port)
        try:
            yield
        finally:
            listener.runner = None
            await runner.cleanup()

    return serve


def separate_port(settings: ServerSettings) -> int | None:
    """METRICS_PORT when it moves `/metrics` off the main listener (set and not PORT)."""
    return None if settings.metrics_port == settings.port else settings.metrics_port


def setup(
    app: web.Application,
    settings: ServerSettings,
    *,
    fleet_totals: Callable[[], Mapping[str, Counters]] | None = None,
) -> None:
    """Create the registry, subscribe to events and mount `/metrics`.

    `fleet_totals` (REDIS_ADDR): the fleet's counters per model, exposed as `infero_fleet_*`.
    `/metrics` is served by the app itself unless METRICS_PORT is set to another port than
    PORT; then a second listener on HOST:METRICS_PORT lives as long as the app does.
    """
    registry = CollectorRegistry()
    app[REGISTRY] = registry
    app[keys.EVENTS].subscribe(ServerMetrics(registry))
    registry.register(FleetCollector(app[keys.SHARED].gauges))
    if fleet_totals is not None:
        registry.register(FleetTotalsCollector(fleet_totals))
    handler = metrics_handler(registry)
    port = separate_port(settings)
    if port is None:
        app.router.add_get("/metrics", handler)
        return
    listener = MetricsListener()
    app[METRICS_LISTENER] = listener
    app.cleanup_ctx.append(_separate_listener(listener, handler, settings, port))
