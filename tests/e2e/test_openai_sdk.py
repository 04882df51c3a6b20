"""Issue 2 end to end: the official openai SDK -> infero server -> infero llm -> fake backend."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import openai
import pytest

from infero.worker.runtime import Connector
from infero.worker.settings import WorkerSettings
from support.backend import FIXED_EVENTS, ControlledBackend, serving
from support.server import RunningServer, running_server

API_KEY = "client-secret"


@dataclass
class Stack:
    server: RunningServer
    backend: ControlledBackend
    client: openai.AsyncOpenAI
    connectors: dict[str, tuple[Connector, asyncio.Task[int]]] = field(default_factory=dict)

    async def add_connector(self, worker_id: str) -> Connector:
        settings = WorkerSettings.model_validate(
            {
                "server_url": self.server.ws_url,
                "client_key": "ck",
                "client_id": worker_id,
                "completion_base_url": self.backend.url,
                "max_concurrency": 4,
            }
        )
        connector = Connector(settings)
        task = asyncio.create_task(connector.run())
        self.connectors[worker_id] = (connector, task)
        async with asyncio.timeout(5):
            await connector.connected.wait()
            await self.server.wait_for(lambda: self.server.status(worker_id) not in (None, "gone"))
        return connector

    async def kill(self, worker_id: str) -> None:
        """Abrupt death: the connector's task is cancelled mid-work."""
        _, task = self.connectors.pop(worker_id)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@asynccontextmanager
async def stack(**server_settings: Any) -> AsyncIterator[Stack]:
    backend = ControlledBackend(models=("demo", "demo:7b"))
    async with (
        serving(backend),
        running_server(client_key="ck", api_key=API_KEY, **server_settings) as server,
    ):
        client = openai.AsyncOpenAI(base_url=server.url + "/api/v1", api_key=API_KEY, max_retries=0)
        s = Stack(server, backend, client)
        try:
            await s.add_connector("w1")
            yield s
        finally:
            backend.release.set()
            await client.close()
            for connector, task in s.connectors.values():
                connector.request_stop()
                async with asyncio.timeout(5):
                    await task


async def test_streamed_chat_is_relayed_byte_exact_and_parsed_by_the_sdk() -> None:
    async with stack() as s, asyncio.timeout(5):
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                s.server.url + "/api/v1/chat/completions",
                json={"model": "fixed", "stream": True, "messages": []},
                headers={"Authorization": f"Bearer {API_KEY}"},
            ) as resp,
        ):
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            assert await resp.read() == b"".join(FIXED_EVENTS)
        stream = await s.client.chat.completions.create(
            model="fixed", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(parts) == "Hello"


async def test_chat_completions_embeddings_and_responses_work_through_the_sdk() -> None:
    async with stack() as s, asyncio.timeout(5):
        chat = await s.client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert chat.choices[0].message.content
        assert chat.usage is not None
        assert chat.usage.completion_tokens == 3
        completion = await s.client.completions.create(model="demo", prompt="x", max_tokens=2)
        assert completion.choices[0].text
        embeddings = await s.client.embeddings.create(model="demo", input=["a", "b", "c"])
        assert len(embeddings.data) == 3
        response = await s.client.responses.create(model="demo", input="hi")
        assert response.output_text
        worker = s.server.worker("w1")
        assert worker is not None
        assert worker.processed_total == 4
        assert worker.failures_total == 0


async def test_models_list_and_detail_through_the_sdk() -> None:
    async with stack() as s, asyncio.timeout(5):
        models = await s.client.models.list()
        ids = [m.id async for m in models]
        assert ids == sorted(["demo", "demo:7b", "fixed", "held"])
        detail = await s.client.models.retrieve("demo:7b")
        assert detail.id == "demo:7b"
        assert detail.owned_by == s.connectors["w1"][0].name
        with pytest.raises(openai.NotFoundError):
            await s.client.models.retrieve("absent")


async def test_unknown_model_wrong_key_and_oversized_body_are_clean_sdk_errors() -> None:
    async with stack(max_body_bytes=4096) as s, asyncio.timeout(5):
        with pytest.raises(openai.NotFoundError) as missing:
            await s.client.chat.completions.create(model="nope", messages=[])
        assert missing.value.code == "model_not_found"
        bad = openai.AsyncOpenAI(base_url=s.server.url + "/api/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await bad.chat.completions.create(model="demo", messages=[])
        await bad.close()
        with pytest.raises(openai.APIStatusError) as too_big:
            await s.client.chat.completions.create(
                model="demo", messages=[{"role": "user", "content": "x" * 10_000}]
            )
        assert too_big.value.status_code == 413


async def test_connector_killed_mid_stream_gives_an_sdk_error_and_others_keep_serving() -> None:
    async with stack() as s, asyncio.timeout(5):
        stream = await s.client.chat.completions.create(
            model="held", messages=[], stream=True, extra_headers={"X-Infero-Worker": "w1"}
        )
        await s.add_connector("w2")
        chunks = aiter(stream)
        first = await anext(chunks)
        assert first.choices[0].delta.content == "wait"
        await s.kill("w1")
        with pytest.raises(openai.APIError):
            await anext(chunks)
        chat = await s.client.chat.completions.create(model="demo", messages=[], max_tokens=1)
        assert chat.choices[0].message.content


async def test_client_disconnect_cancels_the_backend_call() -> None:
    async with stack() as s, asyncio.timeout(5):
        stream = await s.client.chat.completions.create(model="held", messages=[], stream=True)
        first = await anext(aiter(stream))
        assert first.choices[0].delta.content == "wait"
        await s.backend.started.wait()
        await stream.close()
        await s.backend.cancelled.wait()
        await s.server.wait_for(lambda: getattr(s.server.worker("w1"), "inflight", -1) == 0)
