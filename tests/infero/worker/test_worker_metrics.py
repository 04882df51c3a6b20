"""Connector metrics on METRICS_PORT, parsed with prometheus_client's parser."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from infero.protocol import link
from support.linkfakes import CHAT, ServerFactory, Stack


@pytest.fixture
async def stack(aiohttp_server: ServerFactory) -> AsyncIterator[Stack]:
    s = Stack(aiohttp_server)
    yield s
    await s.close()


async def scrape(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        text = await resp.text()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels or sample.name == "infero_build_info"
    }


async def test_metrics_count_jobs_and_report_connection_and_capacity(stack: Stack) -> None:
    registry = CollectorRegistry()
    connector = await stack.start(
        metrics_port=0, max_concurrency=3, connector_args={"registry": registry}
    )
    await stack.connected()
    await stack.server.request(1, "/chat/completions", CHAT)
    await stack.server.request(2, "/chat/completions", CHAT)
    async with asyncio.timeout(5):
        await stack.server.next_frame(link.End)
        await stack.server.next_frame(link.End)
    await stack.server.request(3, "/nowhere", b"")  # a 404 answer still counts as relayed
    async with asyncio.timeout(5):
        await stack.server.next_frame(link.End)
    values = await scrape(connector.metrics_url)
    assert values["infero_worker_connected_to_server"] == 1
    assert values["infero_worker_connected_to_backend"] == 1
    assert values["infero_worker_max_concurrency"] == 3
    assert values["infero_worker_current_jobs"] == 0
    assert values["infero_worker_jobs_started_total"] == 3
    assert values["infero_worker_jobs_succeeded_total"] == 3
    assert values["infero_worker_jobs_failed_total"] == 0
    assert values["infero_worker_job_duration_seconds_count"] == 3
    assert values["infero_build_info"] == 1


async def test_unreachable_backend_counts_as_a_failed_job(stack: Stack) -> None:
    connector = await stack.start(
        metrics_port=0, models="m1", completion_base_url="http://127.0.0.1:9/v1"
    )
    await stack.connected()
    await stack.server.request(1, "/chat/completions", CHAT)
    async with asyncio.timeout(5):
        await stack.server.next_frame(link.End)
    values = await scrape(connector.metrics_url)
    assert values["infero_worker_jobs_failed_total"] == 1
    assert values["infero_worker_connected_to_backend"] == 0
