"""With REDIS_ADDR the request counters are the fleet's, kept in Redis: every instance shows the
same figures, a request relayed B -> A is counted once, and the counters survive a restart
(docs/scale-out.md, docs/metrics.md, docs/state.md)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import openai
from redis import asyncio as aioredis

from infero.protocol import link as lp
from infero.protocol.state import ModelInfo, WorkerInfo
from infero.server.events import Outcome, RequestFinished
from infero.server.fleetcounters import CHANGED_KEY, CONNECTOR_KEY, FLEET_KEY, FleetCounters
from infero.server.membership import REDIS_FAILURES
from support.connector import ScriptedConnector, scripted_connector
from support.fleet import (
    STARTUP,
    client_of,
    federated,
    instance,
    redis_cluster,
    redis_server,
    server_process,
)
from support.reply_dropper import reply_dropper
from support.server import RunningServer

ANSWER = b'{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[]}'
USAGE = lp.Usage(prompt_tokens=3, completion_tokens=5)
MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


@asynccontextmanager
async def answering(conn: ScriptedConnector) -> AsyncIterator[None]:
    """Answer every request the connector gets, with usage, while the block runs."""

    async def serve() -> None:
        while True:
            incoming = await conn.next_request()
            await conn.reply(incoming.id, ANSWER, usage=USAGE)

    task = asyncio.create_task(serve())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def ask(server: RunningServer, model: str = "m") -> None:
    async with client_of(server) as client:
        assert (await client.chat.completions.create(model=model, messages=MESSAGES)).id == "x"


def model_row(server: RunningServer, name: str = "m") -> ModelInfo:
    return next((m for m in server.snapshot().models if m.name == name), ModelInfo(name=name))


def worker_row(server: RunningServer, worker_id: str) -> WorkerInfo | None:
    return server.worker(worker_id)


def served(server: RunningServer, count: int, worker_id: str = "w1") -> bool:
    """The instance shows `count` requests for model `m`, its connector and the server."""
    worker = worker_row(server, worker_id)
    snapshot = server.snapshot()
    return (
        model_row(server).requests_total == count
        and worker is not None
        and worker.processed_total == count
        and snapshot.server.jobs_completed_total == count
    )


async def scrape(http: aiohttp.ClientSession, server: RunningServer) -> str:
    async with http.get(server.url + "/metrics") as resp:
        return await resp.text()


def sample(text: str, line: str) -> float | None:
    """The value of the sample whose name and labels are `line`."""
    for row in text.splitlines():
        if row.startswith(line + " "):
            return float(row.rsplit(" ", 1)[1])
    return None


async def test_a_request_relayed_from_b_to_a_is_counted_once_and_shown_alike_everywhere(
    tmp_path: Path,
) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1", max_concurrency=4) as conn,
        answering(conn),
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(20):
            await b.wait_for(lambda: b.status("w1") == "idle")
            await ask(b)  # relayed B -> A
            await ask(a)
            for server in (a, b):
                await server.wait_for(lambda s=server: served(s, 2))
                row = model_row(server)
                assert (row.success_total, row.tokens_in_total, row.tokens_out_total) == (2, 6, 10)
                worker = worker_row(server, "w1")
                assert worker is not None
                assert worker.per_model["m"].success_total == 2
                assert worker.tokens_total == 16
            at_a, at_b = await scrape(http, a), await scrape(http, b)
        # Per instance: served at A (both), relayed at B (one); fleet series alike.
        assert sample(at_a, 'infero_model_requests_total{model="m",outcome="success"}') == 2
        assert sample(at_b, 'infero_model_requests_total{model="m",outcome="success"}') is None
        assert sample(at_b, 'infero_requests_relayed_total{outcome="success"}') == 1
        assert sample(at_a, 'infero_requests_relayed_total{outcome="success"}') == 0
        for text in (at_a, at_b):
            assert (
                sample(text, 'infero_fleet_model_requests_total{model="m",outcome="success"}') == 2
            )
            assert sample(text, 'infero_fleet_model_tokens_total{kind="out",model="m"}') == 10


async def test_counters_continue_after_a_restart_and_follow_a_connector_to_another_instance(
    tmp_path: Path,
) -> None:
    async with redis_server(tmp_path) as redis, asyncio.timeout(40):
        async with (
            instance(redis.url, "A") as a,
            scripted_connector(a.url, client_key="ck", id="w1", max_concurrency=4) as conn,
            answering(conn),
        ):
            await ask(a)
            await ask(a)
            await a.wait_for(lambda: served(a, 2))
        # A stopped (its last counts flushed at shutdown); w1 links to B now.
        async with (
            instance(redis.url, "B") as b,
            scripted_connector(b.url, client_key="ck", id="w1", max_concurrency=4) as conn,
            answering(conn),
        ):
            await b.wait_for(lambda: served(b, 2))
            await ask(b)
            await b.wait_for(lambda: served(b, 3))
            async with instance(redis.url, "A") as again:  # A restarted: nothing in its memory
                await again.wait_for(lambda: served(again, 3))
                await ask(again)  # relayed to B: counted once, by B
                for server in (again, b):
                    await server.wait_for(lambda s=server: served(s, 4))


async def test_every_instance_shows_zero_after_redis_restarted_empty(tmp_path: Path) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1", max_concurrency=4) as conn,
        answering(conn),
    ):
        async with asyncio.timeout(30):
            await b.wait_for(lambda: b.status("w1") == "idle")
            await ask(a)
            await ask(a)
            for server in (a, b):
                await server.wait_for(lambda s=server: served(s, 2))
            await redis.stop()
            await redis.start()  # empty: the fleet's counters restart from zero
            for server in (a, b):  # A's own process counted 2: not shown as the fleet's
                await server.wait_for(lambda s=server: served(s, 0))
            await ask(b)  # relayed to A
            for server in (a, b):
                await server.wait_for(lambda s=server: served(s, 1))


async def test_a_flush_is_one_command_however_many_requests_it_carries(tmp_path: Path) -> None:
    async with redis_server(tmp_path) as server:
        redis = aioredis.from_url(server.url)
        other = aioredis.from_url(server.url)
        try:
            mine = FleetCounters(redis, instance_id="A")
            theirs = FleetCounters(other, instance_id="B")
            await redis.config_resetstat()
            for n in range(100):
                mine.request_finished(_finished("w1", "m", n))
            theirs.request_finished(_finished("w2", "m", 0, outcome="error", error="boom"))
            await mine.flush()
            await theirs.flush()
            stats = await redis.info("commandstats")
            sha = stats["cmdstat_evalsha"]  # the first one fails (NOSCRIPT), then it is loaded
            assert sha["calls"] - sha["failed_calls"] == 2
            assert "cmdstat_eval" not in stats
            # Inside the script: one HINCRBY per counter that changed, not per request.
            assert stats["cmdstat_hincrby"]["calls"] < 40
            await redis.config_resetstat()
            await mine.flush()  # reads what the other instance added: w2's hash, not w1's
            stats = await redis.info("commandstats")
            assert stats["cmdstat_evalsha"]["calls"] == 1
            assert stats["cmdstat_hgetall"]["calls"] == 2  # the models, and w2
            model = mine.model("m")
            assert model is not None
            assert (model.requests_total, model.success_total, model.error_total) == (101, 100, 1)
            assert model.tokens_out_total == 505
            assert abs(model.duration_s_total - (sum(range(100)) / 100 + 0.5)) < 1e-6
            w2 = mine.connector("w2")
            assert w2 is not None
            assert (w2.failures_total, w2.last_error) == (1, "boom")
            assert mine.requests_of_connector("w1") == 100
            assert await redis.pttl(CONNECTOR_KEY + "w1") > 0
            assert await redis.ttl(FLEET_KEY) == -1
            # Nothing new anywhere: the flush reads nothing back.
            version = mine.version
            await mine.flush()
            assert mine.version == version
        finally:
            await redis.aclose()
            await other.aclose()


async def test_an_idle_flush_names_no_connector_and_a_change_reads_back_only_its_own(
    tmp_path: Path,
) -> None:
    async with redis_server(tmp_path) as server:
        redis = aioredis.from_url(server.url)
        other = aioredis.from_url(server.url)
        try:
            recounted: list[set[str]] = []
            mine = FleetCounters(redis, instance_id="A", on_change=recounted.append)
            theirs = FleetCounters(other, instance_id="B")
            for n in range(1000):
                theirs.request_finished(_finished(f"w{n}", "m", 1))
            await theirs.flush()
            await mine.flush()  # the first read: every connector
            assert mine.requests_of_model("m") == 1000
            assert recounted.pop() == {f"w{n}" for n in range(1000)}
            sent: list[list[Any]] = []
            script = mine._script

            async def recorded(*, keys: list[Any], args: list[Any]) -> Any:
                sent.append([*keys, *args])
                return await script(keys=keys, args=args)

            mine._script = recorded
            await redis.config_resetstat()
            before = (await redis.info("stats"))["total_net_input_bytes"]
            for _ in range(3):  # idle: nothing counted anywhere
                await mine.flush()
            received = (await redis.info("stats"))["total_net_input_bytes"] - before
            stats = await redis.info("commandstats")
            assert stats["cmdstat_evalsha"]["calls"] == 3
            assert "cmdstat_hgetall" not in stats
            assert "cmdstat_zrangebyscore" not in stats
            assert not any(CONNECTOR_KEY in str(arg) for call in sent for arg in call)
            assert received < 1000  # 1000 connector names alone are over 30 KB
            assert recounted == []
            theirs.request_finished(_finished("w7", "m", 2))  # one connector changes
            await theirs.flush()
            await redis.config_resetstat()
            await mine.flush()
            stats = await redis.info("commandstats")
            assert stats["cmdstat_hgetall"]["calls"] == 2  # the models, and w7
            assert recounted == [{"w7"}]
            assert mine.requests_of_connector("w7") == 2
            assert mine.requests_of_connector("w8") == 1
            assert mine.requests_of_model("m") == 1001
            mine.request_finished(_finished("w9", "m", 1))  # its own change names only w9
            await mine.flush()
            assert [arg for arg in sent[-1] if CONNECTOR_KEY in str(arg)] == [CONNECTOR_KEY + "w9"]
            assert mine.requests_of_connector("w9") == 2
        finally:
            await redis.aclose()
            await other.aclose()


async def test_connectors_whose_counters_expired_leave_the_change_set(tmp_path: Path) -> None:
    async with redis_server(tmp_path) as server:
        redis = aioredis.from_url(server.url)
        try:
            counters = FleetCounters(redis, instance_id="A")
            for worker_id in ("w1", "w2"):
                counters.request_finished(_finished(worker_id, "m", 1))
            await counters.flush()
            assert await redis.zcard(CHANGED_KEY) == 2
            await redis.delete(CONNECTOR_KEY + "w1")  # as when its retention ran out
            counters.request_finished(_finished("w3", "m", 1))
            await counters.flush()
            assert await redis.zrange(CHANGED_KEY, 0, -1) == [
                (CONNECTOR_KEY + "w2").encode(),
                (CONNECTOR_KEY + "w3").encode(),
            ]
        finally:
            await redis.aclose()


async def test_counts_wait_while_redis_is_away_and_are_shown_meanwhile(tmp_path: Path) -> None:
    async with redis_server(tmp_path) as server:
        redis = aioredis.from_url(server.url)
        try:
            counters = FleetCounters(redis, instance_id="A")
            counters.request_finished(_finished("w1", "m", 1))
            await server.stop()
            with contextlib.suppress(OSError, aioredis.ConnectionError):
                await counters.flush()
            counters.request_finished(_finished("w1", "m", 2))
            assert counters.requests_of_model("m") == 2  # shown, not sent
            await server.start()  # empty
            await counters.flush()  # the failed flush again, as it was
            assert counters.requests_of_model("m") == 2
            assert await redis.hget(FLEET_KEY, "requests_total/m") == b"1"
            await counters.flush()  # then what was counted since
            assert counters.requests_of_model("m") == 2
            assert counters.pending.models == counters.sending.models == {}
            assert await redis.hget(FLEET_KEY, "requests_total/m") == b"2"
        finally:
            await redis.aclose()


async def test_a_flush_whose_answer_was_lost_is_counted_once(tmp_path: Path) -> None:
    async with redis_server(tmp_path) as server, reply_dropper(server.port) as proxy:
        redis = aioredis.from_url(server.url)
        through = aioredis.from_url(proxy.url)
        try:
            counters = FleetCounters(through, instance_id="A")
            await counters.flush()  # the script is loaded, the connection open
            counters.request_finished(_finished("w1", "m", 1))
            proxy.armed = True
            # The script runs at Redis, its answer is lost: redis-py sends it again on a new
            # connection (or the flush fails, and the next one sends it again).
            with contextlib.suppress(*REDIS_FAILURES):
                await counters.flush()
            await counters.flush()
            assert proxy.dropped == 1
            assert await redis.hget(FLEET_KEY, "requests_total/m") == b"1"
            assert await redis.hget(CONNECTOR_KEY + "w1", "requests_total") == b"1"
            assert counters.requests_of_model("m") == 1
            counters.request_finished(_finished("w1", "m", 2))  # the next flush counts again
            await counters.flush()
            assert await redis.hget(FLEET_KEY, "requests_total/m") == b"2"
            assert counters.requests_of_model("m") == 2
            restarted = FleetCounters(redis, instance_id="A")  # a new process, same instance
            restarted.request_finished(_finished("w1", "m", 3))
            await restarted.flush()
            assert await redis.hget(FLEET_KEY, "requests_total/m") == b"3"
        finally:
            await through.aclose()
            await redis.aclose()


def _finished(
    worker_id: str, model: str, n: int, *, outcome: Outcome = "success", error: str = ""
) -> RequestFinished:
    return RequestFinished(
        model=model,
        worker_id=worker_id,
        outcome=outcome,
        status=200,
        duration_s=n / 100 if outcome == "success" else 0.5,
        ttft_s=0.01,
        queue_wait_s=0.0,
        tokens_in=1,
        tokens_out=5,
        error=error,
    )


def linked_at(server: RunningServer, url: str) -> bool:
    """The instance sees w1 idle at instance A listening at `url`."""
    lease = federated(server).membership.peers.get("A")
    return lease is not None and lease.address == url and server.status("w1") == "idle"


async def test_a_killed_server_process_loses_only_its_unflushed_counts(tmp_path: Path) -> None:
    async with redis_server(tmp_path) as redis, instance(redis.url, "B") as b:
        for served_before in (0, 2):  # A's first process, then a new one after kill -9
            async with server_process(redis.url, "A") as a, asyncio.timeout(STARTUP + 20):
                await a.started()
                async with (
                    scripted_connector(a.url, client_key="ck", id="w1", max_concurrency=4) as conn,
                    answering(conn),
                ):
                    await b.wait_for(lambda url=a.url: linked_at(b, url))
                    await b.wait_for(lambda n=served_before: served(b, n))  # from Redis
                    await ask(b)  # B -> the process A -> w1: counted by A, flushed within 1 s
                    await ask(b)
                    await b.wait_for(lambda n=served_before: served(b, n + 2))
                    a.proc.kill()  # kill -9: what A flushed stays
                    await a.proc.wait()


async def test_the_counters_work_on_a_redis_cluster(tmp_path: Path) -> None:
    async with (
        redis_cluster(tmp_path) as redis_addr,
        instance(redis_addr, "A") as a,
        instance(redis_addr, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1", max_concurrency=4) as conn,
        answering(conn),
    ):
        async with asyncio.timeout(30):
            await b.wait_for(lambda: b.status("w1") == "idle")
            await ask(b)
            for server in (a, b):
                await server.wait_for(lambda s=server: served(s, 1))
