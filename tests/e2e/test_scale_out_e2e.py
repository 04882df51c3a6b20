"""Two server instances on a real Redis, a real `infero llm` linked to A, the openai SDK at B."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import openai

from support.backend import FIXED_EVENTS, HELD_FIRST, ControlledBackend, serving
from support.connector import connector_process
from support.fleet import STARTUP, client_of, instance, redis_server, remote_status

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


async def test_b_relays_a_real_connector_on_a_byte_for_byte_cancels_and_drains(
    tmp_path: Path,
) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A", operator_key="op") as a,
        instance(redis.url, "B", operator_key="op") as b,
        serving(ControlledBackend()) as backend,
        connector_process(a.ws_url, backend.url, "w-proc"),
        aiohttp.ClientSession() as http,
        client_of(b) as client,
    ):
        async with asyncio.timeout(STARTUP):  # a fresh process: longer than wait_for's bound
            await b.shared.changes.wait_for(lambda: remote_status(b, "w-proc") == "idle")
        async with asyncio.timeout(20):
            body = {"model": "fixed", "stream": True, "messages": MESSAGES}
            raw = {}
            for server in (a, b):
                async with http.post(server.url + "/api/v1/chat/completions", json=body) as resp:
                    raw[server.url] = await resp.read()
            assert raw[a.url] == raw[b.url] == b"".join(FIXED_EVENTS)
            stream = await client.chat.completions.create(
                model="fixed", messages=MESSAGES, stream=True
            )
            assert "".join([c.choices[0].delta.content or "" async for c in stream]) == "Hello"

            held = {"model": "held", "stream": True, "messages": MESSAGES}
            resp = await http.post(b.url + "/api/v1/chat/completions", json=held)
            assert await resp.content.readuntil(b"\n\n") == HELD_FIRST
            resp.close()
            await backend.cancelled.wait()

            steer = {"Authorization": "Bearer op"}
            async with http.post(b.url + "/api/workers/w-proc/drain", headers=steer) as answer:
                assert answer.status == 202
            await b.wait_for(lambda: remote_status(b, "w-proc") == "draining")
            await a.wait_for(lambda: a.status("w-proc") == "draining")
