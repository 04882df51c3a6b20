"""The fleet follows Redis when it changes under it: a Sentinel failover (the master killed, or
demoted by `SENTINEL FAILOVER`), a failover behind a plain address that moves to the new
primary, a Cluster resharding (the `{infero}` slot moving to another node), and a Redis that
stops answering one instance (a request there is still served, or refused, in bounded time).
Real `redis-server`, Sentinels and Cluster nodes (docs/scale-out.md)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import aiohttp
import openai
import pytest

from infero.protocol.state import StateSnapshot
from infero.server.fleetqueue import CALL_TIMEOUT
from support.backend import ControlledBackend, serving
from support.connector import ScriptedConnector, connector_process, scripted_connector
from support.fleet import (
    STARTUP,
    ServerProcess,
    client_of,
    federated,
    instance,
    queue_depth,
    redis_cluster,
    redis_server,
    remote_inflight,
    sees,
    server_process,
)
from support.redis_ha import (
    SERVICE,
    MovingAddress,
    StallingProxy,
    move_slot,
    replicate,
    sentinel_group,
)
from support.server import RunningServer
from support.statestream import StateView

ANSWER = b'{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[]}'
OPERATOR = {"Authorization": "Bearer op"}
TRAFFIC_MAX = 2000
"""Most requests the traffic loop sends (it stops earlier, when the test says so)."""


def linked(snapshot: StateSnapshot, connector_id: str, instance_id: str) -> bool:
    """The state lists the connector, linked to that instance and serving."""
    return any(
        w.id == connector_id and w.instance == instance_id and w.status in ("idle", "busy")
        for w in snapshot.workers
    )


def healed(snapshot: StateSnapshot) -> bool:
    """Not degraded, and both instances' connectors listed."""
    return (
        not snapshot.server.degraded and linked(snapshot, "w1", "A") and linked(snapshot, "w2", "B")
    )


class Traffic:
    """Chat requests sent one after another, alternately at each instance, until stopped;
    every answer (or failure) is kept."""

    def __init__(self, urls: tuple[str, ...]) -> None:
        self.clients = [
            openai.AsyncOpenAI(base_url=url + "/api/v1", api_key="ck", max_retries=0, timeout=20)
            for url in urls
        ]
        self.served = 0
        self.failures: list[str] = []
        self.progress = asyncio.Condition()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        for client in itertools.islice(itertools.cycle(self.clients), TRAFFIC_MAX):
            if self._stop.is_set():
                return
            try:
                answer = await client.chat.completions.create(
                    model="demo", messages=[{"role": "user", "content": "hi"}]
                )
                assert answer.choices
            except (openai.APIError, AssertionError) as failure:
                self.failures.append(f"{client.base_url}: {failure!r}")
            async with self.progress:
                self.served += 1
                self.progress.notify_all()

    async def more(self, count: int) -> None:
        """Return once `count` more requests were answered."""
        async with self.progress:
            target = self.served + count
            await self.progress.wait_for(lambda: self.served >= target or self._task.done())
        assert self.served >= target, "the traffic stopped early"

    async def stop(self) -> None:
        self._stop.set()
        await self._task
        for client in self.clients:
            await client.close()


@asynccontextmanager
async def state_stream(http: aiohttp.ClientSession, url: str) -> AsyncIterator[StateView]:
    async with http.get(url + "/api/state/stream") as resp:
        yield StateView(resp)


async def fleet_of_two(
    stack: AsyncExitStack, redis_addr: str, backend_url: str
) -> tuple[ServerProcess, ServerProcess]:
    """Instances A and B as real `infero server` processes, a real `infero llm` linked to each
    (`w1` to A, `w2` to B), both seeing both."""
    env = {"OPERATOR_KEY": "op", "LEASE_TTL": "10s"}
    a = await stack.enter_async_context(server_process(redis_addr, "A", **env))
    b = await stack.enter_async_context(server_process(redis_addr, "B", **env))
    async with asyncio.timeout(STARTUP):
        await a.started()
        await b.started()
    await stack.enter_async_context(connector_process(a.ws_url, backend_url, "w1"))
    await stack.enter_async_context(connector_process(b.ws_url, backend_url, "w2"))
    return a, b


