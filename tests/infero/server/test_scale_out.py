"""Several server instances on one real Redis act as one server (docs/scale-out.md).

A connector is linked to instance A only; the official openai SDK calls instance B.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import openai
import pydantic
import pytest
from redis import asyncio as aioredis

from infero.common.settings import ConfigError
from infero.protocol import link as lp
from infero.server.app import create_app
from infero.server.membership import MEMBERS, PREFIX, ConnectorSummary, Lease
from infero.server.peerlink import KEY_HEADER
from infero.worker.runtime import Connector
from infero.worker.settings import WorkerSettings
from support.backend import LingeringBackend, serving
from support.connector import ScriptedConnector, scripted_connector
from support.fleet import (
    STARTUP,
    client_of,
    federated,
    free_port,
    instance,
    redis_cluster,
    redis_server,
    remote_inflight,
    sees,
    server_process,
)
from support.redis_ha import sentinel_for
from support.server import RunningServer, settings

ANSWER = b'{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[]}'
EVENTS = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}\n\n',
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}\n\n',
    b"data: [DONE]\n\n",
)
MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


async def one_call_served(
    client: openai.AsyncOpenAI, conn: ScriptedConnector, model: str = "m"
) -> None:
    """A chat call through `client` reaches `conn`, and its answer comes back."""
    call = asyncio.create_task(client.chat.completions.create(model=model, messages=MESSAGES))
    incoming = await conn.next_request()
    await conn.reply(incoming.id, ANSWER)
    assert (await call).id == "x"


async def test_b_serves_a_connector_linked_to_a_streamed_and_not_like_a(tmp_path: Path) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1", max_concurrency=4) as conn,
    ):
        async with asyncio.timeout(10):
            await b.wait_for(lambda: sees(b, "w1"))

        async def answered(server: RunningServer) -> tuple[str, str]:
            client = client_of(server)
            plain = asyncio.create_task(
                client.chat.completions.create(model="m", messages=MESSAGES)
            )
            incoming = await conn.next_request()
            assert incoming.frame.path == "/chat/completions"
            await conn.reply(incoming.id, ANSWER)
            whole = (await plain).model_dump_json()
            streamed = asyncio.create_task(
                client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            )
            incoming = await conn.next_request()
            await conn.head(incoming.id, 200, [("Content-Type", "text/event-stream")])
            for event in EVENTS:
                await conn.body(incoming.id, event)
            await conn.end(incoming.id)
            chunks = [c.model_dump_json() async for c in await streamed]
            await client.close()  # not a context: the same client serves both calls
            return whole, "".join(chunks)

        async with asyncio.timeout(20):
            assert await answered(b) == await answered(a)


async def test_b_lists_the_fleet_and_shows_where_each_connector_is(tmp_path: Path) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1", models=["m-a"]),
        scripted_connector(b.url, client_key="ck", id="w2", models=["m-b"]),
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(10):
            await b.wait_for(lambda: sees(b, "w1"))
            await a.wait_for(lambda: sees(a, "w2"))
            async with client_of(b) as client:
                models = await client.models.list()
            assert [m.id for m in models.data] == ["m-a", "m-b"]
            async with http.get(b.url + "/api/state") as resp:
                state = await resp.json()
        assert {w["id"]: w["instance"] for w in state["workers"]} == {"w1": "A", "w2": "B"}
        assert state["server"]["instance"] == "B"
        assert [i["id"] for i in state["server"]["instances"]] == ["B", "A"]
        assert state["server"]["instances"][1]["address"] == a.url
        assert state["server"]["instances"][0]["links"] == 1  # B's own: w2
        assert state["server"]["instances"][1]["links"] == 1
        rows = {m["name"]: (m["workers"], m["ready_workers"]) for m in state["models"]}
        assert rows == {"m-a": (1, 1), "m-b": (1, 1)}
        assert state["workers_summary"]["connected"] == 2


async def test_a_client_leaving_at_b_cancels_the_request_at_the_connector(tmp_path: Path) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1") as conn,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(15):
            await b.wait_for(lambda: sees(b, "w1"))
            body = {"model": "m", "stream": True, "messages": MESSAGES}
            call = asyncio.create_task(http.post(b.url + "/api/v1/chat/completions", json=body))
            incoming = await conn.next_request()
            await conn.head(incoming.id, 200, [("Content-Type", "text/event-stream")])
            await conn.body(incoming.id, EVENTS[0])
            resp = await call
            assert await resp.content.readuntil(b"\n\n") == EVENTS[0]
            resp.close()
            await incoming.cancelled.wait()


async def test_an_answer_broken_mid_event_at_a_reaches_the_sdk_at_b_as_an_api_error(
    tmp_path: Path,
) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1") as conn,
        client_of(b) as client,
    ):
        async with asyncio.timeout(15):
            await b.wait_for(lambda: sees(b, "w1"))
            call = asyncio.create_task(
                client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            )
            incoming = await conn.next_request()
            await conn.head(incoming.id, 200, [("Content-Type", "text/event-stream")])
            await conn.body(incoming.id, EVENTS[0] + EVENTS[1][:40])
            await conn.end(incoming.id, error=lp.LinkError(code="backend_error", message="cut"))
            chunks = aiter(await call)
            assert (await anext(chunks)).choices[0].delta.content == "Hel"
            with pytest.raises(openai.APIError) as failed:
                await anext(chunks)
        assert failed.value.message == "Upstream failure (backend_error): cut"


async def test_drain_asked_at_b_reaches_the_connector_linked_to_a(tmp_path: Path) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A", operator_key="op") as a,
        instance(redis.url, "B", operator_key="op") as b,
        scripted_connector(a.url, client_key="ck", id="w1") as conn,
        aiohttp.ClientSession(headers={"Authorization": "Bearer op"}) as http,
    ):
        async with asyncio.timeout(10):
            await b.wait_for(lambda: sees(b, "w1"))
            async with http.post(b.url + "/api/workers/w1/drain") as resp:
                assert resp.status == 202
            assert await conn.controls.get() == lp.Control(action="drain", by="operator")
            async with http.post(b.url + "/api/workers/nobody/drain") as resp:
                assert resp.status == 404


async def test_redis_down_leaves_each_instance_its_own_links_and_the_view_heals(
    tmp_path: Path,
) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1", models=["m-a"]),
        scripted_connector(b.url, client_key="ck", id="w2", models=["m-b"]) as own,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(10):
            await b.wait_for(lambda: sees(b, "w1"))
        await redis.stop()
        async with asyncio.timeout(15):
            await b.wait_for(lambda: federated(b).membership.degraded)
            async with http.get(b.url + "/readyz") as resp:
                assert (resp.status, await resp.json()) == (200, {"status": "degraded"})
            async with http.get(b.url + "/api/state") as resp:
                assert (await resp.json())["server"]["degraded"] is True
            async with client_of(b) as client:
                await one_call_served(client, own, "m-b")
            await b.wait_for(lambda: not sees(b, "w1"))  # A's lease may have expired meanwhile
        await redis.start()  # empty: every instance re-announces itself
        async with asyncio.timeout(15):
            await b.wait_for(lambda: sees(b, "w1") and not federated(b).membership.degraded)
            await a.wait_for(lambda: sees(a, "w2"))
            async with http.get(b.url + "/readyz") as resp:
                assert await resp.json() == {"status": "ready"}


async def test_a_killed_instance_leaves_the_fleet_within_its_lease(tmp_path: Path) -> None:
    async with (
        redis_server(tmp_path) as redis,
        server_process(redis.url, "A") as a,
        instance(redis.url, "B") as b,
    ):
        async with asyncio.timeout(STARTUP):
            await a.started()
        async with scripted_connector(a.url, client_key="ck", id="w1") as conn:
            async with asyncio.timeout(10):
                await b.wait_for(lambda: sees(b, "w1"))
                async with client_of(b) as client:
                    await one_call_served(client, conn)
                body = {"model": "m", "stream": True, "messages": MESSAGES}
                async with aiohttp.ClientSession() as http:
                    streaming = asyncio.create_task(
                        http.post(b.url + "/api/v1/chat/completions", json=body)
                    )
                    incoming = await conn.next_request()
                    await conn.head(incoming.id, 200, [("Content-Type", "text/event-stream")])
                    await conn.body(incoming.id, EVENTS[0] + EVENTS[1][:40])
                    resp = await streaming
                    assert await resp.content.readuntil(b"\n\n") == EVENTS[0]
                    a.proc.kill()  # in the middle of the answer, and of its second event
                    await a.proc.wait()
                    rest = await resp.read()  # ends (no hang) with an error event, alone
                    assert rest.startswith(b"data: {"), rest
                    assert json.loads(rest[6:])["error"]["code"] == "upstream_error", rest
            async with asyncio.timeout(3.0 + 5):  # the lease (3 s) and one read of the view
                await b.wait_for(lambda: not sees(b, "w1"))
            async with client_of(b) as client:
                with pytest.raises(openai.NotFoundError) as refused:
                    await client.chat.completions.create(model="m", messages=MESSAGES)
                assert refused.value.code == "model_not_found"


async def test_a_home_that_cannot_be_reached_fails_over_to_another_connector(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1", max_concurrency=2) as conn,
        aiohttp.ClientSession() as http,
    ):
        # A lease of an instance nobody listens at, advertising an idle connector for `m`.
        ghost = Lease(
            id="ghost",
            address=f"http://127.0.0.1:{free_port()}",
            version="0",
            started_at=0.0,
            links=1,
            inflight=0,
            connectors=(ConnectorSummary("wx", "WX", ("m",), 4, 0, "idle", 0.0),),
        )
        store = aioredis.from_url(redis.url)
        await store.set(PREFIX + "instance:ghost", ghost.dump(), px=60_000)
        await store.sadd(MEMBERS, "ghost")
        await store.aclose()
        async with asyncio.timeout(15):
            body = {"model": "m", "messages": MESSAGES}
            held = asyncio.create_task(http.post(a.url + "/api/v1/chat/completions", json=body))
            first = await conn.next_request()  # w1 is half busy: the ghost's wx looks less busy
            await b.wait_for(lambda: sees(b, "wx") and remote_inflight(b, "w1") == 1)
            async with client_of(b) as client:
                await one_call_served(client, conn)
            assert "connector wx failed before answering (link_lost)" in caplog.text
            await conn.reply(first.id, ANSWER)
            (await held).release()


async def test_streams_relayed_to_a_home_wait_there_until_its_connector_ended_its_call(
    tmp_path: Path,
) -> None:
    """Clients at A and B, a real connector with one slot at A, a backend that ends its answer
    after the SDK left: A holds the slot until the connector ended, for its own waiters and for
    B's, so no call is refused `busy`."""
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        serving(LingeringBackend()) as backend,
    ):
        config = WorkerSettings.model_validate(
            {
                "server_url": a.ws_url,
                "client_key": "ck",
                "client_id": "w1",
                "completion_base_url": backend.url,
                "max_concurrency": 1,
            }
        )
        connector = Connector(config)
        task = asyncio.create_task(connector.run())
        try:
            async with asyncio.timeout(20), client_of(a) as at_a, client_of(b) as at_b:
                await b.wait_for(lambda: sees(b, "w1"))

                async def ask(client: openai.AsyncOpenAI) -> str:
                    stream = await client.chat.completions.create(
                        model="m1", messages=MESSAGES, stream=True
                    )
                    chunks = [c async for c in stream]
                    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

                calls = [ask(at_a), ask(at_b), ask(at_a), ask(at_b), ask(at_a), ask(at_b)]
                assert await asyncio.gather(*calls) == ["hi"] * 6
                await a.wait_for(lambda: (w := a.worker("w1")) is not None and w.inflight == 0)
        finally:
            connector.request_stop()
            async with asyncio.timeout(5):
                assert await task == 0
        assert backend.most == 1
        worker = a.worker("w1")
        assert worker is not None
        assert (worker.processed_total, worker.failures_total) == (6, 0)


