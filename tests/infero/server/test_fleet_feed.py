"""With several instances, the state stream's deltas come from the fleet's change log.

Instances share a real Redis; connectors are linked to instance A, a real stream client reads
instance B's `/api/state/stream` (docs/scale-out.md, docs/state.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
from redis import asyncio as aioredis

from infero.protocol.delta import StateDelta
from infero.protocol.state import StateSnapshot
from infero.server.changes import ChangeFeed
from infero.server.membership import (
    CHANGES,
    DETAIL_SPACING,
    ENTRY_MAX,
    MEMBERS,
    PREFIX,
    RELAYS_PER_ENTRY,
    ConnectorSummary,
    Lease,
    Membership,
    PeerMirror,
    RelayDetail,
    RelaySummary,
    RemoteIndex,
    SessionSummary,
)
from infero.server.state import PUBLISHER
from infero.server.statefeed import Scope
from support.connector import ScriptedConnector, scripted_connector
from support.fleet import (
    STARTUP,
    federated,
    instance,
    redis_cluster,
    redis_server,
    server_process,
)
from support.statestream import StateView

X1 = ConnectorSummary("x1", "X1", ("m",), 4, 0, "idle", 1.0)
GHOST = Lease(id="ghost", address="http://127.0.0.1:9", version="0", started_at=0.0, links=1,
              inflight=0)  # fmt: skip


def _rows(snap: StateSnapshot) -> dict[str, tuple[str, str]]:
    """Connector id -> (instance, status)."""
    return {w.id: (w.instance, w.status) for w in snap.workers}


def _entry(
    gen: str, seq: int, upsert: list[ConnectorSummary], removed: list[str]
) -> dict[bytes, bytes]:
    return {
        b"i": b"p",
        b"g": gen.encode(),
        b"n": str(seq).encode(),
        b"u": ("[" + ",".join(c.dump() for c in upsert) + "]").encode(),
        b"r": json.dumps(removed).encode(),
    }


def test_a_mirror_applies_entries_in_order_and_asks_for_a_whole_read_on_a_gap() -> None:
    mirror = PeerMirror(GHOST)
    assert mirror.load("g", 3, {"x1": X1}) == [(None, X1)]
    busy = replace(X1, inflight=1, status="busy")
    assert mirror.apply("g", 4, _entry("g", 4, [busy], [])) == [(X1, busy)]
    assert mirror.apply("g", 4, _entry("g", 4, [busy], [])) == [], "held already"
    assert mirror.apply("g", 6, _entry("g", 6, [], ["x1"])) is None, "entry 5 is missing"
    assert mirror.apply("h", 5, _entry("h", 5, [], ["x1"])) is None, "another generation"
    assert mirror.apply("g", 5, _entry("g", 5, [], ["x1"])) == [(busy, None)]
    assert not mirror.missed(7), "first read of the header: 7 may be on its way"
    assert mirror.missed(7), "a read later, 7 still not held: its entry is lost"


async def test_one_connector_changing_at_a_reaches_b_as_a_delta_of_that_row_only(
    tmp_path: Path,
) -> None:
    """Then a viewer of B resumes with `Last-Event-ID` and gets the deltas it missed."""
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        AsyncExitStack() as links,
        aiohttp.ClientSession() as http,
    ):
        conns: list[ScriptedConnector] = [
            await links.enter_async_context(
                scripted_connector(a.url, client_key="ck", id=f"w{i}", max_concurrency=2)
            )
            for i in range(5)
        ]
        every = {f"w{i}": ("A", "idle") for i in range(5)}
        async with asyncio.timeout(20):
            peers = federated(b).membership.peers
            await b.wait_for(lambda: "A" in peers and len(peers["A"].connectors) == 5)
            reads = federated(b).membership.whole_reads
            async with http.get(b.url + "/api/state/stream") as resp:
                view = StateView(resp)
                await view.until(lambda s: _rows(s) == every)
                seen = len(view.events)
                await conns[2].status(status="draining", max_concurrency=2)
                held = await view.until(lambda s: _rows(s)["w2"] == ("A", "draining"))
                last = view.last_id
            deltas = [StateDelta.model_validate_json(e.data) for e in view.events[seen:]]
            assert [[w.id for w in d.workers.upsert] for d in deltas if d.workers] == [["w2"]]
            assert not any(d.workers.remove for d in deltas)
            assert federated(b).membership.whole_reads == reads, "no peer was read whole"
            store = aioredis.from_url(redis.url)
            newest: Any = await store.xrevrange(CHANGES, count=1)  # redis-py: loosely typed
            [(_, entry)] = newest
            await store.aclose()
            assert [c["id"] for c in json.loads(entry[b"u"])] == ["w2"]
            assert entry[b"i"] == b"A"

            await conns[4].close()
            async with http.get(
                b.url + "/api/state/stream", headers={"Last-Event-ID": last}
            ) as resp:
                resumed = StateView(resp, snapshot=held)
                assert (await resumed.step()).name == "delta"
                snap = await resumed.until(lambda s: "w4" not in _rows(s))
            expected = {**every, "w2": ("A", "draining")}
            del expected["w4"]
            assert _rows(snap) == expected


async def test_a_peer_whose_logged_changes_were_trimmed_is_read_whole_again(
    tmp_path: Path,
) -> None:
    """A peer written in the storage format by the test: entries go missing, B catches up."""
    async with redis_server(tmp_path) as redis, instance(redis.url, "B") as b:
        store = aioredis.from_url(redis.url)
        conns = PREFIX + "connectors:ghost"
        await store.hset(conns, mapping={"gen": "g1", "seq": "0", "c:x1": X1.dump()})
        await store.set(PREFIX + "instance:ghost", GHOST.dump(), px=60_000)
        await store.sadd(MEMBERS, "ghost")
        async with (
            aiohttp.ClientSession() as http,
            asyncio.timeout(20),
            http.get(b.url + "/api/state/stream") as resp,
        ):
            view = StateView(resp)
            await view.until(lambda s: _rows(s) == {"x1": ("ghost", "idle")})
            # Entries 1 and 2 were trimmed: the log holds only entry 3, which says
            # nothing of x1's change.
            x1 = replace(X1, status="draining")
            x2 = replace(X1, id="x2", name="X2")
            await store.hset(conns, mapping={"c:x1": x1.dump(), "c:x2": x2.dump(), "seq": "3"})
            entry: dict[Any, Any] = {
                "i": "ghost",
                "g": "g1",
                "n": "3",
                "u": f"[{x2.dump()}]",
                "r": "[]",
            }
            await store.xadd(CHANGES, entry)
            snap = await view.until(lambda s: len(s.workers) == 2)
            assert _rows(snap) == {"x1": ("ghost", "draining"), "x2": ("ghost", "idle")}
            # The newest entry was trimmed too: only the header's seq tells.
            await store.hset(conns, mapping={"c:x3": replace(X1, id="x3").dump(), "seq": "4"})
            snap = await view.until(lambda s: "x3" in _rows(s))
            assert len(snap.workers) == 3
        await store.aclose()


async def test_redis_restarted_empty_resyncs_the_view_at_b(tmp_path: Path) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1"),
        aiohttp.ClientSession() as http,
    ):
        async with (
            scripted_connector(a.url, client_key="ck", id="w2"),
            asyncio.timeout(20),
            http.get(b.url + "/api/state/stream") as resp,
        ):
            view = StateView(resp)
            await view.until(lambda s: _rows(s) == {"w1": ("A", "idle"), "w2": ("A", "idle")})
            await redis.stop()
        await a.wait_for(lambda: a.status("w2") == "gone")  # while Redis is away
        await redis.start()  # empty
        async with asyncio.timeout(20), http.get(b.url + "/api/state/stream") as resp:
            view = StateView(resp)
            await view.until(lambda s: _rows(s) == {"w1": ("A", "idle")})


async def test_a_killed_instance_s_rows_leave_b_s_stream_when_its_lease_expires(
    tmp_path: Path,
) -> None:
    async with (
        redis_server(tmp_path) as redis,
        server_process(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(STARTUP):
            await a.started()
        async with (
            scripted_connector(a.url, client_key="ck", id="w1"),
            asyncio.timeout(20),
            http.get(b.url + "/api/state/stream") as resp,
        ):
            view = StateView(resp)
            await view.until(lambda s: _rows(s) == {"w1": ("A", "idle")})
            a.proc.kill()
            await a.proc.wait()
            snap = await view.until(lambda s: not s.workers)  # within the 3 s lease
            assert snap.server.instances is not None
            assert [i.id for i in snap.server.instances] == ["B"]


async def test_every_cluster_node_gone_leaves_each_instance_degraded_on_its_own_links(
    tmp_path: Path,
) -> None:
    """redis-py's Cluster client raises `RedisClusterException` (no `RedisError`) when no node
    answers: every upkeep loop (membership, counters, queue) survives it; `degraded`."""
    async with (
        redis_cluster(tmp_path) as redis_addr,
        instance(redis_addr, "A") as a,
        instance(redis_addr, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1"),
    ):
        peers = federated(b).membership.peers
        await b.wait_for(lambda: "A" in peers and len(peers["A"].connectors) == 1)
        upkeep = [t for t in asyncio.all_tasks() if t.get_name() == "shared-state"]
        assert len(upkeep) == 2
        port = int(redis_addr.rpartition(":")[2])
        first = aioredis.Redis(host="127.0.0.1", port=port)
        nodes: Any = await first.execute_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]
        await first.aclose()
        for line in _text(nodes).splitlines():
            node = aioredis.Redis(
                host="127.0.0.1", port=int(line.split()[1].split("@")[0].split(":")[1])
            )
            with contextlib.suppress(aioredis.ConnectionError):
                await node.shutdown(nosave=True)
            await node.aclose()
        await b.wait_for(lambda: federated(b).membership.degraded)
        await b.wait_for(lambda: "A" not in peers)  # its lease may have expired meanwhile
        assert a.status("w1") == "idle"
        assert not any(t.done() for t in upkeep), "an instance's upkeep task ended"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def test_with_a_thousand_remote_connectors_one_change_publishes_one_row(
    tmp_path: Path,
) -> None:
    """A peer with 1,000 connectors (written in the storage format): one logged change is one
    row in B's next batch, with no whole read of the peer."""
    async with redis_server(tmp_path) as redis, instance(redis.url, "B") as b:
        store = aioredis.from_url(redis.url)
        conns = {
            f"x{i}": replace(X1, id=f"x{i}", models=("m", f"m{i % 10}"), connected_at=1.0 + i)
            for i in range(1000)
        }
        mapping: dict[Any, Any] = {"c:" + key: c.dump() for key, c in conns.items()}
        await store.hset(PREFIX + "connectors:ghost", mapping={**mapping, "gen": "g", "seq": "0"})
        await store.set(PREFIX + "instance:ghost", GHOST.dump(), px=60_000)
        await store.sadd(MEMBERS, "ghost")
        membership = federated(b).membership
        peers = membership.peers
        await b.wait_for(lambda: "ghost" in peers and len(peers["ghost"].connectors) == 1000)
        publisher = b.app[PUBLISHER]
        publisher.refresh()
        reads = membership.whole_reads
        busy = replace(conns["x5"], inflight=1, status="busy")
        await store.hset(PREFIX + "connectors:ghost", mapping={"c:x5": busy.dump(), "seq": "1"})
        seen = membership.version
        entry: dict[Any, Any] = {"i": "ghost", "g": "g", "n": "1", "u": f"[{busy.dump()}]"}
        await store.xadd(CHANGES, {**entry, "r": "[]"})
        await b.wait_for(lambda: membership.version != seen)
        publisher.collect()
        batch = publisher.publish()
        assert batch is not None
        assert {kind: [row.key for row in rows] for kind, rows in batch.upsert.items()} == {
            "workers": ["x5"]
        }
        assert not batch.remove
        assert len(publisher.delta_event(batch, Scope())) < 2000
        assert membership.whole_reads == reads
        await store.aclose()


