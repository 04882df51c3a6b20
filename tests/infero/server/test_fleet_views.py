"""With REDIS_ADDR, every instance shows the whole fleet: the other instances' connectors with
their heartbeat state, `/metrics` fleet gauges and `infero ctl`; instances announce themselves
once, and again after Redis restarted empty (docs/scale-out.md, docs/metrics.md)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from redis import asyncio as aioredis

from infero.server.membership import MEMBERS
from support.connector import scripted_connector
from support.fleet import federated, instance, redis_server
from support.server import RunningServer
from support.statestream import StateView


def late(server: RunningServer, connector_id: str) -> bool | None:
    """The connector's `heartbeat_late` in the instance's `/api/state` (None: not listed)."""
    worker = server.worker(connector_id)
    return worker.heartbeat_late if worker is not None else None


async def test_a_silent_connector_of_a_turns_late_at_b_and_recovers(tmp_path: Path) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A", heartbeat_interval=0.1, link_dead_after=30.0) as a,
        instance(redis.url, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1") as conn,
    ):
        async with asyncio.timeout(20):
            await b.wait_for(lambda: late(b, "w1") is False)
            conn.answer_pings = False
            await b.wait_for(lambda: late(b, "w1") is True)
            assert b.status("w1") == "idle"
            conn.answer_pings = True
            await b.wait_for(lambda: late(b, "w1") is False)


async def test_an_instance_is_ready_while_a_connector_of_another_instance_serves(
    tmp_path: Path,
) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        aiohttp.ClientSession() as http,
        http.get(b.url + "/api/state/stream") as resp,
    ):
        view = StateView(resp)
        async with asyncio.timeout(20):
            await view.until(lambda s: s.server.state == "not_ready")
            async with scripted_connector(a.url, client_key="ck", id="w1") as w1:
                await view.until(lambda s: s.server.state == "ready")
                async with http.get(b.url + "/readyz") as ready:
                    assert ready.status == 200
                await w1.status(status="draining", max_concurrency=1)
                await view.until(lambda s: s.server.state == "not_ready")
                assert b.snapshot().server.state == "not_ready"


async def scrape(http: aiohttp.ClientSession, server: RunningServer) -> dict[str, float]:
    """`/metrics` of an instance as {sample with labels: value}."""
    async with http.get(server.url + "/metrics") as resp:
        text = await resp.text()
    return {
        f"{sample.name}{sorted(sample.labels.items())}": sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


GAUGES = (
    "infero_connectors_connected[]",
    "infero_connectors_draining[]",
    "infero_requests_inflight[]",
)


async def test_metrics_on_b_count_the_connectors_linked_to_a(tmp_path: Path) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        scripted_connector(
            a.url, client_key="ck", id="w1", models=["m-a"], max_concurrency=2
        ) as w1,
        scripted_connector(a.url, client_key="ck", id="w2", models=["m-a"]) as w2,
        scripted_connector(b.url, client_key="ck", id="w3", models=["m-b"]),
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(20):
            await w2.status(status="draining", max_concurrency=1)
            await b.wait_for(lambda: b.status("w2") == "draining")
            body = {"model": "m-a", "messages": [{"role": "user", "content": "hi"}]}
            held = asyncio.create_task(http.post(b.url + "/api/v1/chat/completions", json=body))
            incoming = await w1.next_request()
            await b.wait_for(lambda: b.status("w1") == "busy")
            for server in (a, b):
                figures = await scrape(http, server)
                assert [figures[g] for g in GAUGES] == [3, 1, 1]
                assert figures["infero_queue_depth[('model', 'm-a')]"] == 0
                assert figures["infero_queue_depth[('model', 'm-b')]"] == 0
            await w1.reply(incoming.id, b'{"id":"x","object":"chat.completion","choices":[]}')
            (await held).release()


async def commands(store: aioredis.Redis, name: str) -> int:
    stats = await store.info("commandstats")
    return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))


async def test_instances_join_the_membership_set_once_and_again_after_redis_restarted_empty(
    tmp_path: Path,
) -> None:
    async with (
        redis_server(tmp_path) as redis,
        # The default 3 s lease, renewed every second: a 1 s lease lapsed whenever the event loop
        # (both instances share it here) stalled for 0.7 s, and a lapsed lease rightly re-joins.
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
    ):
        store = aioredis.from_url(redis.url)
        try:
            async with asyncio.timeout(20):
                await b.wait_for(lambda: "A" in federated(b).membership.peers)
                await a.wait_for(lambda: "B" in federated(a).membership.peers)
                await store.config_resetstat()
                while True:  # until each instance renewed its lease a few times (TTL / 3)
                    if await commands(store, "set") >= 8:
                        break
                    await asyncio.sleep(0.05)  # polling Redis with a bound: no event to wait on
                assert await commands(store, "sadd") == 0
            await redis.stop()
            await redis.start()  # empty: no lease, no connector, no membership set
        finally:
            await store.aclose()
        store = aioredis.from_url(redis.url)  # a connection to the new server
        try:
            async with asyncio.timeout(20):
                while True:  # both instances announce themselves again, by themselves
                    if await store.smembers(MEMBERS) == {b"A", b"B"}:
                        break
                    await asyncio.sleep(0.05)  # polling Redis with a bound: no event to wait on
                assert await store.exists("{infero}:instance:A", "{infero}:instance:B") == 2
                await b.wait_for(lambda: "A" in federated(b).membership.peers)
        finally:
            await store.aclose()


async def ctl(*args: str) -> str:
    """`infero ctl ARGS` as a real process; its stdout (it must exit 0)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        f"from infero.cli import main; main({['ctl', *args]!r})",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_infero_ctl_lists_the_instances_and_where_each_worker_is(tmp_path: Path) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1"),
        scripted_connector(b.url, client_key="ck", id="w2"),
    ):
        async with asyncio.timeout(30):
            await b.wait_for(lambda: b.status("w1") == "idle" and b.status("w2") == "idle")
            instances = (await ctl("instances", "--server", b.url)).splitlines()
            assert [line.split()[:2] for line in instances[1:]] == [["B", b.url], ["A", a.url]]
            workers = (await ctl("workers", "--server", b.url)).splitlines()
            assert workers[0].split()[-1] == "INSTANCE"
            assert {line.split()[0]: line.split()[-1] for line in workers[1:]} == {
                "w1": "A",
                "w2": "B",
            }
