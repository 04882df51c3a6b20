"""One FIFO queue per model across instances sharing a real Redis (docs/scale-out.md).

Connectors with `max_concurrency` 1 are linked to instance A; clients call A, B and C.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import openai
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletion
from redis import asyncio as aioredis

from infero.protocol import link as lp
from infero.server import fleetqueue, redisclient
from infero.server.changes import ChangeFeed
from infero.server.fleetqueue import FleetQueue, FleetTicket, queue_key
from infero.server.peer import Reservations
from infero.server.redisclient import connect
from infero.server.shared import QueueFull, Route
from infero.worker.runtime import Connector
from infero.worker.settings import WorkerSettings
from support.connector import Incoming, ScriptedConnector, scripted_connector
from support.fleet import (
    STARTUP,
    client_of,
    federated,
    instance,
    queue_depth,
    redis_cluster,
    redis_server,
    remote_inflight,
    server_process,
)
from support.reply_dropper import reply_dropper
from support.server import RunningServer
from support.statestream import StateView

ANSWER = b'{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[]}'


def ask(label: str, *, stream: bool = False) -> dict[str, object]:
    """A chat request whose only message is `label` (the backend sees which one it is)."""
    return {"model": "m", "stream": stream, "messages": [{"role": "user", "content": label}]}


async def chat(client: openai.AsyncOpenAI, label: str) -> ChatCompletion:
    """A non-streamed chat call through the openai SDK whose only message is `label`."""
    return await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": label}]
    )


class OrderedBackend:
    """An OpenAI backend that records the order of arrivals and holds each request until the
    test releases it by label; it counts how many run at once."""

    def __init__(self) -> None:
        self.arrived: list[str] = []
        self.changed = asyncio.Condition()
        self.releases: dict[str, asyncio.Event] = {}
        self.running = 0
        self.most_running = 0
        self.url = ""

    def release(self, label: str) -> None:
        self.releases.setdefault(label, asyncio.Event()).set()

    async def wait_arrivals(self, count: int) -> list[str]:
        async with self.changed:
            await self.changed.wait_for(lambda: len(self.arrived) >= count)
        return list(self.arrived)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    async def _models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        doc = await request.json()
        label = doc["messages"][0]["content"]
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            async with self.changed:
                self.arrived.append(label)
                self.changed.notify_all()
            await self.releases.setdefault(label, asyncio.Event()).wait()
        finally:
            self.running -= 1
        message = {"role": "assistant", "content": label}
        if not doc.get("stream"):
            return web.json_response(
                {
                    "id": label,
                    "object": "chat.completion",
                    "created": 1,
                    "model": "m",
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {
            "id": label,
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": message, "finish_reason": "stop"}],
        }
        await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n")
        await response.write_eof()
        return response


@asynccontextmanager
async def backend_serving() -> AsyncIterator[OrderedBackend]:
    backend = OrderedBackend()
    runner = web.AppRunner(backend.app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    backend.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        yield backend
    finally:
        for event in backend.releases.values():
            event.set()
        await runner.cleanup()


@asynccontextmanager
async def real_connector(server: RunningServer, backend_url: str) -> AsyncIterator[Connector]:
    """A real `infero llm` (in this process) with max_concurrency 1, linked to `server`."""
    settings = WorkerSettings.model_validate(
        {
            "server_url": server.ws_url,
            "client_key": "ck",
            "client_id": "w1",
            "completion_base_url": backend_url,
            "max_concurrency": 1,
        }
    )
    connector = Connector(settings)
    task = asyncio.create_task(connector.run())
    try:
        async with asyncio.timeout(10):
            await connector.connected.wait()
            await server.wait_for(lambda: server.status("w1") == "idle")
        yield connector
    finally:
        connector.request_stop()
        async with asyncio.timeout(10):
            await task


def waiting_at(server: RunningServer) -> list[str]:
    """The instance of each waiter for `m`, in fleet order, as this instance mirrors them."""
    return [e.instance for e in federated(server).queue.mirror.get("m", ())]


@dataclass
class Busy:
    """A connector's one slot, taken by a call held there until `free`."""

    conn: ScriptedConnector
    call: asyncio.Task[ChatCompletion]
    held: Incoming

    async def free(self) -> None:
        """Answer the held call: the slot is free again."""
        await self.conn.reply(self.held.id, ANSWER)
        await self.call


