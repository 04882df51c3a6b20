"""`FederatedRelays.locate` against a real Redis: a relay id that no lease read lists
(docs/scale-out.md, "MCP relays"). Redis commands are counted by the server (`INFO
commandstats`); the clock is the test's, so nothing waits for time to pass."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import pytest
from redis import asyncio as aioredis

from infero.server.mcp import fleet
from infero.server.mcp.fleet import RELAY_PREFIX, UNKNOWN_TTL, FederatedRelays, RemoteRelay
from infero.server.mcp.relays import RelayRegistry
from infero.server.membership import PREFIX, Lease, RelaySummary
from infero.server.peer import PeerClient
from support.fleet import redis_server


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class View:
    """The other instances' leases as this instance last read them."""

    def __init__(self) -> None:
        self.leases: list[Lease] = []
        self.version = 0

    def show(self, *leases: Lease) -> None:
        self.leases, self.version = list(leases), self.version + 1


def lease(instance: str, *relay_ids: str) -> Lease:
    relays = tuple(
        RelaySummary(
            id=r, name=r, version="1", status="idle", inflight=0, connected_at=1.0, auth_digest=""
        )
        for r in relay_ids
    )
    return Lease(
        id=instance,
        address=f"http://{instance}",
        version="1",
        started_at=1.0,
        links=len(relays),
        inflight=0,
        relays=relays,
    )


@asynccontextmanager
async def at_b(
    tmp_path: Path,
) -> AsyncIterator[tuple[FederatedRelays, aioredis.Redis, Ticks, View]]:
    """Instance B's relays (none linked to B) on a fresh Redis that only B's lookups use."""
    async with redis_server(tmp_path) as server:
        store = aioredis.from_url(server.url)
        ticks, view = Ticks(), View()
        relays = FederatedRelays(
            RelayRegistry(),
            redis=store,
            instance_id="B",
            ttl=3.0,
            peers=lambda: view.leases,
            version=lambda: view.version,
            client=cast(PeerClient, None),
            clock=ticks,
        )
        try:
            yield relays, store, ticks, view
        finally:
            await relays.close()
            await store.aclose()


async def linked_at_a(store: aioredis.Redis, relay_id: str) -> None:
    """The relay's id lease names A, and A's header lists it."""
    await store.set(RELAY_PREFIX + relay_id, "A\nnonce-1")
    await store.set(PREFIX + "instance:A", lease("A", relay_id).dump())


async def gets(store: aioredis.Redis) -> int:
    stats = await store.info("commandstats")
    return int(stats.get("cmdstat_get", {}).get("calls", 0))


async def test_a_wrong_id_asked_again_and_again_costs_one_get_a_second(tmp_path: Path) -> None:
    async with at_b(tmp_path) as (relays, store, ticks, _):
        found = await asyncio.gather(*(relays.locate("nobody") for _ in range(20)))
        assert found == [None] * 20
        assert await gets(store) == 1, "callers asking at once share one read"
        for _ in range(50):
            assert await relays.locate("nobody") is None
        assert await gets(store) == 1, "an id found nowhere is not read again at once"
        ticks.now += UNKNOWN_TTL - 0.01
        assert await relays.locate("nobody") is None
        assert await gets(store) == 1
        ticks.now += 0.01
        assert await relays.locate("nobody") is None
        assert await gets(store) == 2, "read again once UNKNOWN_TTL has passed"
        assert await relays.locate("other") is None
        assert await gets(store) == 3, "each id is read once"


async def test_callers_asking_at_once_for_a_relay_linked_elsewhere_share_one_read(
    tmp_path: Path,
) -> None:
    async with at_b(tmp_path) as (relays, store, _, _):
        await linked_at_a(store, "r1")
        before = await gets(store)
        found = await asyncio.gather(*(relays.locate("r1") for _ in range(20)))
        assert {(r.id, r.instance, r.address) for r in found if r} == {("r1", "A", "http://A")}
        assert len([r for r in found if r]) == 20
        assert await gets(store) - before == 2, "the id lease and A's header, once"
        assert await relays.locate("r1") is not None
        assert await gets(store) - before == 4, "a relay found is not remembered: read again"


class Held:
    """The Redis client, whose `GET`s wait until the test lets them through."""

    def __init__(self, store: aioredis.Redis) -> None:
        self.store = store
        self.asked = asyncio.Event()
        self.through = asyncio.Event()

    async def get(self, key: str) -> bytes | None:
        self.asked.set()
        await self.through.wait()
        return cast(bytes | None, await self.store.get(key))


async def test_a_caller_leaving_leaves_the_shared_read_to_the_others(tmp_path: Path) -> None:
    async with at_b(tmp_path) as (relays, store, _, _):
        await linked_at_a(store, "r1")
        held = relays.redis = Held(store)
        first = asyncio.create_task(relays.locate("r1"))
        second = asyncio.create_task(relays.locate("r1"))
        async with asyncio.timeout(5):
            await held.asked.wait()
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            held.through.set()
            located = await second
        assert isinstance(located, RemoteRelay)
        assert located.instance == "A"


async def test_an_id_the_leases_read_list_meanwhile_is_reached_at_once(tmp_path: Path) -> None:
    """The memory of an id found nowhere does not outlive the leases listing it: the relay is
    reached as soon as this instance reads its home's header, and once it is no longer listed
    its id is read from Redis again at the next call."""
    async with at_b(tmp_path) as (relays, store, _, view):
        assert await relays.locate("r1") is None
        assert await gets(store) == 1
        view.show(lease("A", "r1"))  # B reads A's header: the relay linked there
        located = await relays.locate("r1")
        assert located is not None
        assert located.instance == "A"
        assert await gets(store) == 1
        view.show()  # A's header no longer lists it (the relay moved to C a moment ago)
        await store.set(RELAY_PREFIX + "r1", "C\nnonce-2")
        await store.set(PREFIX + "instance:C", lease("C", "r1").dump())
        located = await relays.locate("r1")
        assert located is not None
        assert located.instance == "C", "the clock has not moved: no memory of the id was kept"
        assert await gets(store) == 3


async def test_at_most_unknown_max_ids_are_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fleet, "UNKNOWN_MAX", 2)
    async with at_b(tmp_path) as (relays, store, _, _):
        for relay_id in ("a", "b", "c"):
            assert await relays.locate(relay_id) is None
        assert await gets(store) == 3
        assert await relays.locate("c") is None
        assert await relays.locate("b") is None
        assert await gets(store) == 3
        assert await relays.locate("a") is None
        assert await gets(store) == 4, "the oldest id was forgotten"
