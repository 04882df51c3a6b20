"""The response-id affinity table and the tap that learns ids from `POST /responses` answers."""

from __future__ import annotations

import json
from pathlib import Path

from redis import asyncio as aioredis

from infero.server.responses_affinity import (
    JSON_SCAN_LIMIT,
    RESPONSE_INDEX,
    RESPONSE_KEY,
    SSE_SCAN_LIMIT,
    MemoryAffinity,
    Owner,
    RedisAffinity,
    ResponseTap,
)
from support.fleet import redis_server

JSON = [("Content-Type", "application/json")]
SSE = [("Content-Type", "text/event-stream; charset=utf-8")]
A = Owner("w1", "m")


def _table(**kw: float) -> MemoryAffinity:
    values = {"max_entries": 3, "ttl": 100.0} | kw
    return MemoryAffinity(max_entries=int(values["max_entries"]), ttl=values["ttl"])


async def test_the_table_forgets_the_least_recently_used_id_beyond_its_bound() -> None:
    table = _table()
    for n in range(3):
        await table.remember(f"r{n}", A)
    assert await table.lookup("r0") == A  # r0 is now the most recently used
    await table.remember("r3", A)
    assert await table.lookup("r1") is None
    assert [await table.lookup(r) for r in ("r0", "r2", "r3")] == [A, A, A]
    assert len(table) == 3


async def test_the_table_forgets_an_id_after_its_retention_and_on_delete() -> None:
    now = [0.0]
    table = MemoryAffinity(max_entries=10, ttl=100.0, clock=lambda: now[0])
    await table.remember("r1", A)
    await table.remember("r2", A)
    now[0] = 99.0
    assert await table.lookup("r1") == A
    now[0] = 100.0
    assert await table.lookup("r1") is None
    assert len(table) == 1
    await table.forget("r2")
    await table.forget("never")
    assert len(table) == 0


async def test_a_json_answer_led_by_its_id_is_learned_from_the_first_chunk() -> None:
    table = _table()
    tap = ResponseTap(table, "m")
    tap.start("w2", 200, JSON)
    await tap.feed(b'{\n  "id": "resp_1",\n  "object": "response", "output": [')
    assert not tap.active
    assert await table.lookup("resp_1") == Owner("w2", "m")


async def test_a_json_answer_with_its_id_later_is_parsed_once_at_its_end() -> None:
    table = _table()
    tap = ResponseTap(table, "m")
    tap.start("w1", 200, JSON)
    body = json.dumps({"object": "response", "output": [{"id": "msg_1"}], "id": "resp_2"})
    await tap.feed(body[:20].encode())
    await tap.feed(body[20:].encode())
    assert tap.active
    await tap.end()
    assert not tap.active
    assert await table.lookup("resp_2") == A
    assert await table.lookup("msg_1") is None


async def test_a_stream_is_scanned_only_until_its_created_event() -> None:
    table = _table()
    tap = ResponseTap(table, "m")
    tap.start("w1", 200, SSE)
    created = {"type": "response.created", "response": {"id": "resp_3", "output": []}}
    event = f"event: response.created\r\ndata: {json.dumps(created)}\r\n\r\n".encode()
    await tap.feed(b": a comment\n\n" + event[:30])
    assert tap.active
    await tap.feed(event[30:])
    assert not tap.active
    assert await table.lookup("resp_3") == A


async def test_error_answers_and_answers_without_an_id_are_not_remembered() -> None:
    table = _table()
    tap = ResponseTap(table, "m")
    tap.start("w1", 404, JSON)
    assert not tap.active
    tap.start("w1", 200, SSE)
    await tap.feed(b"data: " + b"x" * SSE_SCAN_LIMIT + b"\n\n")
    assert not tap.active
    tap.start("w1", 200, JSON)
    await tap.feed(b"[" + b" " * JSON_SCAN_LIMIT)
    assert not tap.active
    tap.start("w1", 200, JSON)
    await tap.feed(b'{"object": "response", "id": ' + b"[" * 100_000)
    await tap.end()
    assert len(table) == 0


async def test_the_redis_table_keeps_its_bound_and_its_ttl_in_a_real_redis(tmp_path: Path) -> None:
    async with redis_server(tmp_path) as server:
        redis = aioredis.from_url(server.url)
        try:
            now = [1000.0]
            table = RedisAffinity(redis, max_entries=3, ttl=100.0, clock=lambda: now[0])
            for n in range(4):
                now[0] += 1
                await table.remember(f"r{n}", Owner("w1", f"m{n}"))
            assert await table.lookup("r0") is None  # the oldest remembered went first
            assert await table.lookup("r3") == Owner("w1", "m3")
            assert await redis.zcard(RESPONSE_INDEX) == 3
            ttl_ms = await redis.pttl(RESPONSE_KEY + "r3")
            assert 99_000 < ttl_ms <= 100_000
            other = RedisAffinity(redis, max_entries=3, ttl=100.0)  # another instance
            assert await other.lookup("r1") == Owner("w1", "m1")
            await other.forget("r1")
            assert await table.lookup("r1") is None
            assert await redis.zcard(RESPONSE_INDEX) == 2
            await redis.set(RESPONSE_KEY + "bad", b"not json")
            assert await table.lookup("bad") is None
        finally:
            await redis.aclose()


async def test_without_redis_the_table_finds_the_ids_this_instance_saw(tmp_path: Path) -> None:
    async with redis_server(tmp_path) as server:
        redis = aioredis.from_url(server.url)
        degraded = [False]
        table = RedisAffinity(redis, max_entries=3, ttl=100.0, degraded=lambda: degraded[0])
        await table.remember("r1", A)
        await server.stop()
        assert await table.lookup("r1") == A  # the command fails: the local copy answers
        degraded[0] = True
        await table.remember("r2", A)  # not even tried while degraded
        assert await table.lookup("r2") == A
        await redis.aclose()