async def occupy(conn: ScriptedConnector, client: openai.AsyncOpenAI, label: str = "r0") -> Busy:
    """Call through `client` and hold the call at `conn` (its one slot taken)."""
    call = asyncio.create_task(chat(client, label))
    return Busy(conn, call, await conn.next_request())


async def all_see(servers: tuple[RunningServer, ...], count: int) -> None:
    """Return once every instance mirrors `count` waiters for `m`."""
    for server in servers:

        def seen(server: RunningServer = server) -> bool:
            return queue_depth(server) == count

        await server.wait_for(seen)


class Comments:
    """A raw streaming request: the `: queued position=N` comments it received."""

    def __init__(self, http: aiohttp.ClientSession, url: str, label: str) -> None:
        self.positions: list[int] = []
        self.first = asyncio.Event()
        self.body = b""
        self.task = asyncio.create_task(self._run(http, url, label))

    async def _run(self, http: aiohttp.ClientSession, url: str, label: str) -> None:
        async with http.post(url + "/api/v1/chat/completions", json=ask(label, stream=True)) as r:
            async for line in r.content:
                if line.startswith(b": queued position="):
                    self.positions.append(int(line.split(b"=")[1]))
                    self.first.set()
                self.body += line


async def test_requests_at_three_instances_are_served_in_fleet_arrival_order(
    tmp_path: Path,
) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A", queue_headers_after=0) as a,
        instance(redis.url, "B", queue_headers_after=0) as b,
        instance(redis.url, "C", queue_headers_after=0) as c,
        backend_serving() as backend,
        real_connector(a, backend.url),
        aiohttp.ClientSession() as http,
        client_of(a) as at_a,
        client_of(c) as at_c,
    ):
        servers = (a, b, c)
        async with asyncio.timeout(30):
            await b.wait_for(lambda: b.shared.dispatcher.known("m", None))
            await c.wait_for(lambda: c.shared.dispatcher.known("m", None))
            first = asyncio.create_task(chat(at_a, "r0"))
            await backend.wait_arrivals(1)
            for server in (b, c):  # they queue their own waiters (not relayed to A's queue)
                await server.wait_for(lambda s=server: remote_inflight(s, "w1") == 1)
            r1 = Comments(http, b.url, "r1")
            await all_see(servers, 1)
            r2 = asyncio.create_task(chat(at_c, "r2"))
            await all_see(servers, 2)
            r3 = Comments(http, a.url, "r3")
            await all_see(servers, 3)
            r4 = Comments(http, b.url, "r4")
            await all_see(servers, 4)
            for comments in (r1, r3, r4):
                await comments.first.wait()
            assert (r1.positions[0], r3.positions[0], r4.positions[0]) == (1, 3, 4)
            for server in servers:
                async with http.get(server.url + "/api/state") as resp:
                    state = await resp.json()
                rows = {m["name"]: m for m in state["models"]}
                assert rows["m"]["queue_len"] == 4, server.url
                assert state["server"]["scheduler_queue_len"] == 4
                assert [w["queue_len"] for w in state["workers"]] == [4]
                waiters = rows["m"]["waiters"]  # each waiter, fleet-wide, with its instance
                assert [(w["position"], w["instance"]) for w in waiters] == [
                    (1, "B"),
                    (2, "C"),
                    (3, "A"),
                    (4, "B"),
                ], (server.url, waiters)
                assert rows["m"]["waiters_more"] == 0
                since = [w["queued_since"] for w in waiters]
                assert since == sorted(since)
            async with http.get(c.url + "/api/state/stream?parts=models") as stream:
                view = StateView(stream)
                await view.step()
                for n, label in enumerate(("r0", "r1", "r2", "r3")):
                    backend.release(label)
                    await backend.wait_arrivals(n + 2)
                    left = ["B", "C", "A", "B"][n + 1 :]
                    snap = await view.until(
                        lambda s, left=left: [w.instance for w in s.models[0].waiters] == left
                    )
                    assert [w.position for w in snap.models[0].waiters] == list(
                        range(1, len(left) + 1)
                    )
                assert all(e.name == "delta" for e in view.events[1:])
            backend.release("r4")
            assert (await first).id == "r0"
            assert (await r2).id == "r2"
            await asyncio.gather(r1.task, r3.task, r4.task)
            await all_see(servers, 0)
        assert backend.arrived == ["r0", "r1", "r2", "r3", "r4"]
        assert backend.most_running == 1
        assert r4.positions == sorted(set(r4.positions), reverse=True)
        assert b'"content": "r4"' in r4.body


