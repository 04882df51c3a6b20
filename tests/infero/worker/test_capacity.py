"""`MAX_CONCURRENCY=auto`: what each runtime is recognised by, and when it is asked again."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from infero.worker.backend import Discovery, discover
from infero.worker.capacity import (
    LLAMA_CPP_PYTHON,
    OLLAMA,
    UNKNOWN,
    VLLM,
    CapacityLearner,
    identify,
)

ServerFactory = Callable[..., Awaitable[TestServer]]
OPENAI = Discovery("openai", ("m",))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def _serve(aiohttp_server: ServerFactory, routes: dict[str, Any]) -> tuple[str, list[str]]:
    """A backend answering `routes` (path -> JSON) at its root; returns its /v1 URL and the
    paths asked."""
    asked: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        asked.append(request.path)
        if request.path not in routes:
            return web.Response(status=404)
        return web.json_response(routes[request.path])

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}/v1", asked


async def test_llama_cpp_slots_come_from_props(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    url, asked = await _serve(aiohttp_server, {"/props": {"total_slots": 4}})
    learned = await identify(session, url, "", OPENAI)
    assert (learned.value, learned.runtime) == (4, "llama.cpp")
    assert asked == ["/props"]


@pytest.mark.parametrize("slots", [0, -1, True, "4", 1_000_000, None])
async def test_an_unusable_slot_count_is_not_believed(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, slots: object
) -> None:
    url, _ = await _serve(aiohttp_server, {"/props": {"total_slots": slots}})
    assert await identify(session, url, "", OPENAI) == UNKNOWN


async def test_ollama_vllm_and_llama_cpp_python_get_their_documented_capacity(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    ollama, _ = await _serve(aiohttp_server, {"/api/version": {"version": "0.20.3"}})
    assert await identify(session, ollama, "", OPENAI) == OLLAMA
    assert await identify(session, ollama, "", Discovery("ollama", ("m",))) == OLLAMA
    vllm, asked = await _serve(
        aiohttp_server, {"/v1/models": {"data": [{"id": "m", "owned_by": "vllm"}]}}
    )
    found = await discover(session, vllm, "", "openai")
    assert found.owners == {"vllm"}
    assert await identify(session, vllm, "", found) == VLLM
    assert asked == ["/v1/models"]
    title = {"info": {"title": "🦙 llama.cpp Python API", "version": "0.3.16"}}
    python, _ = await _serve(aiohttp_server, {"/openapi.json": title})
    assert await identify(session, python, "", OPENAI) == LLAMA_CPP_PYTHON
    silent, asked = await _serve(aiohttp_server, {})
    assert await identify(session, silent, "", OPENAI) == UNKNOWN
    assert asked == ["/props", "/api/version", "/openapi.json"]
    assert (OLLAMA.value, VLLM.value, LLAMA_CPP_PYTHON.value, UNKNOWN.value) == (1, 256, 1, 2)


async def test_a_backend_is_identified_again_only_after_being_down_or_changing_models(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    url, asked = await _serve(aiohttp_server, {"/api/version": {"version": "1"}})
    learner = CapacityLearner("auto")
    assert await learner.learn(session, url, "", OPENAI)
    assert learner.current == OLLAMA
    assert not await learner.learn(session, url, "", OPENAI)
    assert len(asked) == 2
    learner.backend_down()
    assert not await learner.learn(session, url, "", OPENAI)
    assert not await learner.learn(session, url, "", Discovery("openai", ("m", "n")))
    assert len(asked) == 6


async def test_llama_cpp_slots_are_read_at_every_poll_and_kept_when_props_fails(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    routes: dict[str, Any] = {"/props": {"total_slots": 1}}
    url, asked = await _serve(aiohttp_server, routes)
    learner = CapacityLearner("auto")
    assert await learner.learn(session, url, "", OPENAI)
    routes["/props"] = {"total_slots": 3}
    assert await learner.learn(session, url, "", OPENAI)
    assert (learner.value, learner.current.runtime) == (3, "llama.cpp")
    del routes["/props"]
    assert not await learner.learn(session, url, "", OPENAI)
    assert learner.value == 3
    assert asked == ["/props"] * 3


async def test_a_configured_capacity_asks_the_backend_nothing(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    url, asked = await _serve(aiohttp_server, {"/props": {"total_slots": 8}})
    learner = CapacityLearner(3)
    assert not await learner.learn(session, url, "", OPENAI)
    assert (learner.value, learner.current.runtime) == (3, "configured")
    assert asked == []
