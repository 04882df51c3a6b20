"""`apply_delta`: a snapshot plus a delta is the next snapshot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from infero.protocol.delta import Changes, StateDelta, apply_delta, session_key
from infero.protocol.state import (
    McpClientInfo,
    McpSessionInfo,
    McpState,
    ModelInfo,
    ServerInfo,
    StateSnapshot,
    WorkerInfo,
    WorkersSummary,
)

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _worker(wid: str, **fields: object) -> WorkerInfo:
    return WorkerInfo.model_validate(
        {"id": wid, "name": wid, "status": "idle", "connected_at": T0, "last_heartbeat": T0}
        | fields
    )


def _snapshot() -> StateSnapshot:
    return StateSnapshot(
        server=ServerInfo(now=T0, version="1", state="ready", started_at=T0, uptime_s=0),
        workers_summary=WorkersSummary(connected=2, idle=2),
        models=[ModelInfo(name="b"), ModelInfo(name="d")],
        workers=[_worker("w1"), _worker("w2")],
        mcp=McpState(
            clients=[McpClientInfo(id="r1", name="r1", status="idle")],
            sessions=[McpSessionInfo(id="s", client_id="r1", started_at=T0)],
        ),
    )


def test_delta_replaces_changed_rows_in_place_appends_new_ones_and_drops_removed_ones() -> None:
    before = _snapshot()
    delta = StateDelta(
        now=T0 + timedelta(seconds=90),
        workers_summary=WorkersSummary(connected=2, working=1, idle=1),
        workers=Changes[WorkerInfo](
            upsert=[_worker("w1", status="busy", inflight=1), _worker("w3")], remove=["w2"]
        ),
        models=Changes[ModelInfo](upsert=[ModelInfo(name="c", queue_len=2)], remove=["d"]),
        mcp_sessions=Changes[McpSessionInfo](remove=["r1/s"]),
    )
    after = apply_delta(before, delta)
    assert [(w.id, w.status) for w in after.workers] == [("w1", "busy"), ("w3", "idle")]
    assert [m.name for m in after.models] == ["b", "c"]
    assert after.workers_summary.working == 1
    assert after.mcp.sessions == []
    assert [c.id for c in after.mcp.clients] == ["r1"]
    assert after.server.now == delta.now
    assert after.server.uptime_s == 90
    assert [w.id for w in before.workers] == ["w1", "w2"], "the input snapshot is untouched"


def test_empty_delta_only_moves_the_clock_and_removing_an_unknown_key_is_harmless() -> None:
    before = _snapshot()
    delta = StateDelta(
        now=T0 + timedelta(seconds=5), workers=Changes[WorkerInfo](remove=["never-seen"])
    )
    after = apply_delta(before, delta)
    assert after.model_dump(exclude={"server"}) == before.model_dump(exclude={"server"})
    assert (after.server.now, after.server.uptime_s) == (delta.now, 5)


def test_delta_round_trips_through_json_and_sessions_are_keyed_by_relay_and_id() -> None:
    session = McpSessionInfo(id="abc", client_id="relay-1", started_at=T0)
    delta = StateDelta(
        now=T0,
        server=ServerInfo(now=T0, version="2", state="draining", draining=True),
        mcp_sessions=Changes[McpSessionInfo](upsert=[session]),
    )
    again = StateDelta.model_validate_json(delta.model_dump_json())
    assert again == delta
    assert session_key(session) == "relay-1/abc"
    after = apply_delta(_snapshot(), again)
    assert after.server.state == "draining"
    assert [session_key(s) for s in after.mcp.sessions] == ["r1/s", "relay-1/abc"]
