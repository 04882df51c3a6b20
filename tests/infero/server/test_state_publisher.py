"""`StatePublisher` with a scripted row source: ring, resync, shared bytes, nothing by the clock."""

from __future__ import annotations

from collections.abc import Hashable
from datetime import UTC, datetime, timedelta
from typing import Any

from infero.protocol.delta import StateDelta, apply_delta
from infero.protocol.state import ServerInfo, StateSnapshot, WorkerInfo, WorkersSummary
from infero.server.changes import ChangeFeed
from infero.server.statefeed import Built, Kind, Offer, Scan, Scope, StatePublisher, Viewer

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Rows:
    """A source whose connector rows the test edits directly."""

    def __init__(self) -> None:
        self.workers: dict[str, WorkerInfo] = {}
        self.scans = 0

    def put(self, wid: str, status: str = "idle", inflight: int = 0) -> None:
        self.workers[wid] = WorkerInfo.model_validate(
            {
                "id": wid,
                "name": wid,
                "status": status,
                "inflight": inflight,
                "connected_at": T0,
                "last_heartbeat": T0,
            }
        )

    def scan(self) -> Scan:
        self.scans += 1

        def offer(w: WorkerInfo) -> Offer:
            mark: Hashable = w.model_dump_json()
            return (w.id, mark, w)

        return Scan(
            offers={
                "workers": [offer(w) for w in self.workers.values()],
                "models": [],
                "mcp_clients": [],
                "mcp_sessions": [],
            },
            server_mark=None,
            summary=WorkersSummary(connected=len(self.workers)),
        )

    def row(self, kind: Kind, what: Any) -> Built:
        assert kind == "workers"
        return Built(what, (0, 0.0), what.status == "gone")

    def server(self, now: datetime) -> ServerInfo:
        return ServerInfo(now=now, version="t", state="ready", started_at=T0)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def _events(data: bytes) -> list[tuple[str, str, str]]:
    """(name, id, data) of each event in a written chunk."""
    out = []
    for block in data.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            out.append((fields.get("event", "message"), fields.get("id", ""), fields["data"]))
    return out


def _apply(snap: StateSnapshot | None, viewer: Viewer, publisher: StatePublisher) -> StateSnapshot:
    for name, _, data in _events(publisher.next_event(viewer)):
        if name == "snapshot":
            snap = StateSnapshot.model_validate_json(data)
        else:
            assert snap is not None
            snap = apply_delta(snap, StateDelta.model_validate_json(data))
    assert snap is not None
    return snap


def test_nothing_is_published_when_only_time_passes() -> None:
    rows, clock = Rows(), Clock()
    rows.put("w1")
    publisher = StatePublisher(rows, clock=clock)
    publisher.refresh()
    clock.now += timedelta(minutes=5)
    publisher.collect()
    assert publisher.publish() is None
    rows.put("w1", status="busy", inflight=1)
    publisher.collect()
    batch = publisher.publish()
    assert batch is not None
    assert [r.key for r in batch.upsert["workers"]] == ["w1"]


def test_viewers_with_the_same_scope_share_one_rendering_of_each_batch() -> None:
    rows = Rows()
    publisher = StatePublisher(rows, clock=Clock())
    first = publisher.attach(Scope(), "delta")
    second = publisher.attach(Scope(), "delta")
    other = publisher.attach(Scope(parts=frozenset({"summary"})), "delta")
    for viewer in (first, second, other):
        publisher.next_event(viewer)
    rows.put("w1")
    publisher.refresh()
    assert first.buffer[0] is second.buffer[0]
    assert b'"workers"' not in other.buffer[0]


def test_a_resume_older_than_the_ring_gets_a_snapshot_and_a_recent_one_gets_deltas() -> None:
    rows = Rows()
    publisher = StatePublisher(rows, clock=Clock(), ring=2)
    viewer = publisher.attach(Scope(), "delta")
    snap = _apply(None, viewer, publisher)
    old_id = publisher.event_id()
    for n in range(3):
        rows.put(f"w{n}")
        publisher.refresh()
    recent_id = publisher.event_id(publisher.last_id - 1)
    rows.put("w9")
    publisher.refresh()

    too_old = publisher.attach(Scope(), "delta", old_id)
    assert [name for name, _, _ in _events(publisher.next_event(too_old))] == ["snapshot"]
    recent = publisher.attach(Scope(), "delta", recent_id)
    names = [name for name, _, _ in _events(b"".join(recent.buffer))]
    assert names == ["delta", "delta"]
    snap = _apply(snap, viewer, publisher)
    assert [w.id for w in snap.workers] == ["w0", "w1", "w2", "w9"]


def test_the_ring_keeps_recent_batches_within_its_byte_budget() -> None:
    rows = Rows()
    publisher = StatePublisher(rows, clock=Clock(), ring_bytes=1000)
    viewer = publisher.attach(Scope(), "delta")
    publisher.next_event(viewer)
    start = publisher.event_id()
    for n in range(10):
        rows.put(f"w{n}")
        publisher.refresh()
    resumed = publisher.attach(Scope(), "delta", start)
    assert [name for name, _, _ in _events(publisher.next_event(resumed))] == ["snapshot"]
    recent = publisher.attach(Scope(), "delta", publisher.event_id(publisher.last_id - 1))
    assert [name for name, _, _ in _events(publisher.next_event(recent))] == ["delta"]


def test_a_viewer_that_falls_behind_is_resynced_and_the_others_keep_their_deltas() -> None:
    rows = Rows()
    publisher = StatePublisher(rows, clock=Clock(), viewer_buffer=2000)
    slow = publisher.attach(Scope(), "delta")
    fast = publisher.attach(Scope(), "delta")
    fast_snap = _apply(None, fast, publisher)
    for n in range(20):
        rows.put(f"w{n}", status="busy", inflight=n)
        publisher.refresh()
        fast_snap = _apply(fast_snap, fast, publisher)
    assert slow.resync
    assert slow.size <= 2000
    events = _events(publisher.next_event(slow))
    assert [name for name, _, _ in events] == ["snapshot"]
    resynced = StateSnapshot.model_validate_json(events[0][2])
    assert sorted(w.id for w in resynced.workers) == sorted(w.id for w in fast_snap.workers)
    assert len(fast_snap.workers) == 20


def test_full_mode_viewers_get_only_the_latest_document() -> None:
    rows = Rows()
    publisher = StatePublisher(rows, clock=Clock())
    viewer = publisher.attach(Scope(), "full")
    publisher.next_event(viewer)
    for n in range(5):
        rows.put(f"w{n}")
        publisher.refresh()
    events = _events(publisher.next_event(viewer))
    assert len(events) == 1
    name, _, data = events[0]
    assert name == "message"
    assert len(StateSnapshot.model_validate_json(data).workers) == 5


def test_viewers_connecting_together_cost_one_scan_until_the_fleet_changes() -> None:
    rows, changes = Rows(), ChangeFeed()
    rows.put("w1")
    publisher = StatePublisher(rows, clock=Clock(), changes=changes)
    first = [publisher.attach(Scope(), "delta") for _ in range(20)]
    assert rows.scans == 1
    snapshots = {_events(publisher.next_event(v))[0][2] for v in first}
    assert len(snapshots) == 1  # one document, the same bytes for all of them
    rows.put("w2")
    changes.bump()
    late = publisher.attach(Scope(), "delta")
    assert rows.scans == 2
    (event,) = _events(publisher.next_event(late))
    assert [w.id for w in StateSnapshot.model_validate_json(event[2]).workers] == ["w1", "w2"]