async def test_a_sentinel_failover_after_the_master_is_killed_is_followed_without_restart(
    tmp_path: Path,
) -> None:
    async with (
        sentinel_group(tmp_path) as group,
        serving(ControlledBackend()) as backend,
        aiohttp.ClientSession(headers=OPERATOR) as http,
        AsyncExitStack() as stack,
    ):
        a, b = await fleet_of_two(stack, group.url, backend.url)
        at_a = await stack.enter_async_context(state_stream(http, a.url))
        at_b = await stack.enter_async_context(state_stream(http, b.url))
        async with asyncio.timeout(STARTUP + 10):
            await at_a.until(healed)
            await at_b.until(healed)
        traffic = Traffic((a.url, b.url))
        try:
            async with asyncio.timeout(60):
                await traffic.more(4)
                old = await group.master()
                await old.stop()  # kill -9: what the replica had not received is lost
                for view in (at_a, at_b):
                    await view.until(lambda s: s.server.degraded)
                await traffic.more(2)  # served while degraded
                new = await group.promoted(old)
                assert new is not old
                await at_a.until(healed)
                await at_b.until(healed)
                await traffic.more(4)
        finally:
            await traffic.stop()
        assert traffic.failures == []
        async with asyncio.timeout(20):
            for server in (a, b):
                async with http.get(server.url + "/readyz") as resp:
                    assert (resp.status, await resp.json()) == (200, {"status": "ready"})
            async with http.post(b.url + "/api/workers/w1/drain") as resp:
                assert resp.status == 202  # forwarded to A over the peer channel
            for view in (at_a, at_b):
                await view.until(
                    lambda s: any(w.id == "w1" and w.status == "draining" for w in s.workers)
                )


async def chat(client: openai.AsyncOpenAI) -> str:
    answer = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    return answer.id


async def queue_through_the_fleet(
    a: RunningServer, b: RunningServer, conn: ScriptedConnector, total: int
) -> None:
    """With `w1` (A, one slot) busy, a request at B joins the fleet queue (Lua scripts), every
    instance mirrors it (a pipeline), and it is served once `w1` is free; both requests are
    counted in the fleet counters (a script): both instances show `total` served."""
    async with client_of(a) as at_a, client_of(b) as at_b:
        busy = asyncio.create_task(chat(at_a))
        held = await conn.next_request()
        await b.wait_for(lambda: remote_inflight(b, "w1") == 1)  # B queues it, not A
        waiting = asyncio.create_task(chat(at_b))
        for server in (a, b):
            await server.wait_for(lambda s=server: queue_depth(s) == 1)
        await conn.reply(held.id, ANSWER)
        incoming = await conn.next_request()
        await conn.reply(incoming.id, ANSWER)
        assert (await busy, await waiting) == ("x", "x")
    for server in (a, b):
        await server.wait_for(lambda s=server: queue_depth(s) == 0)
    for server in (a, b):
        await server.wait_for(lambda s=server: s.snapshot().server.jobs_completed_total == total)
    assert not federated(b).queue_degraded()