async def test_a_newcomer_never_overtakes_a_waiter_that_joined_elsewhere_a_moment_ago(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # B reads the queues only once (at start): it cannot know r1 joined at A from its mirror.
    monkeypatch.setattr(fleetqueue, "REFRESH_IDLE", 3600.0)
    monkeypatch.setattr(fleetqueue, "REFRESH_BUSY", 3600.0)
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        scripted_connector(b.url, client_key="ck", id="w1") as conn,
        client_of(a) as at_a,
        client_of(b) as at_b,
    ):
        async with asyncio.timeout(20):
            await a.wait_for(lambda: a.shared.dispatcher.known("m", None))
            busy = await occupy(conn, at_b)
            await a.wait_for(lambda: remote_inflight(a, "w1") == 1)  # A queues r1 itself
            at_a_queue = federated(a).queue
            # A's waiter stays put until the test lets it try (no race with the newcomer).
            monkeypatch.setattr(at_a_queue, "view_changed", lambda: None)
            monkeypatch.setattr(at_a_queue, "woken", lambda model, hint: None)
            waiting = asyncio.create_task(chat(at_a, "r1"))
            await a.wait_for(lambda: queue_depth(a) == 1)
            assert queue_depth(b) == 0
            await busy.free()  # w1 has a free slot again, at B
            newcomer = asyncio.create_task(chat(at_b, "r2"))
            arrival = asyncio.create_task(conn.next_request())
            queued = asyncio.create_task(b.wait_for(lambda: waiting_at(b) == ["A", "B"]))
            await asyncio.wait({arrival, queued}, return_when=asyncio.FIRST_COMPLETED)
            assert not arrival.done(), "the newcomer at B overtook the waiter at A"
            await queued
            monkeypatch.undo()
            federated(b).queue.capacity()  # B offers w1's slot to the head: A's waiter
            for label in ("r1", "r2"):
                incoming = await arrival
                assert json.loads(incoming.body)["messages"][0]["content"] == label
                await conn.reply(incoming.id, ANSWER)
                arrival = asyncio.create_task(conn.next_request())
            arrival.cancel()
            assert (await waiting).id == (await newcomer).id == "x"


async def test_a_newcomer_does_not_overtake_a_waiter_when_a_connector_becomes_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fleetqueue, "REFRESH_IDLE", 3600.0)  # A never reads B's waiter
    monkeypatch.setattr(fleetqueue, "REFRESH_BUSY", 3600.0)
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1", status="not_ready") as conn,
        client_of(a) as at_a,
        client_of(b) as at_b,
    ):
        async with asyncio.timeout(20):
            await b.wait_for(lambda: b.shared.dispatcher.known("m", None))
            at_b_queue = federated(b).queue
            monkeypatch.setattr(at_b_queue, "view_changed", lambda: None)
            monkeypatch.setattr(at_b_queue, "woken", lambda model, hint: None)
            waiting = asyncio.create_task(chat(at_b, "r1"))
            await b.wait_for(lambda: queue_depth(b) == 1)
            assert queue_depth(a) == 0
            await conn.status(max_concurrency=2, status="ready")  # never full: only its
            await a.wait_for(lambda: a.status("w1") == "idle")  # change of status counts
            newcomer = asyncio.create_task(chat(at_a, "r2"))
            arrival = asyncio.create_task(conn.next_request())
            queued = asyncio.create_task(a.wait_for(lambda: waiting_at(a) == ["B", "A"]))
            await asyncio.wait({arrival, queued}, return_when=asyncio.FIRST_COMPLETED)
            assert not arrival.done(), "the newcomer at A overtook the waiter at B"
            await queued
            monkeypatch.undo()
            federated(a).queue.capacity()
            for label in ("r1", "r2"):
                incoming = await arrival
                assert json.loads(incoming.body)["messages"][0]["content"] == label
                await conn.reply(incoming.id, ANSWER)
                arrival = asyncio.create_task(conn.next_request())
            arrival.cancel()
            assert (await waiting).id == (await newcomer).id == "x"


