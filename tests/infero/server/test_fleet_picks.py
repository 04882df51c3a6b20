"""A request another instance relays as its routing pick never waits pinned at the home
(docs/scale-out.md, "One fleet-wide FIFO queue"; docs/protocol.md, "Peer channel").

B's view of A's connectors is frozen (it never applies a change of the membership), so B
picks a connector that its view shows with room while A's connector is full.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletion

from infero.protocol import link as lp
from support.connector import Incoming, ScriptedConnector, scripted_connector
from support.fleet import (
    client_of,
    federated,
    instance,
    queue_depth,
    redis_server,
    remote_connector,
    remote_inflight,
)
from support.server import RunningServer

ANSWER = b'{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[]}'


async def chat(client: openai.AsyncOpenAI, label: str, pin: str = "") -> ChatCompletion:
    """A chat call whose only message is `label` (`pin`: the client's own X-Infero-Worker)."""
    return await client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": label}],
        extra_headers={"X-Infero-Worker": pin} if pin else None,
    )


def label_of(incoming: Incoming) -> str:
    content: str = json.loads(incoming.body)["messages"][0]["content"]
    return content


def waiting_at(server: RunningServer) -> list[str]:
    """The instance of each waiter for `m`, in fleet order, as this instance mirrors them."""
    return [e.instance for e in federated(server).queue.mirror.get("m", ())]


def freeze_view(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The instance keeps its view of the other instances' connectors as it is now."""
    monkeypatch.setattr(federated(server).membership, "_changed", lambda *args, **kw: None)


async def held(conn: ScriptedConnector, call: asyncio.Task[ChatCompletion]) -> Incoming:
    """The call's request, held at `conn` (its slot taken) until the test answers it."""
    incoming = await conn.next_request()
    assert not call.done()
    return incoming


async def test_a_stale_pick_of_a_full_connector_is_served_at_once_by_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1", max_concurrency=1) as w1,
        scripted_connector(a.url, client_key="ck", id="w2", max_concurrency=2) as w2,
        client_of(a) as at_a,
        client_of(b) as at_b,
    ):
        async with asyncio.timeout(20):
            first = asyncio.create_task(chat(at_a, "r0", pin="w2"))
            r0 = await held(w2, first)
            await b.wait_for(lambda: (remote_inflight(b, "w1"), remote_inflight(b, "w2")) == (0, 1))
            freeze_view(b, monkeypatch)  # B: w1 idle, w2 half busy; it picks w1
            second = asyncio.create_task(chat(at_a, "r1", pin="w1"))
            r1 = await held(w1, second)  # w1 is full at A
            relayed = asyncio.create_task(chat(at_b, "r2"))
            arrival = asyncio.create_task(w2.next_request())
            queued = asyncio.create_task(a.wait_for(lambda: queue_depth(a) > 0))
            await asyncio.wait({arrival, queued}, return_when=asyncio.FIRST_COMPLETED)
            assert arrival.done(), "B's pick of the full w1 waited in A's queue"
            queued.cancel()
            r2 = arrival.result()
            assert label_of(r2) == "r2"
            assert queue_depth(a) == queue_depth(b) == 0
            for conn, incoming in ((w2, r2), (w1, r1), (w2, r0)):
                await conn.reply(incoming.id, ANSWER)
            assert (await relayed).id == (await first).id == (await second).id == "x"
            async with aiohttp.ClientSession() as http, http.get(b.url + "/metrics") as resp:
                metrics = await resp.text()
        assert federated(b).sent == {}
        assert federated(b).refused == {"w1": remote_connector(b, "w1")}
        # The refused pick is neither a failure of w1 nor a relayed request.
        assert 'infero_requests_relayed_total{outcome="success"} 1.0' in metrics
        assert 'infero_requests_relayed_total{outcome="error"} 0.0' in metrics


async def test_a_pick_its_connector_refuses_busy_is_routed_again_not_queued_at_the_home(
    tmp_path: Path,
) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1", max_concurrency=1) as w1,
        scripted_connector(a.url, client_key="ck", id="w2", max_concurrency=2) as w2,
        client_of(a) as at_a,
        client_of(b) as at_b,
    ):
        async with asyncio.timeout(20):
            first = asyncio.create_task(chat(at_a, "r0", pin="w2"))
            r0 = await held(w2, first)
            await b.wait_for(lambda: (remote_inflight(b, "w1"), remote_inflight(b, "w2")) == (0, 1))
            relayed = asyncio.create_task(chat(at_b, "r1"))  # B picks w1, the least busy
            refused = await held(w1, relayed)
            await w1.end(refused.id, error=lp.LinkError(code="busy", message="at capacity"))
            arrival = asyncio.create_task(w2.next_request())
            queued = asyncio.create_task(a.wait_for(lambda: queue_depth(a) > 0))
            await asyncio.wait({arrival, queued}, return_when=asyncio.FIRST_COMPLETED)
            assert arrival.done(), "the pick refused busy waited in A's queue for w1"
            queued.cancel()
            r1 = arrival.result()
            assert label_of(r1) == "r1"
            for incoming in (r1, r0):
                await w2.reply(incoming.id, ANSWER)
            assert (await relayed).id == (await first).id == "x"


