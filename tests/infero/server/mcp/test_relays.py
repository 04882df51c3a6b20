"""The relay registry: ids, duplicates, status, calls, sessions, the `mcp` state and gauges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from redis import asyncio as aioredis

from infero.common.liveness import Liveness
from infero.protocol import link as lp
from infero.server.linkserver import Link
from infero.server.mcp.fleet import (
    SHARED_FUNCTIONS,
    SHARED_SESSIONS,
    SHARED_TEXT,
    FederatedRelays,
)
from infero.server.mcp.metrics import McpMetrics
from infero.server.mcp.relays import MAX_SESSIONS_PER_RELAY, RelayRegistry
from infero.server.peer import PeerClient

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def fake_link(link_id: str, hello: lp.Hello | None = None, *, silent: float = 0.0) -> Link:
    """A link (no socket) last heard from `silent` seconds ago; heartbeat interval 5 s."""
    return Link(
        cast(web.WebSocketResponse, None),
        hello or lp.Hello(kind="mcp", id=link_id),
        link_id,
        window=lp.DEFAULT_WINDOW,
        liveness=Liveness(interval=5.0, dead_after=15.0, now=0.0),
        clock=lambda: silent,
    )


def attach(registry: RelayRegistry, hello: lp.Hello, *, silent: float = 0.0) -> Link:
    verdict = registry.admit(hello)
    assert isinstance(verdict, str)
    link = fake_link(verdict, hello, silent=silent)
    assert registry.attached(hello, link) is None
    return link


def test_an_empty_id_gets_one_assigned_and_a_wanted_id_is_kept() -> None:
    registry = RelayRegistry()
    assigned = registry.admit(lp.Hello(kind="mcp"))
    assert isinstance(assigned, str)
    assert len(assigned) == 32
    assert registry.admit(lp.Hello(kind="mcp", id="my-mcp-server-123")) == "my-mcp-server-123"


def test_an_id_held_by_a_live_relay_is_refused_as_duplicate() -> None:
    registry = RelayRegistry()
    attach(registry, lp.Hello(kind="mcp", id="taken", instance="a"))
    for instance in ("b", ""):
        refused = registry.admit(lp.Hello(kind="mcp", id="taken", instance=instance))
        assert isinstance(refused, lp.Refused)
        assert refused.reason == "duplicate"
        assert "CLIENT_ID=taken" in refused.message


def test_the_same_relay_instance_or_a_stale_holder_is_replaced() -> None:
    registry = RelayRegistry()
    attach(registry, lp.Hello(kind="mcp", id="r", instance="a"))
    again = lp.Hello(kind="mcp", id="r", instance="a")
    assert registry.admit(again) == "r"
    old = registry.relays["r"].link
    assert registry.attached(again, fake_link("r", again)) is old
    stale = RelayRegistry()
    attach(stale, lp.Hello(kind="mcp", id="s", instance="a"), silent=10.0)
    assert stale.admit(lp.Hello(kind="mcp", id="s", instance="b")) == "s"


def test_ids_that_do_not_fit_in_a_url_are_refused() -> None:
    refused = RelayRegistry().admit(lp.Hello(kind="mcp", id="../x"))
    assert isinstance(refused, lp.Refused)
    assert refused.reason == "invalid"


def test_the_state_lists_relays_with_status_inflight_and_method_counts() -> None:
    changes: list[int] = []
    registry = RelayRegistry(on_change=lambda: changes.append(1), now=Clock())
    hello = lp.Hello(kind="mcp", id="r1", name="Prefs", version="1.0", status="not_ready")
    link = attach(registry, hello)
    relay = registry.relays["r1"]
    assert registry.state().clients[0].status == "not_ready"
    registry.status(link, lp.StatusUpdate(max_concurrency=4, status="ready"))
    relay.count("tools/call")
    relay.count("tools/call")
    assert registry.start_call(relay, None, limit=1)
    assert not registry.start_call(relay, None, limit=1), "a call beyond the limit is refused"
    info = registry.state().clients[0]
    assert (info.id, info.name, info.status, info.inflight) == ("r1", "Prefs", "active", 1)
    assert info.functions == {"tools/call": 2}
    registry.finish_call(relay, None, ok=False)
    info = registry.state().clients[0]
    assert (info.status, info.inflight, info.calls_total, info.errors_total) == ("idle", 0, 1, 1)
    assert registry.limit(relay, 16) == 4
    assert changes


def test_sessions_are_tracked_until_deleted_or_the_relay_leaves() -> None:
    clock = Clock()
    registry = RelayRegistry(now=clock)
    link = attach(registry, lp.Hello(kind="mcp", id="r1"))
    relay = registry.relays["r1"]
    registry.session_seen(relay, "s1", "initialize")
    registry.session_seen(relay, "s2", "initialize")
    clock.now = T0 + timedelta(seconds=2)
    registry.session_seen(relay, "s1", "tools/call")
    sessions = {s.id: s for s in registry.state().sessions}
    assert sessions["s1"].method == "tools/call"
    assert sessions["s1"].duration_ms == 2000
    registry.session_ended(relay, "s2")
    assert [s.id for s in registry.state().sessions] == ["s1"]
    registry.detached(link)
    assert registry.state().clients == []
    assert registry.state().sessions == []


def test_sessions_per_relay_are_bounded() -> None:
    clock = Clock()
    registry = RelayRegistry(now=clock)
    attach(registry, lp.Hello(kind="mcp", id="r1"))
    relay = registry.relays["r1"]
    for n in range(MAX_SESSIONS_PER_RELAY + 5):
        clock.now = T0 + timedelta(seconds=n)
        registry.session_seen(relay, f"s{n}", "initialize")
    ids = {s.id for s in registry.state().sessions}
    assert len(ids) == MAX_SESSIONS_PER_RELAY
    assert "s0" not in ids
    assert f"s{MAX_SESSIONS_PER_RELAY + 4}" in ids


def test_method_names_per_relay_are_bounded() -> None:
    registry = RelayRegistry()
    attach(registry, lp.Hello(kind="mcp", id="r1"))
    relay = registry.relays["r1"]
    for n in range(1000):
        relay.count(f"m{n}")
    assert len(relay.functions) <= 257
    assert relay.functions["other"] > 0


def test_a_stale_link_cannot_change_or_remove_a_newer_relay() -> None:
    registry = RelayRegistry()
    attach(registry, lp.Hello(kind="mcp", id="r1"))
    stale = fake_link("r1")
    registry.status(stale, lp.StatusUpdate(max_concurrency=1, status="draining"))
    registry.detached(stale)
    assert registry.relays["r1"].status == "ready"


def test_sessions_silent_for_an_hour_are_no_longer_listed() -> None:
    clock = Clock()
    registry = RelayRegistry(now=clock)
    attach(registry, lp.Hello(kind="mcp", id="r1"))
    relay = registry.relays["r1"]
    registry.session_seen(relay, "old", "initialize")
    clock.now = T0 + timedelta(minutes=30)
    registry.session_seen(relay, "new", "initialize")
    clock.now = T0 + timedelta(minutes=60)
    assert [s.id for s in registry.state().sessions] == ["new"]


def gauge(registry: CollectorRegistry, name: str) -> float | None:
    return registry.get_sample_value(name)


def test_mcp_gauges_follow_relays_sessions_and_calls_without_building_the_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    relays = RelayRegistry(now=clock)

    def no_state() -> None:
        raise AssertionError("the gauges built the mcp state")

    monkeypatch.setattr(relays, "state", no_state)
    metrics = CollectorRegistry()
    McpMetrics(metrics, relays.gauges)
    assert gauge(metrics, "infero_mcp_relays") == 0
    link = attach(relays, lp.Hello(kind="mcp", id="r1"))
    attach(relays, lp.Hello(kind="mcp", id="r2"))
    relay = relays.relays["r1"]
    relays.session_seen(relay, "s1", "initialize")
    relays.session_seen(relay, "s2", "initialize")
    assert relays.start_call(relay, "s1", 4)
    assert relays.start_call(relays.relays["r2"], None, 4)
    assert gauge(metrics, "infero_mcp_relays") == 2
    assert gauge(metrics, "infero_mcp_sessions") == 2
    assert gauge(metrics, "infero_mcp_calls_inflight") == 2

    clock.now = T0 + timedelta(minutes=61)  # s2 silent for an hour; s1 has a call in flight
    assert gauge(metrics, "infero_mcp_sessions") == 1
    relays.finish_call(relay, "s1", ok=True)
    assert gauge(metrics, "infero_mcp_calls_inflight") == 1
    relays.detached(link)
    assert gauge(metrics, "infero_mcp_relays") == 1
    assert gauge(metrics, "infero_mcp_sessions") == 0


def test_a_session_with_recent_traffic_outlives_older_silent_ones() -> None:
    clock = Clock()
    relays = RelayRegistry(now=clock)
    attach(relays, lp.Hello(kind="mcp", id="r1"))
    relay = relays.relays["r1"]
    for name in ("a", "b", "c"):
        relays.session_seen(relay, name, "initialize")
    clock.now = T0 + timedelta(minutes=40)
    relays.session_seen(relay, "a", "tools/call")  # a is active again: it moves to the end
    clock.now = T0 + timedelta(minutes=70)
    assert relays.gauges().sessions == 1
    assert [s.id for s in relays.state().sessions] == ["a"]


def test_what_other_instances_are_told_of_a_relay_is_bounded() -> None:
    """Sessions: the most recently active SHARED_SESSIONS, the rest counted; methods: the most
    used SHARED_FUNCTIONS, the rest under `other`; overlong ids and names not shared."""
    clock = Clock()
    registry = RelayRegistry(now=clock)
    attach(registry, lp.Hello(kind="mcp", id="r1"))
    relay = registry.relays["r1"]
    for i in range(SHARED_SESSIONS + 20):
        clock.now = T0 + timedelta(seconds=i)
        registry.session_seen(relay, f"s{i}", "tools/call")
    registry.session_seen(relay, "x" * (SHARED_TEXT + 1), "initialize")
    for i in range(SHARED_FUNCTIONS + 10):
        for _ in range(i + 1):
            relay.count(f"m{i:03}")
    relay.count("y" * (SHARED_TEXT + 1))
    tables = FederatedRelays(
        registry,
        redis=aioredis.Redis(),  # never called: `details` reads the registry only
        instance_id="A",
        ttl=3.0,
        peers=list,
        version=lambda: 0,
        client=cast(PeerClient, None),
    )
    detail = tables.details()["r1"]
    assert detail.id == "r1"
    assert [s.id for s in detail.sessions] == [
        f"s{i}" for i in reversed(range(20, SHARED_SESSIONS + 20))
    ], "the most recently active first"
    assert detail.unlisted == 21, "20 older ones and the overlong id"
    functions = dict(detail.functions)
    assert len(functions) == SHARED_FUNCTIONS + 1
    assert functions["m073"] == 74, "the most used are kept"
    assert "m009" not in functions
    assert functions["other"] == sum(range(1, 11)) + 1, "the 10 least used and the long name"
    assert sum(functions.values()) == relay.functions.total()
