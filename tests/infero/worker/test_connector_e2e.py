"""The real server, the real connector and the demo backend, used with the openai SDK.

A connector's slot stays taken until the connector ended the call, not until the client left:
the openai SDK closes its connection 0.1 s after `data: [DONE]`, and a backend that keeps its
answer open longer (llama.cpp with one slot) makes the connector end the call after that. A
waiter must then get the slot once the connector is free, never a `busy` refusal (502).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import openai
import pytest
from aiohttp import web

from infero.demo.backend import DemoConfig, create_app
from infero.worker.runtime import Connector
from infero.worker.settings import WorkerSettings
from support.backend import LingeringBackend
from support.linkfakes import FakeBackend
from support.server import RunningServer, running_server


@dataclass
class Stack:
    server: RunningServer
    connector: Connector
    client: openai.AsyncOpenAI


@asynccontextmanager
async def stack(
    *, backend: FakeBackend | LingeringBackend | None = None, **connector_settings: object
) -> AsyncIterator[Stack]:
    app = backend.app() if backend else create_app(DemoConfig(models=("demo", "demo:7b")))
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    backend_url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        async with running_server(client_key="ck", api_key="ak", operator_key="ok") as server:
            settings = WorkerSettings.model_validate(
                {
                    "server_url": server.ws_url,
                    "client_key": "ck",
                    "client_id": "w-e2e",
                    "completion_base_url": backend_url,
                    **connector_settings,
                }
            )
            connector = Connector(settings)
            task = asyncio.create_task(connector.run())
            client = openai.AsyncOpenAI(base_url=server.url + "/api/v1", api_key="ak")
            try:
                async with asyncio.timeout(5):
                    await connector.connected.wait()
                    await server.wait_for(lambda: server.status("w-e2e") not in (None, "gone"))
                yield Stack(server, connector, client)
            finally:
                await client.close()
                connector.request_stop()
                async with asyncio.timeout(5):
                    assert await task == 0
    finally:
        await runner.cleanup()


async def test_streaming_chat_flows_token_by_token_through_server_and_connector() -> None:
    async with stack() as s, asyncio.timeout(5):
        stream = await s.client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            max_tokens=5,
        )
        parts = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert "".join(parts) == "This answer comes from infero's"


async def test_a_backend_dying_mid_event_gives_the_sdk_its_chunks_then_an_api_error() -> None:
    events = [
        b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m1",'
        b'"choices":[{"index":0,"delta":{"content":"' + word + b'"},"finish_reason":null}]}\n\n'
        for word in (b"Hel", b"lo", b"!")
    ]
    backend = FakeBackend(models=["m1"], broken=events[0] + events[1] + events[2][:50])
    async with stack(backend=backend) as s, asyncio.timeout(5):
        stream = await s.client.with_options(max_retries=0).chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = aiter(stream)
        assert (await anext(chunks)).choices[0].delta.content == "Hel"
        assert (await anext(chunks)).choices[0].delta.content == "lo"
        with pytest.raises(openai.APIError) as failed:
            await anext(chunks)
    assert failed.value.message.startswith("Upstream failure (backend_error): backend answer broke")


async def test_non_streaming_chat_and_models_list_work() -> None:
    async with stack() as s, asyncio.timeout(5):
        done = await s.client.chat.completions.create(
            model="demo:7b", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        models = [m.id async for m in s.client.models.list()]
    assert done.choices[0].message.content == "This answer comes"
    assert sorted(models) == ["demo", "demo:7b"]


async def test_shutdown_during_a_stream_tells_the_server_and_lets_the_stream_finish() -> None:
    backend = FakeBackend(models=["m1"], hold=True)
    async with stack(backend=backend, drain_timeout=-1) as s, asyncio.timeout(5):
        stream = await s.client.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        await backend.entered.wait()
        s.connector.shutdown(by="test")

        def draining() -> bool:
            return s.server.status("w-e2e") == "draining"

        await s.server.wait_for(draining)
        backend.release.set()
        chunks = [chunk async for chunk in stream]
        await s.connector.stopped.wait()
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3


async def test_operator_drains_and_undrains_the_connector_through_the_server(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    backend = FakeBackend(models=["m1"], hold=True)
    async with stack(backend=backend, drain_timeout=-1) as s, asyncio.timeout(5):
        stream = await s.client.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        await backend.entered.wait()
        async with aiohttp.ClientSession() as http:
            url = f"{s.server.url}/api/workers/w-e2e/drain"
            async with http.post(url, headers={"Authorization": "Bearer ak"}) as resp:
                assert resp.status == 403
            async with http.post(url, headers={"Authorization": "Bearer ok"}) as resp:
                assert resp.status == 202
            await s.server.wait_for(lambda: s.connector.draining)
            url = f"{s.server.url}/api/workers/w-e2e/undrain"
            async with http.post(url, headers={"Authorization": "Bearer ok"}) as resp:
                assert resp.status == 202

            def ready_again() -> bool:
                return s.server.status("w-e2e") in ("idle", "busy")

            await s.server.wait_for(ready_again)
        backend.release.set()
        chunks = [chunk async for chunk in stream]
        assert not s.connector.draining
        assert not s.connector.stopped.is_set()
    assert chunks[-1].usage is not None
    assert "asks to drain (by server operator 'operator')" in caplog.text


async def _ask(client: openai.AsyncOpenAI) -> str:
    stream = await client.chat.completions.create(
        model="m1", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


async def _settled(s: Stack) -> None:
    """Every slot given back: the connector ended all its calls, nobody waits."""
    await s.server.wait_for(
        lambda: (
            (w := s.server.worker("w-e2e")) is not None
            and w.inflight == 0
            and s.server.queue_len("m1") == 0
        )
    )


def _counted_once(s: Stack, requests: int) -> None:
    worker = s.server.worker("w-e2e")
    assert worker is not None
    assert (worker.processed_total, worker.failures_total, worker.cancelled_total) == (
        requests,
        0,
        0,
    )


async def test_sequential_streams_never_find_the_connector_busy() -> None:
    backend = LingeringBackend()
    async with stack(backend=backend, max_concurrency=1) as s, asyncio.timeout(10):
        for _ in range(4):
            assert await _ask(s.client) == "hi"
        await _settled(s)
        _counted_once(s, 4)
    assert backend.most == 1


async def test_concurrent_streams_wait_for_the_connector_to_end_its_call() -> None:
    backend = LingeringBackend()
    async with stack(backend=backend, max_concurrency=1) as s, asyncio.timeout(15):
        answers = await asyncio.gather(*(_ask(s.client) for _ in range(6)))
        assert answers == ["hi"] * 6
        await _settled(s)
        _counted_once(s, 6)
    assert backend.most == 1
