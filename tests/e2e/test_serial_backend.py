"""Issue 14: a backend that cuts a running request when another arrives (llama-cpp-python).

`MAX_CONCURRENCY=auto` learns that it takes one request at a time, so the server queues the
others and every concurrent openai SDK stream comes back whole."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from infero.worker.runtime import Connector
from infero.worker.settings import WorkerSettings
from support.backend import serving
from support.serial_backend import WHOLE, Advertises, SerialBackend
from support.server import RunningServer, running_server

API_KEY = "client-secret"
CLIENTS = 4


@dataclass
class Setup:
    server: RunningServer
    backend: SerialBackend
    connector: Connector
    client: openai.AsyncOpenAI


@asynccontextmanager
async def setup(advertises: Advertises, **worker: Any) -> AsyncIterator[Setup]:
    backend = SerialBackend(advertises)
    async with (
        serving(backend),
        running_server(client_key="ck", api_key=API_KEY) as server,
    ):
        settings = WorkerSettings.model_validate(
            {
                "server_url": server.ws_url,
                "client_key": "ck",
                "client_id": "w1",
                "completion_base_url": backend.url,
                **worker,
            }
        )
        connector = Connector(settings)
        task = asyncio.create_task(connector.run())
        client = openai.AsyncOpenAI(base_url=server.url + "/api/v1", api_key=API_KEY, max_retries=0)
        try:
            async with asyncio.timeout(10):
                await server.wait_for(lambda: server.fleet.get_live("w1") is not None)
            yield Setup(server, backend, connector, client)
        finally:
            backend.release.set()
            await client.close()
            connector.request_stop()
            async with asyncio.timeout(10):
                await task


async def _chat(client: openai.AsyncOpenAI) -> str:
    stream = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


async def _concurrent_answers(s: Setup) -> list[str]:
    """CLIENTS streams at once; the backend holds until every one reached the server and
    each request the server dispatched reached the backend."""
    worker = s.server.fleet.workers["w1"]
    scheduler = s.server.embedded.scheduler
    calls = [asyncio.create_task(_chat(s.client)) for _ in range(CLIENTS)]
    await s.server.wait_for(lambda: worker.inflight + scheduler.queue_len("m") == CLIENTS)
    async with s.backend.arrived:
        await s.backend.arrived.wait_for(lambda: s.backend.started == worker.inflight)
    s.backend.release.set()
    return list(await asyncio.gather(*calls))


@pytest.mark.parametrize("advertises", ["props", "openapi"])
async def test_concurrent_streams_through_a_one_at_a_time_backend_come_back_whole(
    advertises: Advertises,
) -> None:
    async with setup(advertises) as s, asyncio.timeout(30):
        assert s.server.fleet.workers["w1"].capacity == 1
        assert s.connector.status_doc().max_concurrency == 1
        answers = await _concurrent_answers(s)
        assert answers == [WHOLE] * CLIENTS
        assert s.backend.most_running == 1
        assert s.backend.interrupted == 0


async def test_a_fixed_capacity_above_what_the_backend_takes_cuts_answers() -> None:
    """What `auto` prevents: with MAX_CONCURRENCY=2 the backend cuts a running stream short."""
    async with setup("nothing", max_concurrency=2) as s, asyncio.timeout(30):
        assert s.server.fleet.workers["w1"].capacity == 2
        answers = await _concurrent_answers(s)
        assert s.backend.interrupted >= 1
        assert any(answer != WHOLE for answer in answers)


async def test_a_changed_slot_count_is_learned_at_the_next_poll_and_pushed_to_the_server() -> None:
    async with setup("props") as s, asyncio.timeout(30):
        assert s.server.fleet.workers["w1"].capacity == 1
        s.backend.slots = 3
        await s.connector.monitor.probe_once()
        await s.server.wait_for(lambda: s.server.fleet.workers["w1"].capacity == 3)
        assert s.connector.status_doc().max_concurrency == 3
