"""With REDIS_ADDR, every instance shows the whole fleet: the other instances' connectors with
their heartbeat state, and `/metrics` fleet gauges (docs/scale-out.md, docs/metrics.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from support.connector import scripted_connector
from support.fleet import instance, redis_server
from support.server import RunningServer


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