async def test_stale_picks_of_full_connectors_wait_in_the_fleet_queue_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1", max_concurrency=1) as w1,
        scripted_connector(a.url, client_key="ck", id="w2", max_concurrency=2) as w2,
        client_of(a) as at_a,
        client_of(b) as at_b,
    ):
        async with asyncio.timeout(20):
            calls = [asyncio.create_task(chat(at_a, "r0", pin="w2"))]
            r0 = await held(w2, calls[0])
            await b.wait_for(lambda: (remote_inflight(b, "w1"), remote_inflight(b, "w2")) == (0, 1))
            freeze_view(b, monkeypatch)  # B: w1 idle, w2 half busy
            calls.append(asyncio.create_task(chat(at_a, "r1", pin="w1")))
            r1 = await held(w1, calls[-1])
            calls.append(asyncio.create_task(chat(at_a, "r2", pin="w2")))
            r2 = await held(w2, calls[-1])  # every slot is full at A
            calls.append(asyncio.create_task(chat(at_b, "r3")))  # both picks are refused
            await a.wait_for(lambda: queue_depth(a) == 1)
            assert waiting_at(a) == ["B"], "B's pick waited pinned in A's queue"
            calls.append(asyncio.create_task(chat(at_a, "r4")))
            await a.wait_for(lambda: waiting_at(a) == ["B", "A"])
            await w2.reply(r0.id, ANSWER)  # a slot of w2: the head (B's waiter) takes it
            r3 = await w2.next_request()
            assert label_of(r3) == "r3"
            await w1.reply(r1.id, ANSWER)
            r4 = await w1.next_request()
            assert label_of(r4) == "r4"
            for conn, incoming in ((w2, r2), (w2, r3), (w1, r4)):
                await conn.reply(incoming.id, ANSWER)
            assert [(await call).id for call in calls] == ["x"] * 5
            await a.wait_for(lambda: queue_depth(a) == 0)


async def test_a_clients_own_pin_still_waits_for_its_connector(
    tmp_path: Path,
) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1", max_concurrency=1) as w1,
        scripted_connector(a.url, client_key="ck", id="w2", max_concurrency=1) as w2,
        client_of(a) as at_a,
        client_of(b) as at_b,
    ):
        async with asyncio.timeout(20):
            first = asyncio.create_task(chat(at_a, "r0", pin="w1"))
            r0 = await held(w1, first)
            await b.wait_for(lambda: remote_inflight(b, "w1") == 1)
            pinned = asyncio.create_task(chat(at_b, "r1", pin="w1"))
            await a.wait_for(lambda: queue_depth(a) == 1)  # w2 is free: r1 waits for w1
            assert w2.requests.empty()
            await w1.reply(r0.id, ANSWER)
            r1 = await w1.next_request()
            assert label_of(r1) == "r1"
            await w1.reply(r1.id, ANSWER)
            assert (await pinned).id == (await first).id == "x"


class Slots:
    """The requests running on a set of scripted connectors, each held until answered."""

    def __init__(self, conns: list[ScriptedConnector]) -> None:
        self.running: list[tuple[ScriptedConnector, Incoming]] = []
        self.changed = asyncio.Condition()
        self.most = 0
        self._pumps = [asyncio.create_task(self._pump(conn)) for conn in conns]

    async def _pump(self, conn: ScriptedConnector) -> None:
        while True:
            incoming = await conn.next_request()
            async with self.changed:
                self.running.append((conn, incoming))
                self.most = max(self.most, len(self.running))
                self.changed.notify_all()

    async def until(self, count: int) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: len(self.running) >= count)

    async def answer_all(self) -> int:
        """Answer every running request at once; how many."""
        async with self.changed:
            done, self.running = self.running, []
        await asyncio.gather(*(conn.reply(incoming.id, ANSWER) for conn, incoming in done))
        return len(done)

    def close(self) -> None:
        for pump in self._pumps:
            pump.cancel()


@asynccontextmanager
async def slots_of(conns: list[ScriptedConnector]) -> AsyncIterator[Slots]:
    slots = Slots(conns)
    try:
        yield slots
    finally:
        slots.close()


async def test_n_requests_over_m_slots_take_ceil_n_over_m_rounds_with_stale_picks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A (w1, 2 slots) and C (w2, 1 slot) hold the fleet's 3 slots; B has none and its view
    # of them stays "all idle". Clients call A, B and C in turn.
    async with AsyncExitStack() as stack:
        enter = stack.enter_async_context
        redis = await enter(redis_server(tmp_path))
        servers = [await enter(instance(redis.url, name)) for name in "ABC"]
        a, b, c = servers
        w1 = await enter(scripted_connector(a.url, client_key="ck", id="w1", max_concurrency=2))
        w2 = await enter(scripted_connector(c.url, client_key="ck", id="w2", max_concurrency=1))
        clients = [await enter(client_of(server)) for server in servers]
        async with asyncio.timeout(30):
            await b.wait_for(lambda: (remote_inflight(b, "w1"), remote_inflight(b, "w2")) == (0, 0))
            freeze_view(b, monkeypatch)
            slots = await enter(slots_of([w1, w2]))
            n, m = 9, 3
            calls: list[asyncio.Task[ChatCompletion]] = []
            for i in range(n):
                calls.append(asyncio.create_task(chat(clients[i % 3], f"r{i}")))
                placed = i + 1
                await a.wait_for(
                    lambda placed=placed: len(slots.running) + queue_depth(a) == placed
                )
            for server in servers:  # every waiter waits at the instance its client called
                await server.wait_for(lambda s=server: queue_depth(s) == n - m)
            assert sorted(waiting_at(a)) == sorted(["A", "B", "C"] * 2)
            rounds = 0
            served = 0
            while served < n:
                await slots.until(min(m, n - served))
                served += await slots.answer_all()
                rounds += 1
            assert rounds == math.ceil(n / m)
            assert slots.most == m
            assert [(await call).id for call in calls] == ["x"] * n