async def test_a_change_of_many_connectors_is_logged_in_entries_of_at_most_entry_max(
    tmp_path: Path,
) -> None:
    """Two memberships on a real Redis: 150 connectors changing at once reach the other one
    through the change log (3 entries), without reading the peer whole."""
    fleet = {"a": {f"x{i}": replace(X1, id=f"x{i}") for i in range(150)}}

    def describe(name: str) -> Callable[[], Lease]:
        own = replace(GHOST, id=name)
        return lambda: replace(own, connectors=tuple(fleet.get(name, {}).values()))

    async with redis_server(tmp_path) as redis:
        feeds = {name: ChangeFeed() for name in ("a", "b")}
        members = {
            name: Membership(
                redis=aioredis.from_url(redis.url),
                ttl=3.0,
                describe=describe(name),
                changes=feeds[name],
            )
            for name in ("a", "b")
        }
        b = members["b"]
        tasks = [asyncio.create_task(m.run()) for m in members.values()]
        try:
            async with asyncio.timeout(20):
                await feeds["b"].wait_for(
                    lambda: "a" in b.peers and len(b.peers["a"].connectors) == 150
                )
                reads = b.whole_reads
                fleet["a"] = {key: replace(c, status="draining") for key, c in fleet["a"].items()}
                feeds["a"].bump()
                await feeds["b"].wait_for(
                    lambda: all(c.status == "draining" for c in b.peers["a"].connectors)
                )
            assert b.whole_reads == reads
            store = aioredis.from_url(redis.url)
            log: Any = await store.xrevrange(CHANGES, count=3)
            await store.aclose()
            sizes = [len(json.loads(fields[b"u"])) for _, fields in log]
            assert sorted(sizes) == [22, ENTRY_MAX, ENTRY_MAX]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for m in members.values():
                await m.leave()


