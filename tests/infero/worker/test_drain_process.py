"""A real `infero llm` process steered through the server: drain is a reversible pause."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import openai

from support.backend import ControlledBackend, serving
from support.connector import connector_process
from support.server import RunningServer, running_server

STARTUP = 20.0
"""Seconds for a fresh Python process to import infero and register (busy 2-core machine)."""


def status_is(server: RunningServer, status: str) -> Callable[[], bool]:
    """`server.wait_for` predicate: worker `w-proc` is linked with `status`."""
    return lambda: (
        "w-proc" in server.fleet.workers and server.fleet.workers["w-proc"].status == status
    )


async def test_a_connector_process_drained_by_the_server_stays_linked_and_undrain_resumes() -> None:
    async with (
        running_server(client_key="ck", api_key="ak", operator_key="op") as server,
        serving(ControlledBackend()) as backend,
        connector_process(server.ws_url, backend.url, "w-proc") as proc,
        aiohttp.ClientSession(headers={"Authorization": "Bearer op"}) as http,
    ):
        client = openai.AsyncOpenAI(base_url=server.url + "/api/v1", api_key="ak", max_retries=0)
        steer = f"{server.url}/api/workers/w-proc/"
        async with asyncio.timeout(STARTUP):
            await server.wait_for(status_is(server, "idle"))
        async with asyncio.timeout(10):
            async with http.post(steer + "drain") as resp:
                assert resp.status == 202
                assert await resp.json() == {"id": "w-proc", "action": "drain", "accepted": True}
            await server.wait_for(status_is(server, "draining"))
            async with http.get(f"{server.url}/api/state") as resp:
                state = await resp.json()
            assert [(w["id"], w["status"]) for w in state["workers"]] == [("w-proc", "draining")]
            async with http.post(steer + "undrain") as resp:
                assert resp.status == 202
            await server.wait_for(status_is(server, "idle"))
            assert proc.returncode is None
            stream = await client.chat.completions.create(
                model="fixed", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream])
            assert text == "Hello"
            async with http.post(steer + "shutdown") as resp:
                assert resp.status == 202
            assert await proc.wait() == 0
        await client.close()
