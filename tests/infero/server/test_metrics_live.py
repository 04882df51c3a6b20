"""`/metrics` of the real server, fed by real requests through a scripted connector."""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from infero.protocol import link as lp
from support.connector import scripted_connector
from support.server import running_server


async def _scrape(http: aiohttp.ClientSession, url: str) -> dict[str, Metric]:
    async with http.get(url + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {family.name: family for family in text_string_to_metric_families(text)}


def _value(family: Metric, sample_name: str, **labels: str) -> float:
    for sample in family.samples:
        if sample.name == sample_name and sample.labels == labels:
            return sample.value
    raise AssertionError(f"no sample {sample_name}{labels} in {family.samples}")


async def test_relayed_and_rejected_requests_and_connectors_show_in_metrics() -> None:
    async with (
        running_server(api_key="k") as server,
        scripted_connector(server.url, id="w1", models=["m1"], max_concurrency=2) as connector,
        aiohttp.ClientSession(headers={"Authorization": "Bearer k"}) as http,
    ):
        call = asyncio.create_task(
            http.post(server.url + "/api/v1/chat/completions", json={"model": "m1"})
        )
        async with asyncio.timeout(5):
            incoming = await connector.next_request()
            await connector.reply(
                incoming.id, b"{}", usage=lp.Usage(prompt_tokens=3, completion_tokens=5)
            )
            response = await call
            await response.read()
            response.release()
        async with http.post(
            server.url + "/api/v1/chat/completions", json={"model": "nobody-serves-this"}
        ) as unknown:
            assert unknown.status == 404

        families = await _scrape(http, server.url)

    requests = families["infero_model_requests"]
    assert _value(requests, "infero_model_requests_total", model="m1", outcome="success") == 1
    tokens = families["infero_model_tokens"]
    assert _value(tokens, "infero_model_tokens_total", model="m1", kind="in") == 3
    assert _value(tokens, "infero_model_tokens_total", model="m1", kind="out") == 5
    duration = families["infero_request_duration_seconds"]
    assert _value(duration, "infero_request_duration_seconds_count", worker_id="w1", model="m1")
    ttfb = families["infero_time_to_first_byte_seconds"]
    assert _value(ttfb, "infero_time_to_first_byte_seconds_count", model="m1") == 1
    rejected = families["infero_requests_rejected"]
    assert _value(rejected, "infero_requests_rejected_total", reason="model_not_found") == 1
    assert _value(families["infero_connectors_connected"], "infero_connectors_connected") == 1
    assert _value(families["infero_queue_depth"], "infero_queue_depth", model="m1") == 0
