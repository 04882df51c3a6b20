"""A connector with several SERVER_URLs moves to the next server when its server goes away."""

from __future__ import annotations

import asyncio
import contextlib

import openai

from infero.worker.runtime import Connector
from infero.worker.settings import WorkerSettings
from support.backend import ControlledBackend, serving
from support.server import running_server


async def test_a_connector_moves_to_the_next_server_url_when_its_server_stops() -> None:
    backend = ControlledBackend(models=("demo",))
    async with serving(backend), contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(running_server(client_key="ck"))
        async with running_server(client_key="ck") as second:
            settings = WorkerSettings.model_validate(
                {
                    "server_url": f"{first.ws_url}, {second.ws_url}",
                    "client_key": "ck",
                    "client_id": "w1",
                    "completion_base_url": backend.url,
                    "reconnect": True,
                }
            )
            connector = Connector(settings)
            task = asyncio.create_task(connector.run())
            client = openai.AsyncOpenAI(
                base_url=second.url + "/api/v1", api_key="none", max_retries=0
            )
            try:
                async with asyncio.timeout(10):
                    await first.wait_for(lambda: first.status("w1") not in (None, "gone"))
                    assert second.status("w1") is None
                    await stack.aclose()  # the first server stops: its links close
                    await second.wait_for(lambda: second.status("w1") not in (None, "gone"))
                    assert connector.link_client.url == second.ws_url
                    answer = await client.chat.completions.create(
                        model="demo", messages=[{"role": "user", "content": "hi"}]
                    )
                    assert answer.choices[0].message.content
            finally:
                await client.close()
                connector.request_stop()
                async with asyncio.timeout(5):
                    await task
