"""Issue 14: the Responses API across a fleet, with the openai SDK and two connectors whose
backends each store their own responses; then the same across two instances sharing a real
Redis (issue 10: the affinity table lives in Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import openai
import pytest

from infero.worker.runtime import Connector
from infero.worker.settings import WorkerSettings
from support.backend import serving
from support.fleet import instance, redis_server
from support.server import RunningServer, running_server
from support.stored_responses import StoredResponsesBackend

API_KEY = "client-secret"
ON_W2 = {"X-Infero-Worker": "w2"}


@dataclass
class Fleet:
    server: RunningServer
    client: openai.AsyncOpenAI
    backends: dict[str, StoredResponsesBackend]
    connectors: dict[str, tuple[Connector, asyncio.Task[int]]] = field(default_factory=dict)

    async def stop(self, worker_id: str) -> None:
        connector, task = self.connectors.pop(worker_id)
        connector.request_stop()
        async with asyncio.timeout(10):
            await task
            await self.server.wait_for(lambda: self.server.status(worker_id) in (None, "gone"))


@asynccontextmanager
async def fleet() -> AsyncIterator[Fleet]:
    """Server + connectors w1 and w2 serving model `m`, on backends named a and b.

    Both idle, an unpinned request goes to w1 (the first registered): only the affinity
    sends a request about a response made on w2 there.
    """
    async with AsyncExitStack() as stack:
        backends = {
            "w1": await stack.enter_async_context(serving(StoredResponsesBackend("a"))),
            "w2": await stack.enter_async_context(serving(StoredResponsesBackend("b"))),
        }
        server = await stack.enter_async_context(running_server(client_key="ck", api_key=API_KEY))
        client = openai.AsyncOpenAI(base_url=server.url + "/api/v1", api_key=API_KEY, max_retries=0)
        stack.push_async_callback(client.close)
        f = Fleet(server, client, backends)
        for worker_id, backend in backends.items():
            settings = WorkerSettings.model_validate(
                {
                    "server_url": server.ws_url,
                    "client_key": "ck",
                    "client_id": worker_id,
                    "completion_base_url": backend.url,
                    "max_concurrency": 4,
                }
            )
            connector = Connector(settings)
            f.connectors[worker_id] = (connector, asyncio.create_task(connector.run()))
            # One after the other: w1 registers first, so unpinned requests go to w1.
            async with asyncio.timeout(10):
                await server.wait_for(lambda w=worker_id: server.status(w) not in (None, "gone"))
        try:
            yield f
        finally:
            for worker_id in list(f.connectors):
                await f.stop(worker_id)


async def test_every_stored_response_route_lands_on_the_connector_that_created_it() -> None:
    async with fleet() as f, asyncio.timeout(20):
        client = f.client
        on_a = await client.responses.create(model="m", input="hello")
        on_b = await client.responses.create(model="m", input="hi", extra_headers=ON_W2)
        assert on_a.output_text == "a turn 1: hello"
        assert on_b.output_text == "b turn 1: hi"
        # Unpinned, these would go to w1; the backend of w2 alone holds on_b.
        assert (await client.responses.retrieve(on_b.id)).output_text == "b turn 1: hi"
        assert (await client.responses.retrieve(on_a.id)).output_text == "a turn 1: hello"
        items = await client.responses.input_items.list(on_b.id)
        assert [item.id for item in items.data] == [f"in_{on_b.id}"]
        follow_up = await client.responses.create(
            model="m", input="and then?", previous_response_id=on_b.id
        )
        assert follow_up.output_text == "b turn 2: and then?"
        third = await client.responses.create(
            model="m", input="more", previous_response_id=follow_up.id
        )
        assert third.output_text == "b turn 3: more"

        background = await client.responses.create(
            model="m", input="slow", background=True, extra_headers=ON_W2
        )
        assert background.status == "in_progress"
        cancelled = await client.responses.cancel(background.id)
        assert cancelled.status == "cancelled"

        await client.responses.delete(on_b.id)
        assert on_b.id not in f.backends["w2"].responses
        with pytest.raises(openai.NotFoundError) as forgotten:
            await client.responses.retrieve(on_b.id)
        assert forgotten.value.code == "response_not_found"


async def test_a_streamed_response_is_routable_by_the_id_of_its_created_event() -> None:
    async with fleet() as f, asyncio.timeout(20):
        stream = await f.client.responses.create(
            model="m", input="streamed", stream=True, extra_headers=ON_W2
        )
        events = [event async for event in stream]
        assert events[0].type == "response.created"
        response_id = events[0].response.id
        assert response_id.startswith("resp_b_")
        again = await f.client.responses.retrieve(response_id)
        assert again.output_text == "b turn 1: streamed"
        replay = await f.client.responses.retrieve(response_id, stream=True)
        replayed = [e.delta async for e in replay if e.type == "response.output_text.delta"]
        assert replayed == ["b turn 1: streamed"]
        follow_up = await f.client.responses.create(
            model="m", input="next", previous_response_id=response_id, stream=True
        )
        texts = [e.delta async for e in follow_up if e.type == "response.output_text.delta"]
        assert texts == ["b turn 2: next"]


async def test_unknown_ids_and_departed_connectors_are_clean_404s() -> None:
    async with fleet() as f, asyncio.timeout(20):
        with pytest.raises(openai.NotFoundError) as unknown:
            await f.client.responses.retrieve("resp_never_made")
        assert unknown.value.code == "response_not_found"
        on_b = await f.client.responses.create(model="m", input="x", extra_headers=ON_W2)
        await f.stop("w2")
        with pytest.raises(openai.NotFoundError) as gone:
            await f.client.responses.retrieve(on_b.id)
        assert gone.value.code == "response_connector_gone"
        assert "w2" in gone.value.message
        with pytest.raises(openai.NotFoundError) as follow_up:
            await f.client.responses.create(model="m", input="y", previous_response_id=on_b.id)
        assert follow_up.value.code == "response_connector_gone"
        # The rest of the fleet keeps serving.
        assert (await f.client.responses.create(model="m", input="z")).output_text.startswith(
            "a turn 1"
        )


@dataclass
class TwoInstances:
    a: RunningServer
    b: RunningServer
    at_a: openai.AsyncOpenAI
    at_b: openai.AsyncOpenAI
    backends: dict[str, StoredResponsesBackend]


@asynccontextmanager
async def two_instances(folder: Path) -> AsyncIterator[TwoInstances]:
    """Instances A and B on one real Redis; w1 (backend a) linked to A, w2 (backend b) to B.

    Both serve model `m` and each instance prefers its own connector: only the affinity in
    Redis sends a request about a response made on the other instance's connector there.
    """
    async with AsyncExitStack() as stack:
        redis = await stack.enter_async_context(redis_server(folder))
        backends = {
            "w1": await stack.enter_async_context(serving(StoredResponsesBackend("a"))),
            "w2": await stack.enter_async_context(serving(StoredResponsesBackend("b"))),
        }
        a = await stack.enter_async_context(instance(redis.url, "A", api_key=API_KEY))
        b = await stack.enter_async_context(instance(redis.url, "B", api_key=API_KEY))
        clients = []
        for server in (a, b):
            client = openai.AsyncOpenAI(
                base_url=server.url + "/api/v1", api_key=API_KEY, max_retries=0
            )
            stack.push_async_callback(client.close)
            clients.append(client)
        for worker_id, server in (("w1", a), ("w2", b)):
            settings = WorkerSettings.model_validate(
                {
                    "server_url": server.ws_url,
                    "client_key": "ck",
                    "client_id": worker_id,
                    "completion_base_url": backends[worker_id].url,
                    "max_concurrency": 4,
                }
            )
            connector = Connector(settings)
            task = asyncio.create_task(connector.run())

            async def stop(
                connector: Connector = connector, task: asyncio.Task[int] = task
            ) -> None:
                connector.request_stop()
                async with asyncio.timeout(10):
                    await task

            stack.push_async_callback(stop)
        async with asyncio.timeout(15):
            for server in (a, b):
                await server.wait_for(lambda s=server: {s.status("w1"), s.status("w2")} == {"idle"})
        yield TwoInstances(a, b, clients[0], clients[1], backends)


async def test_a_response_made_at_a_is_found_at_b_whatever_instance_is_called(
    tmp_path: Path,
) -> None:
    async with two_instances(tmp_path) as f, asyncio.timeout(30):
        made = await f.at_a.responses.create(model="m", input="hello")
        assert made.output_text == "a turn 1: hello"
        # B prefers its own w2 (backend b, which does not hold it): the affinity sends it to w1.
        assert (await f.at_b.responses.retrieve(made.id)).output_text == "a turn 1: hello"
        items = await f.at_b.responses.input_items.list(made.id)
        assert [item.id for item in items.data] == [f"in_{made.id}"]
        follow_up = await f.at_b.responses.create(
            model="m", input="and then?", previous_response_id=made.id
        )
        assert follow_up.output_text == "a turn 2: and then?"
        # The follow-up was made through B's peer route: A finds it too.
        third = await f.at_a.responses.create(
            model="m", input="more", previous_response_id=follow_up.id
        )
        assert third.output_text == "a turn 3: more"

        background = await f.at_a.responses.create(model="m", input="slow", background=True)
        assert (await f.at_b.responses.cancel(background.id)).status == "cancelled"

        await f.at_b.responses.delete(made.id)
        assert made.id not in f.backends["w1"].responses
        for client in (f.at_a, f.at_b):
            with pytest.raises(openai.NotFoundError) as forgotten:
                await client.responses.retrieve(made.id)
            assert forgotten.value.code == "response_not_found"


async def test_a_streamed_response_made_through_a_peer_is_followed_up_anywhere(
    tmp_path: Path,
) -> None:
    async with two_instances(tmp_path) as f, asyncio.timeout(30):
        pinned = {"X-Infero-Worker": "w2"}  # called at A, served by B's w2
        stream = await f.at_a.responses.create(
            model="m", input="streamed", stream=True, extra_headers=pinned
        )
        events = [event async for event in stream]
        assert events[0].type == "response.created"
        previous = events[0].response.id
        assert previous.startswith("resp_b_")
        # A prefers its own w1 and B has never seen these ids: both follow the chain to w2.
        for client, turn in ((f.at_a, 2), (f.at_b, 3), (f.at_a, 4)):
            follow_up = await client.responses.create(
                model="m", input="next", previous_response_id=previous, stream=True
            )
            events = [event async for event in follow_up]
            texts = [e.delta for e in events if e.type == "response.output_text.delta"]
            assert texts == [f"b turn {turn}: next"]
            assert events[0].type == "response.created"
            previous = events[0].response.id
        replay = await f.at_b.responses.retrieve(previous, stream=True)
        replayed = [e.delta async for e in replay if e.type == "response.output_text.delta"]
        assert replayed == ["b turn 4: next"]