async def test_queue_max_counts_every_instances_waiters(tmp_path: Path) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A", queue_max=2) as a,
        instance(redis.url, "B", queue_max=2) as b,
        scripted_connector(a.url, client_key="ck", id="w1") as conn,
        client_of(a) as at_a,
        client_of(b) as at_b,
    ):
        async with asyncio.timeout(20):
            await b.wait_for(lambda: b.shared.dispatcher.known("m", None))
            busy = await occupy(conn, at_a)
            waiting = [asyncio.create_task(chat(at_a, "r1"))]
            await all_see((a, b), 1)
            waiting.append(asyncio.create_task(chat(at_b, "r2")))
            await all_see((a, b), 2)
            for client in (at_a, at_b):
                with pytest.raises(openai.RateLimitError) as refused:
                    await chat(client, "r3")
                assert refused.value.code == "queue_full"
            await busy.free()
            for _ in waiting:
                incoming = await conn.next_request()
                await conn.reply(incoming.id, ANSWER)
            await asyncio.gather(*waiting)


async def test_queue_timeout_ends_a_waiter_and_frees_its_place_everywhere(tmp_path: Path) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B", queue_timeout=1.0) as b,
        scripted_connector(a.url, client_key="ck", id="w1") as conn,
        client_of(a) as at_a,
        client_of(b) as at_b,
    ):
        async with asyncio.timeout(20):
            await b.wait_for(lambda: b.shared.dispatcher.known("m", None))
            busy = await occupy(conn, at_a)
            await b.wait_for(lambda: remote_inflight(b, "w1") == 1)  # B queues it, not A
            with pytest.raises(openai.InternalServerError) as refused:
                await chat(at_b, "r1")
            assert refused.value.status_code == 503
            assert refused.value.code == "queue_timeout"
            await all_see((a, b), 0)
            await busy.free()


async def test_a_waiter_wakes_when_a_connector_of_another_instance_becomes_ready(
    tmp_path: Path,
) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1", status="not_ready") as conn,
        client_of(b) as at_b,
        client_of(a) as at_a,
    ):
        async with asyncio.timeout(20):
            await b.wait_for(lambda: b.shared.dispatcher.known("m", None))
            remote = asyncio.create_task(chat(at_b, "r1"))
            await all_see((a, b), 1)
            local = asyncio.create_task(chat(at_a, "r2"))
            await all_see((a, b), 2)
            await conn.status(max_concurrency=1, status="ready")
            for label in ("r1", "r2"):
                incoming = await conn.next_request()
                assert json.loads(incoming.body)["messages"][0]["content"] == label
                await conn.reply(incoming.id, ANSWER)
            assert (await remote).id == (await local).id == "x"


async def test_the_entries_of_a_killed_instance_are_purged_and_the_queue_moves_on(
    tmp_path: Path,
) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A", queue_headers_after=0) as a,
        server_process(redis.url, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1") as conn,
        aiohttp.ClientSession() as http,
        client_of(a) as at_a,
    ):
        async with asyncio.timeout(STARTUP):
            await a.wait_for(lambda: "B" in federated(a).membership.peers)
        async with asyncio.timeout(30):
            busy = await occupy(conn, at_a)
            async with http.get(b.url + "/api/state/stream") as stream:
                await StateView(stream).until(  # B knows w1 is busy: it queues r1 itself
                    lambda s: any(w.id == "w1" and w.inflight == 1 for w in s.workers)
                )
            doomed = Comments(http, b.url, "r1")
            await a.wait_for(lambda: queue_depth(a) == 1)
            assert federated(a).queue.mirror["m"][0].instance == "B"
            r2 = Comments(http, a.url, "r2")
            await r2.first.wait()
            assert r2.positions == [2]
            b.proc.kill()
            await b.proc.wait()
            with pytest.raises(aiohttp.ClientError):
                await doomed.task
            # B's lease expires (3 s), then A purges its entry: r2 heads the queue.
            await a.wait_for(
                lambda: queue_depth(a) == 1 and "B" not in federated(a).membership.peers
            )
            await busy.free()
            incoming = await conn.next_request()
            assert json.loads(incoming.body)["messages"][0]["content"] == "r2"
            await conn.reply(incoming.id, ANSWER)
            await r2.task
            assert 1 in r2.positions