async def test_a_sentinel_failover_that_demotes_the_master_is_followed(tmp_path: Path) -> None:
    async with (
        sentinel_group(tmp_path, sentinels=1) as group,
        instance(group.url, "A") as a,
        instance(group.url, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1") as conn,
    ):
        async with asyncio.timeout(40):
            await b.wait_for(lambda: sees(b, "w1"))
            await queue_through_the_fleet(a, b, conn, total=2)
            old = await group.master()
            await group.ask("SENTINEL", "FAILOVER", SERVICE)
            await group.promoted(old)  # the old master lives on, a replica refusing writes
            async with scripted_connector(b.url, client_key="ck", id="w2"):
                await a.wait_for(lambda: sees(a, "w2"))  # written to the new master, read at A
            await queue_through_the_fleet(a, b, conn, total=4)
            for server in (a, b):
                assert not federated(server).membership.degraded


async def test_the_fleet_follows_its_slot_to_another_cluster_node(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither instance counts as degraded at any moment: membership reads and writes the keys
    on both nodes while the slot is split (only the scripts on keys of both sides may fail)."""
    caplog.set_level(logging.WARNING, logger="infero.server.membership")
    async with (
        redis_cluster(tmp_path) as redis_addr,
        instance(redis_addr, "A") as a,
        instance(redis_addr, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1") as conn,
    ):
        async with asyncio.timeout(40):
            await b.wait_for(lambda: sees(b, "w1"))
            await queue_through_the_fleet(a, b, conn, total=2)

            async def split() -> None:
                """Half the keys moved (a key is read where it is, or after an ASK redirection):
                a connector linked to B meanwhile reaches A's view, B relays to A's connector."""
                async with scripted_connector(b.url, client_key="ck", id="w3"):
                    await a.wait_for(lambda: sees(a, "w3"))
                async with client_of(b) as at_b:
                    call = asyncio.create_task(chat(at_b))
                    incoming = await conn.next_request()
                    await conn.reply(incoming.id, ANSWER)
                    assert await call == "x"

            source, target = await move_slot(redis_addr, halfway=split)
            assert source != target
            async with scripted_connector(b.url, client_key="ck", id="w2"):
                await a.wait_for(lambda: sees(a, "w2"))  # written to the new node, read at A
            await queue_through_the_fleet(a, b, conn, total=5)
            for server in (a, b):
                assert not federated(server).membership.degraded
    assert [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()] == []


async def test_a_master_demoted_behind_an_address_that_moves_is_left_for_the_new_one(
    tmp_path: Path,
) -> None:
    """A plain `redis://` address that a failover moves to the new primary (a DNS name, a
    virtual address): the demoted node answers writes `READONLY` on the connections still open
    to it, which the instances then close to reach the new primary."""
    async with (
        redis_server(tmp_path) as first,
        redis_server(tmp_path) as second,
        MovingAddress(first.port).serving() as address,
    ):
        await replicate(second, first)
        redis_addr = f"redis://127.0.0.1:{address.port}/0"
        async with (
            instance(redis_addr, "A") as a,
            instance(redis_addr, "B") as b,
            scripted_connector(a.url, client_key="ck", id="w1") as conn,
        ):
            async with asyncio.timeout(40):
                await b.wait_for(lambda: sees(b, "w1"))
                await queue_through_the_fleet(a, b, conn, total=2)
                await replicate(second, None)
                address.target = second.port
                await replicate(first, second)  # demoted: it refuses writes from now on
                async with scripted_connector(b.url, client_key="ck", id="w2"):
                    await a.wait_for(lambda: sees(a, "w2"))  # written to the new primary
                await queue_through_the_fleet(a, b, conn, total=4)
                for server in (a, b):
                    assert not federated(server).membership.degraded


async def test_a_request_at_an_instance_whose_redis_hangs_is_answered_in_bounded_time(
    tmp_path: Path,
) -> None:
    """B's Redis stops answering (its connections stay open) while A's only connector is busy
    in B's view. A request at B is not left in B's own queue, where no connector would ever
    serve it: B sends it to A from its last good view, A queues it and serves it once the
    connector is free. While the connector stays busy, a request at B gets A's
    `queue_timeout` within QUEUE_TIMEOUT plus a few Redis timeouts."""
    queue_timeout = 2.0
    bound = queue_timeout + 3 * CALL_TIMEOUT
    options = {"queue_timeout": queue_timeout, "lease_ttl": 10.0}  # B keeps its view meanwhile
    async with (
        redis_server(tmp_path) as redis,
        StallingProxy(redis.port).serving() as proxy,
        instance(redis.url, "A", **options) as a,
        instance(proxy.url, "B", **options) as b,
        scripted_connector(a.url, client_key="ck", id="w1") as conn,
        client_of(a) as at_a,
        client_of(b) as at_b,
    ):
        async with asyncio.timeout(10):
            await b.wait_for(lambda: sees(b, "w1"))
            busy = asyncio.create_task(chat(at_a))
            held = await conn.next_request()
            await b.wait_for(lambda: remote_inflight(b, "w1") == 1)
        proxy.stall()
        async with asyncio.timeout(bound):
            waiting = asyncio.create_task(chat(at_b))
            await a.wait_for(lambda: queue_depth(a) == 1)  # queued at A, the connector's home
            await conn.reply(held.id, ANSWER)
            incoming = await conn.next_request()
            await conn.reply(incoming.id, ANSWER)
            assert (await busy, await waiting) == ("x", "x")
            busy = asyncio.create_task(chat(at_a))
            held = await conn.next_request()
        assert federated(b).queue_degraded()
        async with asyncio.timeout(bound):
            with pytest.raises(openai.InternalServerError) as refused:
                await chat(at_b)
        assert refused.value.code == "queue_timeout"
        await conn.reply(held.id, ANSWER)
        assert await busy == "x"
        proxy.flow()
        async with asyncio.timeout(10):
            await b.wait_for(lambda: not federated(b).queue_degraded())


async def test_a_waiter_of_the_fleet_queue_is_served_from_the_last_good_view_once_redis_dies(
    tmp_path: Path,
) -> None:
    """A request at B waits in the fleet queue for A's only connector; Redis dies, then the
    connector frees up. No instance can read the queue or the others' load any more (A wakes
    nobody, B's view still says busy): B's waiter goes to A, the connector's home, which
    serves it, instead of waiting out QUEUE_TIMEOUT for a change no one can see."""
    options = {"queue_timeout": 8.0, "lease_ttl": 10.0}
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A", **options) as a,
        instance(redis.url, "B", **options) as b,
        scripted_connector(a.url, client_key="ck", id="w1") as conn,
        client_of(a) as at_a,
        client_of(b) as at_b,
    ):
        async with asyncio.timeout(10):
            await b.wait_for(lambda: sees(b, "w1"))
            busy = asyncio.create_task(chat(at_a))
            held = await conn.next_request()
            await b.wait_for(lambda: remote_inflight(b, "w1") == 1)
            waiting = asyncio.create_task(chat(at_b))
            for server in (a, b):
                await server.wait_for(lambda s=server: queue_depth(s) == 1)
            await redis.stop()
            for server in (a, b):
                await server.wait_for(lambda s=server: federated(s).queue_degraded())
            await conn.reply(held.id, ANSWER)
            assert await busy == "x"
        async with asyncio.timeout(options["queue_timeout"] - 2):
            incoming = await conn.next_request()
            await conn.reply(incoming.id, ANSWER)
            assert await waiting == "x"