def test_the_remote_index_finds_exact_models_then_aliases_and_follows_changes() -> None:
    index = RemoteIndex()
    q4 = replace(X1, id="q", models=("llama3:8b-q4",))
    exact = replace(X1, id="e", models=("llama3:8b", "m"))
    index("A", None, q4)
    index("B", None, exact)
    assert index.find("llama3:8b", None) == [("B", exact)]
    assert index.find("llama3:8b", "q") == [("A", q4)], "no exact one is q: by alias"
    assert index.find("llama3:8b-q8", None) == [("A", q4), ("B", exact)]
    assert index.find("other", None) == []
    moved = replace(exact, models=("m",))
    index("B", exact, moved)
    assert index.find("llama3:8b", None) == [("A", q4)]
    index("A", q4, None)
    assert index.find("llama3:8b", None) == []
    assert index.by_alias == {}
    assert index.find("m", None) == [("B", moved)]


async def test_a_change_log_restarted_below_the_reader_s_place_is_read_from_its_start(
    tmp_path: Path,
) -> None:
    """As after a Redis restarted empty on a host whose clock went back: the new entries are
    numbered below B's place in the log. B notices, then follows the new log."""
    async with redis_server(tmp_path) as redis, instance(redis.url, "B") as b:
        store = aioredis.from_url(redis.url)
        conns = PREFIX + "connectors:ghost"
        await store.hset(conns, mapping={"gen": "g1", "seq": "0", "c:x1": X1.dump()})
        await store.set(PREFIX + "instance:ghost", GHOST.dump(), px=60_000)
        await store.sadd(MEMBERS, "ghost")
        membership = federated(b).membership
        peers = membership.peers

        def status() -> str:
            lease = peers.get("ghost")
            return lease.connectors[0].status if lease and lease.connectors else ""

        async def log(seq: int, summary: ConnectorSummary) -> None:
            await store.hset(conns, mapping={"c:x1": summary.dump(), "seq": str(seq)})
            fields: dict[Any, Any] = {"i": "ghost", "g": "g1", "n": str(seq), "r": "[]"}
            await store.xadd(CHANGES, {**fields, "u": f"[{summary.dump()}]"}, id=f"1-{seq}")

        await b.wait_for(lambda: status() == "idle")
        reads = membership.whole_reads
        await store.delete(CHANGES)
        for seq, state in enumerate(("draining", "not_ready", "busy", "idle"), start=1):
            await log(seq, replace(X1, status=state))
            await b.wait_for(lambda: status() == state)  # noqa: B023  # awaited at once
        # The first change is missed (a whole read); B then reads the new log from its start
        # (one more whole read if the second change came before that).
        assert membership.whole_reads - reads <= 2
        await store.aclose()


