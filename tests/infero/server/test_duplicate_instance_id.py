"""An INSTANCE_ID already held by a live instance is refused, and nothing of the live instance
is lost; a restarted instance takes its own id back at once (docs/scale-out.md)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from redis import asyncio as aioredis

from infero.server.membership import PREFIX, ConnectorSummary, Lease, Listener
from support.connector import scripted_connector
from support.fleet import (
    PEER_KEY,
    STARTUP,
    federated,
    free_port,
    instance,
    redis_server,
    sees,
    server_process,
)
from support.redis_ha import MovingAddress

LEASE_A = PREFIX + "instance:A"


async def spawn(redis_url: str, instance_id: str, address: str) -> asyncio.subprocess.Process:
    """`infero server` as a real process on a free port, its stderr captured."""
    environ = {
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "REDIS_ADDR": redis_url,
        "PEER_KEY": PEER_KEY,
        "INSTANCE_ID": instance_id,
        "INSTANCE_ADDR": address,
        "LEASE_TTL": "3s",
        "CLIENT_KEY": "ck",
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from infero.cli import main; main(['server'])",
        env={**os.environ, **environ},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def exit_of(proc: asyncio.subprocess.Process, bound: float) -> tuple[int, str]:
    """The process's exit code and stderr, once it exited (killed after `bound` seconds)."""
    try:
        async with asyncio.timeout(bound):
            _, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def lease_of(redis_url: str, key: str = LEASE_A) -> Lease | None:
    client = aioredis.from_url(redis_url)
    try:
        raw = await client.get(key)
    finally:
        await client.aclose()
    return None if raw is None else Lease.load(raw)


async def lease_until(redis_url: str, check: Callable[[Lease], bool]) -> Lease:
    """A's lease in Redis once `check` holds for it (10 s at most)."""
    async with asyncio.timeout(10):
        while (lease := await lease_of(redis_url)) is None or not check(lease):  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # Redis tells no one of a write: polled, bounded above
    return lease


def connectors_lost(lost: list[str]) -> Listener:
    """A membership listener that notes every connector of A that left the view."""

    def listener(instance: str, _: ConnectorSummary | None, after: ConnectorSummary | None) -> None:
        if instance == "A" and after is None:
            lost.append(instance)

    return listener


@pytest.mark.parametrize("address", ["its own", "the same as A's"])
async def test_a_second_instance_with_a_live_instance_id_refuses_to_start(
    tmp_path: Path, address: str
) -> None:
    async with (
        redis_server(tmp_path) as redis,
        server_process(redis.url, "A") as a,
        instance(redis.url, "C") as c,
    ):
        async with asyncio.timeout(STARTUP):
            await a.started()
        async with scripted_connector(a.url, client_key="ck", id="w1"):
            await c.wait_for(lambda: sees(c, "w1"))
            held = await lease_of(redis.url)
            assert held is not None
            assert held.nonce
            lost: list[str] = []
            federated(c).membership.listeners.append(connectors_lost(lost))

            own = f"http://127.0.0.1:{free_port()}"
            second = await spawn(redis.url, "A", own if address == "its own" else a.url)
            code, err = await exit_of(second, STARTUP)

            assert code == 2, err
            assert "INSTANCE_ID 'A' is in use by another live instance at " + a.url in err, err
            assert "running since " in err, err
            assert "another INSTANCE_ID" in err, err
            assert "LEASE_TTL" in err, err
            now = await lease_of(redis.url)  # never written over
            assert now is not None
            assert (now.nonce, now.address) == (held.nonce, held.address)
            assert sees(c, "w1")
            assert lost == []
            assert a.proc.returncode is None


async def test_an_instance_restarted_after_kill_takes_its_id_back_at_once(tmp_path: Path) -> None:
    async with redis_server(tmp_path) as redis:
        async with server_process(redis.url, "A", LEASE_TTL="10s") as a:
            async with asyncio.timeout(STARTUP):
                await a.started()
            old = await lease_until(redis.url, lambda _: True)  # written just after it listens
            a.proc.kill()
            await a.proc.wait()
        port = int(a.url.rsplit(":", 1)[1])
        # Same id, same address, the old lease live for seconds more: no wait for a renewal
        # that never comes, nor for the lease to expire.
        began = asyncio.get_running_loop().time()
        async with instance(redis.url, "A", port=port, lease_ttl=10.0) as b:
            # Under the watch for a renewal it skipped (renewal_bound(10 s): 4.8 s),
            # with room for a loaded machine's start-up.
            assert asyncio.get_running_loop().time() - began < 4.0
            now = await lease_until(redis.url, lambda lease: lease.nonce != old.nonce)
            assert now.address == old.address == a.url
            assert now.nonce == federated(b).nonce
            assert federated(b).membership.duplicate is None


async def test_a_duplicate_found_while_running_stops_the_later_instance_and_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="infero.server.membership")
    async with (
        redis_server(tmp_path) as redis,
        MovingAddress(free_port()).serving() as door,  # Redis unreachable through it, at first
        instance(redis.url, "A") as a,
        instance(redis.url, "C") as c,
        scripted_connector(a.url, client_key="ck", id="w1"),
    ):
        await c.wait_for(lambda: sees(c, "w1"))
        own = f"http://127.0.0.1:{free_port()}"
        # B cannot read A's lease at start-up (Redis unreachable): it starts, degraded.
        second = await spawn(f"redis://127.0.0.1:{door.port}/0", "A", own)
        ready = asyncio.create_task(_stderr_line(second, b"listening on"))
        async with asyncio.timeout(STARTUP):
            await ready
        door.target = redis.port  # Redis answers B: its first write finds A's lease
        code, err = await exit_of(second, STARTUP)

        assert code == 2, err
        assert "INSTANCE_ID 'A' is in use by another live instance at " + a.url in err, err
        assert "this instance stops writing its lease" in err, err
        # A, started first, kept its id and wrote its lease whole again.
        held = await lease_until(redis.url, lambda lease: lease.address == a.url)
        assert held.nonce == federated(a).nonce
        await c.wait_for(
            lambda: sees(c, "w1") and federated(c).membership.peers["A"].address == a.url
        )
        assert federated(a).membership.duplicate is None
        said = [
            r.getMessage() for r in caplog.records if "written over by another" in r.getMessage()
        ]
        assert len(said) == 1, said
        assert own in said[0]


async def _stderr_line(proc: asyncio.subprocess.Process, marker: bytes) -> None:
    """Return once the process wrote a line holding `marker` on stderr (the rest stays in the
    pipe for `exit_of`)."""
    assert proc.stderr is not None
    while marker not in await proc.stderr.readline():
        assert proc.returncode is None
