"""The Redis client of REDIS_ADDR against a real `redis-server` that goes away and comes back,
and a real Cluster whose slot moves to a node just added."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from infero.server.redisclient import connect
from support.fleet import redis_cluster, redis_server
from support.redis_ha import added_node, move_slot

POOLED = 6
"""Connections the client opens before Redis restarts (commands sent at once)."""
KEYS = [f"{{infero}}:k{n}" for n in range(8)]
"""Keys of one slot; the resharding moves them one at a time, in this order."""


async def test_every_pooled_connection_works_at_once_after_redis_restarts(
    tmp_path: Path,
) -> None:
    """A connection left in the pool while Redis was away fails at its first use; the client
    tries such a command once more on a new connection instead of failing it (an instance
    would count as degraded for that command: a waiter sent to its own queue, a flush lost)."""
    async with redis_server(tmp_path) as redis:
        client = connect(redis.url)
        try:
            async with asyncio.timeout(20):
                assert all(await asyncio.gather(*(client.ping() for _ in range(POOLED))))
                assert len(client.connection_pool._available_connections) == POOLED
                await redis.stop()
                with pytest.raises(RedisConnectionError):
                    await client.ping()  # away: it fails (and is not retried for long)
                await redis.start()
                assert all(await asyncio.gather(*(client.ping() for _ in range(POOLED))))
                await client.set("k", "v")
                assert await client.get("k") == b"v"
        finally:
            await client.aclose()


async def test_a_slot_split_between_two_cluster_nodes_is_read_and_written(tmp_path: Path) -> None:
    """Mid-resharding, to a node added for it (it serves no slot yet): a key already moved is
    answered after an `ASK` redirection, with several connections open to each node at once
    (`ASKING` and its command must share one), alone, in a pipeline and written."""
    async with redis_cluster(tmp_path) as redis_addr, added_node(redis_addr, tmp_path) as new:
        client = connect(redis_addr)
        try:
            async with asyncio.timeout(30):
                for key in KEYS:
                    await client.set(key, key)

                async def split() -> None:
                    for _ in range(3):  # the pool holds several connections after the first
                        assert await asyncio.gather(*(client.get(k) for k in KEYS * 2)) == [
                            k.encode() for k in KEYS * 2
                        ]
                    pipe = client.pipeline(transaction=False)
                    for key in KEYS:
                        pipe.get(key)
                        pipe.append(key, "+")
                    replies = await pipe.execute()
                    assert replies[::2] == [k.encode() for k in KEYS]
                    await client.xadd("{infero}:log", {"k": "v"})  # a new key, at the target

                source, target = await move_slot(redis_addr, halfway=split, to=new)
                assert (source != target, target) == (True, new)
                assert [await client.get(k) for k in KEYS] == [f"{k}+".encode() for k in KEYS]
                assert await client.xlen("{infero}:log") == 1
        finally:
            await client.aclose()