def test_redis_addr_needs_a_peer_key_and_a_redis_url() -> None:
    with pytest.raises(pydantic.ValidationError, match="PEER_KEY is required"):
        settings(redis_addr="redis://127.0.0.1:1/0")
    with pytest.raises(ConfigError, match="REDIS_ADDR"):
        create_app(settings(redis_addr="http://nowhere", peer_key="p"))


async def test_the_peer_routes_want_the_peer_key(tmp_path: Path) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        aiohttp.ClientSession() as http,
    ):
        for key in ("", "wrong"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(a.url + "/api/peer/v1/link", headers={KEY_HEADER: key})
            assert refused.value.status == 401


async def test_instances_find_redis_through_a_sentinel(tmp_path: Path) -> None:
    async with (
        redis_server(tmp_path) as redis,
        sentinel_for(redis, tmp_path) as redis_addr,
        instance(redis_addr, "A") as a,
        instance(redis_addr, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1") as conn,
        client_of(b) as client,
    ):
        async with asyncio.timeout(15):
            await b.wait_for(lambda: sees(b, "w1"))
            await one_call_served(client, conn)


async def test_instances_share_a_redis_cluster(tmp_path: Path) -> None:
    async with (
        redis_cluster(tmp_path) as redis_addr,
        instance(redis_addr, "A") as a,
        instance(redis_addr, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1") as conn,
        client_of(b) as client,
    ):
        async with asyncio.timeout(15):
            await b.wait_for(lambda: sees(b, "w1"))
            await one_call_served(client, conn)
