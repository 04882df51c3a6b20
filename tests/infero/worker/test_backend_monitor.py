"""Model discovery (OpenAI and Ollama styles) and the backend monitor's health schedule."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from infero.protocol import link
from infero.worker.backend import BackendDown, Discovery, discover, ollama_root
from infero.worker.monitor import BackendMonitor
from support.linkfakes import CHAT, FakeBackend, ServerFactory, Stack


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def backend_url(aiohttp_server: ServerFactory, backend: FakeBackend) -> str:
    server: TestServer = await aiohttp_server(backend.app())
    return f"http://127.0.0.1:{server.port}/v1/"


async def test_openai_style_discovery_lists_model_ids_with_the_bearer_key(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    backend = FakeBackend(models=["a", "b/c:1"])
    base = await backend_url(aiohttp_server, backend)
    found = await discover(session, base, "secret", "openai")
    assert found == Discovery("openai", ("a", "b/c:1"))
    assert backend.discovery_auth == ["Bearer secret"]


async def test_ollama_discovery_uses_api_tags_at_the_root(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    backend = FakeBackend(models=["llama3:8b"], ollama_only=True)
    base = await backend_url(aiohttp_server, backend)
    assert await discover(session, base, "", "ollama") == Discovery("ollama", ("llama3:8b",))


async def test_auto_tries_openai_then_ollama(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    openai_like = await backend_url(aiohttp_server, FakeBackend(models=["x"]))
    ollama_like = await backend_url(aiohttp_server, FakeBackend(models=["y"], ollama_only=True))
    assert (await discover(session, openai_like, "", "auto")).kind == "openai"
    assert await discover(session, ollama_like, "", "auto") == Discovery("ollama", ("y",))


async def test_discovery_needs_a_2xx_json_answer(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    async def not_json(_: web.Request) -> web.Response:
        return web.Response(text="<html>")

    app = web.Application()
    app.router.add_get("/v1/models", not_json)
    server: TestServer = await aiohttp_server(app)
    with pytest.raises(BackendDown, match="not JSON"):
        await discover(session, f"http://127.0.0.1:{server.port}/v1", "", "openai")
    down = await backend_url(aiohttp_server, FakeBackend(down=True))
    with pytest.raises(BackendDown, match="HTTP 503"):
        await discover(session, down, "", "auto")


def test_ollama_root_strips_v1_and_trailing_slashes() -> None:
    assert ollama_root("http://h:11434/v1/") == "http://h:11434"
    assert ollama_root("http://h:11434") == "http://h:11434"


async def test_monitor_retries_a_down_backend_on_the_backoff_schedule_then_polls() -> None:
    answers: list[Discovery | None] = [None] * 11 + [Discovery("openai", ("m",))]
    changes: list[bool] = []

    async def probe() -> Discovery:
        answer = answers.pop(0)
        if answer is None:
            raise BackendDown("connection refused")
        return answer

    monitor = BackendMonitor(
        probe, poll_interval=60, on_change=lambda: changes.append(monitor.healthy)
    )
    delays = [await monitor.probe_once() for _ in range(12)]
    assert delays == [1, 1, 1, 5, 5, 5, 15, 15, 15, 30, 30, 60]
    assert changes == [False, True]
    assert monitor.models == ("m",)


async def test_monitor_keeps_models_visible_while_down_and_reports_changes() -> None:
    answers: list[Any] = [
        Discovery("openai", ("a",)),
        BackendDown("refused"),
        Discovery("openai", ("a",)),
        Discovery("openai", ("a", "b")),
        Discovery("openai", ("a", "b")),
    ]
    changes: list[tuple[bool, tuple[str, ...]]] = []

    async def probe() -> Discovery:
        answer = answers.pop(0)
        if isinstance(answer, BackendDown):
            raise answer
        assert isinstance(answer, Discovery)
        return answer

    monitor = BackendMonitor(
        probe,
        poll_interval=60,
        on_change=lambda: changes.append((monitor.healthy, monitor.models)),
    )
    for _ in range(5):
        await monitor.probe_once()
    assert changes == [
        (True, ("a",)),
        (False, ("a",)),
        (True, ("a",)),
        (True, ("a", "b")),
    ]


async def _never(_: float) -> None:
    await asyncio.Event().wait()


@pytest.fixture
async def stack(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> AsyncIterator[Stack]:
    s = Stack(aiohttp_server)
    yield s
    await s.close()


async def test_connector_reports_not_ready_and_recovery_and_model_changes_at_once(
    stack: Stack,
) -> None:
    stack.backend.down = True
    connector = await stack.start(max_concurrency=4, connector_args={"sleep": _never})
    hello = await stack.connected()
    assert (hello.status, hello.max_concurrency, hello.models) == ("not_ready", 0, [])
    assert connector.status_doc().state == "not_ready"
    stack.backend.down = False
    await connector.monitor.probe_once()
    async with asyncio.timeout(5):
        update = await stack.server.next_frame(link.StatusUpdate)
    assert (update.status, update.max_concurrency, update.models) == ("ready", 4, ["m1"])
    stack.backend.models = ["m1", "m2"]
    await connector.monitor.probe_once()
    async with asyncio.timeout(5):
        update = await stack.server.next_frame(link.StatusUpdate)
    assert update.models == ["m1", "m2"]
    stack.backend.down = True
    await connector.monitor.probe_once()
    async with asyncio.timeout(5):
        update = await stack.server.next_frame(link.StatusUpdate)
    assert (update.status, update.max_concurrency, update.models) == ("not_ready", 0, ["m1", "m2"])
    assert "HTTP 503" in update.last_error


async def test_static_models_are_advertised_instead_of_discovered_ones(stack: Stack) -> None:
    await stack.start(models="alpha, beta")
    hello = await stack.connected()
    assert hello.models == ["alpha", "beta"]
    assert hello.status == "ready"


async def test_an_ollama_root_url_is_relayed_under_v1(stack: Stack) -> None:
    stack.backend.ollama_only = True
    connector = await stack.start(base_path="")
    hello = await stack.connected()
    assert hello.backend == "ollama"
    assert connector.relay_base_url() == stack.backend_url + "/v1"
    await stack.server.request(1, "/chat/completions", CHAT)
    async with asyncio.timeout(5):
        end = await stack.server.next_frame(link.End)
    assert end.error is None