def test_a_lease_or_summary_from_a_newer_peer_is_read_without_its_new_fields() -> None:
    doc = json.loads(replace(GHOST, connectors=(X1,)).dump())
    doc["zone"] = "eu"
    doc["connectors"][0]["gpu"] = "h100"
    assert Lease.load(json.dumps(doc)) == replace(GHOST, connectors=(X1,))


def _detail(relay_id: str, calls: int) -> RelayDetail:
    return RelayDetail(
        relay_id, (("tools/call", calls),), (SessionSummary("s1", 1.0, 2.0, 0, "tools/call"),)
    )


def test_a_mirror_follows_relay_details_and_reads_entries_without_them() -> None:
    mirror = PeerMirror(GHOST)
    mirror.load("g", 1, {}, {"r1": _detail("r1", 1)})
    stamp = mirror.details_stamp
    older = _entry("g", 2, [X1], [])  # as a version without relay details writes it
    assert mirror.apply("g", 2, older) == [(None, X1)]
    assert mirror.details_stamp == stamp
    entry = {**_entry("g", 3, [], []), b"mu": f"[{_detail('r2', 5).dump()}]".encode()}
    assert mirror.apply("g", 3, {**entry, b"mr": b'["r1"]'}) == []
    assert mirror.details == {"r2": _detail("r2", 5)}
    assert mirror.details_stamp == stamp + 1