async def test_without_redis_waiters_use_the_local_queue_and_the_fleet_queue_heals(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        scripted_connector(b.url, client_key="ck", id="w1") as conn,
        client_of(b) as at_b,
    ):
        async with asyncio.timeout(30):
            await a.wait_for(lambda: a.shared.dispatcher.known("m", None))
            await redis.stop()
            await b.wait_for(lambda: federated(b).queue.degraded)
            assert "new waiters use this instance's own queue" in caplog.text
            await b.wait_for(lambda: federated(b).membership.degraded)
            assert "Redis is unreachable" in caplog.text
            busy = await occupy(conn, at_b)
            waiting = asyncio.create_task(chat(at_b, "r1"))
            await b.wait_for(lambda: b.queue_len("m") == 1)
            assert federated(b).local.scheduler.queue_len("m") == 1  # this instance's own queue
            await busy.free()
            incoming = await conn.next_request()
            await conn.reply(incoming.id, ANSWER)
            await waiting

            await redis.start()
            await b.wait_for(lambda: not federated(b).queue_degraded())
            assert "the fleet queue answers again" in caplog.text
            await a.wait_for(
                lambda: not federated(a).queue_degraded() and "B" in federated(a).membership.peers
            )
            busy = await occupy(conn, at_b, "r2")
            waiting = asyncio.create_task(chat(at_b, "r3"))
            await all_see((a, b), 1)  # in the fleet queue again: A sees it
            await busy.free()
            incoming = await conn.next_request()
            await conn.reply(incoming.id, ANSWER)
            await waiting


async def test_a_reserved_slot_not_claimed_in_time_is_freed() -> None:
    freed: list[Route] = []
    gone = asyncio.Event()

    def free(route: Route) -> None:
        freed.append(route)
        gone.set()

    slot = cast("Route", SimpleNamespace(connector_id="w1"))  # only its id is read
    reservations = Reservations(lambda model, connector: slot, free, ttl=0.01)
    token = reservations.reserve("m", "w1")
    assert token is not None
    async with asyncio.timeout(5):
        await gone.wait()
    assert freed == [slot]
    assert reservations.claim(token) is None  # too late: the request fails over
    claimed = reservations.reserve("m", "w1")
    assert claimed is not None
    assert reservations.claim(claimed) is slot
    assert reservations.claim(claimed) is None  # once


async def test_an_instance_shutting_down_takes_its_waiters_out_of_the_queue(
    tmp_path: Path,
) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        scripted_connector(a.url, client_key="ck", id="w1") as conn,
        client_of(a) as at_a,
        AsyncExitStack() as stack,
    ):
        b = await stack.enter_async_context(instance(redis.url, "B"))
        at_b = await stack.enter_async_context(client_of(b))
        async with asyncio.timeout(20):
            await b.wait_for(lambda: b.shared.dispatcher.known("m", None))
            busy = await occupy(conn, at_a)
            await b.wait_for(lambda: remote_inflight(b, "w1") == 1)
            leaving = asyncio.create_task(chat(at_b, "r1"))
            await all_see((a, b), 1)
            queued = asyncio.create_task(chat(at_a, "r2"))
            await all_see((a, b), 2)
            await stack.aclose()  # B stops: its waiter leaves the queue at once
            with pytest.raises(openai.APIError):
                await leaving
            await a.wait_for(lambda: waiting_at(a) == ["A"])
            store = aioredis.from_url(redis.url)
            assert await store.zcard(queue_key("m")) == 1
            await store.aclose()
            await busy.free()
            incoming = await conn.next_request()
            assert json.loads(incoming.body)["messages"][0]["content"] == "r2"
            await conn.reply(incoming.id, ANSWER)
            await queued


