"""`/metrics`: request series from events, fleet gauges from counters, bounded labels."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpClient

from infero.common.buildinfo import BUILD
from infero.protocol import link as lp
from infero.server import keys, metrics
from infero.server.embedded import EmbeddedState
from infero.server.events import EventBus, RequestFinished, RequestRejected
from infero.server.lifecycle import Lifecycle
from infero.server.registry import Fleet, Worker, WorkerStats
from infero.server.settings import ServerSettings


def _app(
    settings: ServerSettings | None = None, clock: list[float] | None = None
) -> web.Application:
    """The pieces of create_app that metrics.setup relies on, and nothing else."""
    settings = settings or ServerSettings(host="127.0.0.1")
    app = web.Application()
    app[keys.SETTINGS] = settings
    app[keys.EVENTS] = EventBus()
    now = clock or [0.0]
    app[keys.SHARED] = EmbeddedState(
        gone_retention=300,
        queue_max=10,
        lifecycle=Lifecycle(),
        events=app[keys.EVENTS],
        clock=lambda: now[0],
    )
    metrics.setup(app, settings)
    return app


def _connector(fleet: Fleet, wid: str, models: list[str], **hello: Any) -> Worker:
    worker = Worker(
        lp.Hello(id=wid, models=models, max_concurrency=4, **hello), None, WorkerStats()
    )
    fleet.register(worker)
    return worker


def _finished(model: str = "llama3:8b", worker: str = "w1", **kw: object) -> RequestFinished:
    fields: dict[str, object] = {
        "model": model,
        "worker_id": worker,
        "outcome": "success",
        "status": 200,
        "duration_s": 0.2,
        "ttft_s": 0.05,
        "queue_wait_s": 0.0,
        "tokens_in": 5,
        "tokens_out": 7,
    }
    fields.update(kw)
    return RequestFinished(**fields)  # type: ignore[arg-type]


def _families(text: str) -> dict[str, Metric]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def _value(family: Metric, sample_name: str, **labels: str) -> float:
    for sample in family.samples:
        if sample.name == sample_name and sample.labels == labels:
            return sample.value
    raise AssertionError(f"no sample {sample_name}{labels} in {family.samples}")


async def _scrape(client: TestClient[web.Request, web.Application]) -> dict[str, Metric]:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return _families(await response.text())


async def test_metrics_page_reports_build_info_of_the_server(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(_app())
    families = await _scrape(client)
    build = families["infero_build_info"]
    assert build.type == "gauge"
    labels = {"component": "server", "version": BUILD.version, "sha": BUILD.sha, "date": BUILD.date}
    assert _value(build, "infero_build_info", **labels) == 1


async def test_finished_requests_count_by_model_outcome_tokens_and_timings(
    aiohttp_client: AiohttpClient,
) -> None:
    app = _app()
    client = await aiohttp_client(app)
    events = app[keys.EVENTS]
    events.request_finished(_finished())
    events.request_finished(_finished(outcome="error", tokens_in=0, tokens_out=0, ttft_s=None))
    events.request_finished(_finished(worker="w2", queue_wait_s=1.5, tokens_in=1, tokens_out=2))

    families = await _scrape(client)
    requests = families["infero_model_requests"]
    assert requests.type == "counter"
    total = "infero_model_requests_total"
    assert _value(requests, total, model="llama3:8b", outcome="success") == 2
    assert _value(requests, total, model="llama3:8b", outcome="error") == 1
    tokens = families["infero_model_tokens"]
    assert _value(tokens, "infero_model_tokens_total", model="llama3:8b", kind="in") == 6
    assert _value(tokens, "infero_model_tokens_total", model="llama3:8b", kind="out") == 9
    duration = families["infero_request_duration_seconds"]
    assert duration.type == "histogram"
    count = "infero_request_duration_seconds_count"
    assert _value(duration, count, worker_id="w1", model="llama3:8b") == 2
    assert _value(duration, count, worker_id="w2", model="llama3:8b") == 1
    ttfb = families["infero_time_to_first_byte_seconds"]
    assert _value(ttfb, "infero_time_to_first_byte_seconds_count", model="llama3:8b") == 2
    wait = families["infero_queue_wait_seconds"]
    assert _value(wait, "infero_queue_wait_seconds_count", model="llama3:8b") == 3
    assert _value(wait, "infero_queue_wait_seconds_sum", model="llama3:8b") == 1.5
    assert _value(wait, "infero_queue_wait_seconds_bucket", model="llama3:8b", le="1.0") == 2


async def test_rejections_count_by_reason_and_never_label_the_client_model(
    aiohttp_client: AiohttpClient,
) -> None:
    app = _app()
    client = await aiohttp_client(app)
    before = (await _scrape(client))["infero_requests_rejected"]
    assert _value(before, "infero_requests_rejected_total", reason="queue_full") == 0
    assert _value(before, "infero_requests_rejected_total", reason="model_not_found") == 0

    app[keys.EVENTS].request_rejected(RequestRejected(model="<made up>", reason="model_not_found"))

    text = await (await client.get("/metrics")).text()
    rejected = _families(text)["infero_requests_rejected"]
    assert _value(rejected, "infero_requests_rejected_total", reason="model_not_found") == 1
    assert "made up" not in text


async def test_fleet_gauges_are_read_from_the_fleet_and_the_queues_at_scrape_time(
    aiohttp_client: AiohttpClient,
) -> None:
    clock = [100.0]
    app = _app(clock=clock)
    client = await aiohttp_client(app)
    shared = app[keys.SHARED]
    assert isinstance(shared, EmbeddedState)
    fleet, scheduler = shared.fleet, shared.scheduler
    _connector(fleet, "w1", ["qwen"]).inflight = 3
    _connector(fleet, "w2", ["qwen"])
    _connector(fleet, "w3", ["qwen"])
    _connector(fleet, "w4", ["llama3:8b"], status="draining")
    fleet.workers["w3"].disconnected_at = 1.0
    _connector(fleet, "w5", ["qwen"])
    waiters = [scheduler.enqueue("llama3:8b") for _ in range(2)]
    clock[0] = 101.5

    families = await _scrape(client)
    depth = families["infero_queue_depth"]
    assert _value(depth, "infero_queue_depth", model="llama3:8b") == 2
    assert _value(depth, "infero_queue_depth", model="qwen") == 0
    oldest = families["infero_queue_oldest_wait_seconds"]
    assert _value(oldest, "infero_queue_oldest_wait_seconds", model="llama3:8b") == 1.5
    assert _value(families["infero_connectors_connected"], "infero_connectors_connected") == 4
    assert _value(families["infero_connectors_draining"], "infero_connectors_draining") == 1
    assert _value(families["infero_requests_inflight"], "infero_requests_inflight") == 3
    for waiter in waiters:
        scheduler.leave(waiter)


def test_a_labelled_family_keeps_at_most_max_series_dropping_the_least_recent() -> None:
    registry = CollectorRegistry()
    server = metrics.ServerMetrics(registry, max_series=2)
    server.request_finished(_finished(model="a"))
    server.request_finished(_finished(model="b"))
    server.request_finished(_finished(model="a"))  # `a` is now more recent than `b`
    server.request_finished(_finished(model="c"))

    families = _families(generate_latest(registry).decode())
    ttfb = families["infero_time_to_first_byte_seconds"]
    models = {s.labels["model"] for s in ttfb.samples if s.name.endswith("_count")}
    assert models == {"a", "c"}
    evicted = families["infero_metrics_series_evicted"]
    assert _value(evicted, "infero_metrics_series_evicted_total") > 0


def test_long_label_values_are_cut_and_negative_token_counts_ignored() -> None:
    registry = CollectorRegistry()
    server = metrics.ServerMetrics(registry)
    server.request_finished(_finished(model="m" * 5000, tokens_in=-4, tokens_out=-1))

    families = _families(generate_latest(registry).decode())
    requests = families["infero_model_requests"]
    (sample,) = [s for s in requests.samples if s.name == "infero_model_requests_total"]
    assert sample.labels["model"] == "m" * metrics.MAX_LABEL_LEN
    assert families["infero_model_tokens"].samples == []


def test_two_apps_in_one_process_have_separate_registries() -> None:
    first, second = _app(), _app()
    assert first[metrics.REGISTRY] is not second[metrics.REGISTRY]
    first[keys.EVENTS].request_finished(_finished())
    text = generate_latest(second[metrics.REGISTRY]).decode()
    requests = _families(text)["infero_model_requests"]
    assert not [s for s in requests.samples if s.name == "infero_model_requests_total"]


async def test_metrics_port_equal_to_port_serves_metrics_on_the_main_app(
    aiohttp_client: AiohttpClient,
) -> None:
    app = _app(ServerSettings(host="127.0.0.1", port=8080, metrics_port=8080))
    client = await aiohttp_client(app)
    assert metrics.METRICS_LISTENER not in app
    assert "infero_build_info" in await _scrape(client)


async def test_metrics_port_moves_metrics_to_their_own_listener_closed_with_the_app(
    aiohttp_client: AiohttpClient,
) -> None:
    app = _app(ServerSettings(host="127.0.0.1", port=8080, metrics_port=0))
    client = await aiohttp_client(app)
    listener = app[metrics.METRICS_LISTENER]
    port = listener.port
    assert port

    assert (await client.get("/metrics")).status == 404
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        assert "infero_build_info" in _families(await response.text())

    await client.close()
    assert listener.runner is None
    with pytest.raises(aiohttp.ClientConnectionError):
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics"),
        ):
            pass
