"""The Redis client of REDIS_ADDR against a real `redis-server` that goes away and comes back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from infero.server.redisclient import connect
from support.fleet import redis_server

POOLED = 6
"""Connections the client opens before Redis restarts (commands sent at once)."""


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