async def test_the_fleet_queue_works_on_a_redis_cluster(tmp_path: Path) -> None:
    async with (
        redis_cluster(tmp_path) as redis_addr,
        instance(redis_addr, "A") as a,
        instance(redis_addr, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1") as conn,
        client_of(a) as at_a,
        client_of(b) as at_b,
    ):
        async with asyncio.timeout(20):
            await b.wait_for(lambda: b.shared.dispatcher.known("m", None))
            busy = await occupy(conn, at_a)
            await b.wait_for(lambda: remote_inflight(b, "w1") == 1)
            waiting = asyncio.create_task(chat(at_b, "r1"))
            await all_see((a, b), 1)  # joined by script, read by pipeline, on the cluster
            assert waiting_at(a) == ["B"]
            await busy.free()
            incoming = await conn.next_request()
            assert json.loads(incoming.body)["messages"][0]["content"] == "r1"
            await conn.reply(incoming.id, ANSWER)
            await waiting
            await all_see((a, b), 0)
            assert not federated(a).queue.degraded


def alone(redis: Any, instance_id: str, queue_max: int = 10) -> FleetQueue:
    """The fleet queue of an instance with no connector (its waiters never take a slot)."""
    return FleetQueue(
        redis=redis,
        instance_id=instance_id,
        queue_max=queue_max,
        queue_timeout=60.0,
        lease_ttl=3.0,
        changes=ChangeFeed(),
        alive=lambda: None,
    )


async def join(queue: FleetQueue, *, first: bool = False) -> FleetTicket:
    return await queue.enqueue("m", frozenset(), None, local_only=False, first=first)


@asynccontextmanager
async def losing_a_reply(tmp_path: Path) -> AsyncIterator[tuple[Any, Any, Any]]:
    """A Redis, the instance's client to it through a proxy that can lose a reply (the client
    then sends the command again on a new connection), and a direct client."""
    async with redis_server(tmp_path) as redis, reply_dropper(redis.port) as proxy:
        through, direct = connect(proxy.url), connect(redis.url)
        try:
            yield proxy, through, direct
        finally:
            await through.aclose()
            await direct.aclose()


async def test_a_join_whose_answer_was_lost_keeps_its_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # However slow the machine, the lost answer is a connection reset (sent again), never a
    # timeout (not sent again).
    monkeypatch.setattr(redisclient, "REDIS_TIMEOUT", 3600.0)
    async with losing_a_reply(tmp_path) as (proxy, through, direct), asyncio.timeout(20):
        mine, theirs = alone(through, "A"), alone(direct, "B")
        await (await join(mine)).leave()  # the scripts are loaded, the connection open
        joined: list[FleetTicket] = []

        async def join_at_b() -> None:
            joined.append(await join(theirs))

        proxy.meanwhile = join_at_b  # B's waiter joins after A's script ran, before its retry
        proxy.armed = True
        first = await join(mine)
        assert proxy.dropped == 1
        [second] = joined
        assert first.seq is not None
        assert second.seq is not None
        assert first.seq < second.seq
        members = [first.member.encode(), second.member.encode()]
        assert await direct.zrange(queue_key("m"), 0, -1) == members
        await mine.refresh()
        assert mine.position(first) == 1
        for ticket in (first, second):
            await ticket.leave()
        assert await direct.exists(queue_key("m"), fleetqueue.QUEUES) == 0


async def test_a_join_whose_answer_was_lost_is_not_refused_for_the_place_it_took(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redisclient, "REDIS_TIMEOUT", 3600.0)
    async with losing_a_reply(tmp_path) as (proxy, through, direct), asyncio.timeout(20):
        mine = alone(through, "A", queue_max=1)
        await (await join(mine)).leave()
        proxy.armed = True
        ticket = await join(mine)  # the last place: its own, when the script runs again
        assert proxy.dropped == 1
        assert ticket.seq is not None
        assert await direct.zrange(queue_key("m"), 0, -1, withscores=True) == [
            (ticket.member.encode(), float(ticket.seq))
        ]
        with pytest.raises(QueueFull):
            await join(mine)
        await ticket.leave()


async def test_a_request_taking_its_place_back_joins_at_the_head_even_when_the_queue_is_full(
    tmp_path: Path,
) -> None:
    async with redis_server(tmp_path) as redis, asyncio.timeout(20):
        store = connect(redis.url)
        try:
            a, b = alone(store, "A", queue_max=2), alone(store, "B", queue_max=2)
            tail = [await join(a), await join(b)]
            with pytest.raises(QueueFull):
                await join(a)  # a newcomer: QUEUE_MAX holds
            heads = [await join(b, first=True), await join(a, first=True)]
            # A fresh Redis: the tail has 1 and 2, the heads 0 and -1 (no "no score" mark).
            assert [t.seq for t in (*heads, *tail)] == [0, -1, 1, 2]
            order = [heads[1], heads[0], *tail]
            assert await store.zrange(queue_key("m"), 0, -1) == [t.member.encode() for t in order]
            for queue in (a, b):
                await queue.refresh()
                assert [e.member for e in queue.mirror["m"]] == [t.member for t in order]
            assert [t.queue.position(t) for t in order] == [1, 2, 3, 4]
            assert [await t.position() for t in order] == [1, 2, 3, 4]
            nobody = alone(store, "C", queue_max=0)
            with pytest.raises(QueueFull):
                await join(nobody)
            again = await join(nobody, first=True)  # it was admitted before: never queue_full
            assert again.seq == -2
            for ticket in (*order, again):
                await ticket.leave()
            assert await store.exists(queue_key("m"), fleetqueue.QUEUES) == 0
        finally:
            await store.aclose()


async def test_a_head_join_whose_answer_was_lost_keeps_its_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redisclient, "REDIS_TIMEOUT", 3600.0)
    async with losing_a_reply(tmp_path) as (proxy, through, direct), asyncio.timeout(20):
        mine, theirs = alone(through, "A"), alone(direct, "B")
        await (await join(mine, first=True)).leave()  # the script loaded, the connection open
        waiting = await join(theirs)
        assert waiting.seq is not None
        proxy.armed = True
        head = await join(mine, first=True)
        assert proxy.dropped == 1
        assert await direct.zrange(queue_key("m"), 0, -1, withscores=True) == [
            (head.member.encode(), float(waiting.seq - 1)),  # not moved again by the rerun
            (waiting.member.encode(), float(waiting.seq)),
        ]
        assert head.seq == waiting.seq - 1
        for ticket in (head, waiting):
            await ticket.leave()