async def test_relay_details_are_written_at_a_bounded_rate_through_the_change_log(
    tmp_path: Path,
) -> None:
    """Two memberships on a real Redis: A's relay details change at every look, yet A builds
    and writes them once per DETAIL_SPACING of its clock (at once when a relay comes or goes),
    in entries of at most RELAYS_PER_ENTRY details, and B follows them without whole reads."""
    relays = [RelaySummary(f"r{i}", f"r{i}", "1", "idle", 0, 1.0, "") for i in range(10)]
    connector = [X1]
    looks: list[float] = []
    now = [100.0]

    def describe_a() -> Lease:
        return replace(GHOST, id="a", connectors=tuple(connector), relays=tuple(relays))

    def details() -> dict[str, RelayDetail]:
        looks.append(now[0])
        return {r.id: _detail(r.id, len(looks)) for r in relays}

    async with redis_server(tmp_path) as redis:
        feeds = {name: ChangeFeed() for name in ("a", "b")}
        a = Membership(
            redis=aioredis.from_url(redis.url),
            ttl=30.0,
            describe=describe_a,
            changes=feeds["a"],
            details=details,
            clock=lambda: now[0],
        )
        b = Membership(
            redis=aioredis.from_url(redis.url),
            ttl=30.0,
            describe=lambda: replace(GHOST, id="b"),
            changes=feeds["b"],
        )
        tasks = [asyncio.create_task(m.run()) for m in (a, b)]

        def calls_at_b(relay_id: str) -> int | None:
            detail = b.relay_detail("a", relay_id)
            return dict(detail.functions)["tools/call"] if detail is not None else None

        try:
            async with asyncio.timeout(20):
                await feeds["b"].wait_for(lambda: calls_at_b("r9") == 1)
                reads = b.whole_reads
                for status in ("busy", "idle", "draining"):  # local changes, written at once
                    connector[0] = replace(X1, status=status)
                    feeds["a"].bump()
                    await feeds["b"].wait_for(
                        lambda: b.peers["a"].connectors[0].status == status  # noqa: B023
                    )
                assert len(looks) == 1, "not due yet: details were not built again"
                now[0] += DETAIL_SPACING
                feeds["a"].bump()
                await feeds["b"].wait_for(lambda: calls_at_b("r9") == 2)
                assert all(calls_at_b(r.id) == 2 for r in relays)
                store = aioredis.from_url(redis.url)
                log: Any = await store.xrevrange(CHANGES, count=3)
                sizes = sorted(len(json.loads(fields[b"mu"])) for _, fields in log)
                assert sizes == [2, RELAYS_PER_ENTRY, RELAYS_PER_ENTRY]
                relays.pop()  # a relay left: its details go at once, not when due
                feeds["a"].bump()
                await feeds["b"].wait_for(lambda: calls_at_b("r9") is None)
                assert len(looks) == 3
                assert await store.hget(PREFIX + "connectors:a", "m:r9") is None
                await store.aclose()
            assert b.whole_reads == reads
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for m in (a, b):
                await m.leave()