async def test_a_request_refused_busy_waits_again_at_the_head_of_the_fleet_queue(
    tmp_path: Path,
) -> None:
    """As in the embedded scheduler (test_queue_failover.py): the request refused `busy` goes
    before the one that joined the queue while it was out, at every instance, even with the
    queue at QUEUE_MAX."""
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A", queue_max=1, queue_headers_after=0) as a,
        instance(redis.url, "B", queue_max=1) as b,
        scripted_connector(a.url, client_key="ck", id="w1") as conn,
        aiohttp.ClientSession() as http,
        client_of(b) as at_b,
    ):
        async with asyncio.timeout(20):
            await b.wait_for(lambda: b.shared.dispatcher.known("m", None))
            refused = Comments(http, a.url, "r1")
            first = await conn.next_request()
            await b.wait_for(lambda: remote_inflight(b, "w1") == 1)
            later = asyncio.create_task(chat(at_b, "r2"))
            await all_see((a, b), 1)
            await conn.end(first.id, error=lp.LinkError(code="busy", message="at capacity"))
            await all_see((a, b), 2)  # beyond QUEUE_MAX=1: it was admitted before
            for server in (a, b):
                await server.wait_for(lambda s=server: waiting_at(s) == ["A", "B"])
            await refused.first.wait()
            assert refused.positions[-1] == 1
            async with http.get(b.url + "/api/state") as resp:
                rows = {m["name"]: m for m in (await resp.json())["models"]}
            assert [(w["position"], w["instance"]) for w in rows["m"]["waiters"]] == [
                (1, "A"),
                (2, "B"),
            ]
            with pytest.raises(openai.RateLimitError) as full:
                await chat(at_b, "r3")  # a newcomer still meets QUEUE_MAX
            assert full.value.code == "queue_full"
            await conn.end(0x7FFFFFFF)  # the call the server did not count ends: a slot frees
            again = await conn.next_request()
            assert json.loads(again.body)["messages"][0]["content"] == "r1"
            await conn.reply(again.id, ANSWER)
            await refused.task
            last = await conn.next_request()
            assert json.loads(last.body)["messages"][0]["content"] == "r2"
            await conn.reply(last.id, ANSWER)
            await later
            await all_see((a, b), 0)
