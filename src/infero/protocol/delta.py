"""Deltas of the `/api/state/stream`: what changed since the previous event, keyed by id.

A viewer gets a full `StateSnapshot` (SSE `event: snapshot`) when it connects, resumes too far
back or falls behind, then `StateDelta`s (`event: delta`). `apply_delta` turns the snapshot
it holds into the next one; it is pure, so the console, `infero ctl` and tests share it.
See docs/state.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

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

EVENT_SNAPSHOT = "snapshot"
"""SSE event name of a full document in delta mode."""
EVENT_DELTA = "delta"
"""SSE event name of a `StateDelta`."""

StreamMode = Literal["delta", "full"]
Part = Literal["summary", "workers", "models", "mcp"]
PARTS: tuple[Part, ...] = ("summary", "workers", "models", "mcp")
"""What a scoped read may ask for (`parts=`); `summary` is `server` + `workers_summary`."""

E = TypeVar("E", bound=BaseModel)


class Changes(BaseModel, Generic[E]):
    """Entities of one kind that appeared or changed (whole rows), and keys that left."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    upsert: list[E] = Field(default_factory=list)
    remove: list[str] = Field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.upsert or self.remove)


class StateDelta(BaseModel):
    """One `event: delta`: only what changed, at `now` (the server's clock)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    now: datetime
    server: ServerInfo | None = None
    """The whole `server` object when any of its fields changed (besides `now`/`uptime_s`)."""
    workers_summary: WorkersSummary | None = None
    workers: Changes[WorkerInfo] = Changes[WorkerInfo]()
    """Keyed by `id`."""
    models: Changes[ModelInfo] = Changes[ModelInfo]()
    """Keyed by `name`."""
    mcp_clients: Changes[McpClientInfo] = Changes[McpClientInfo]()
    """Keyed by `id`."""
    mcp_sessions: Changes[McpSessionInfo] = Changes[McpSessionInfo]()
    """Keyed by `session_key()`: `<client_id>/<id>`."""


def worker_key(worker: WorkerInfo) -> str:
    """Key of a connector row."""
    return worker.id


def model_key(model: ModelInfo) -> str:
    """Key of a model row."""
    return model.name


def client_key(client: McpClientInfo) -> str:
    """Key of an MCP relay row."""
    return client.id


def session_key(session: McpSessionInfo) -> str:
    """Key of an MCP session row: relay ids hold no `/`, so the first `/` splits it."""
    return f"{session.client_id}/{session.id}"


def _merge(rows: Iterable[E], changes: Changes[E], key: Callable[[E], str]) -> list[E]:
    """Rows in their order, changed ones replaced in place, new ones appended, removed dropped."""
    if not changes:
        return list(rows)
    by_key = {key(row): row for row in rows}
    for gone in changes.remove:
        by_key.pop(gone, None)
    for row in changes.upsert:
        by_key[key(row)] = row
    return list(by_key.values())


def apply_delta(snapshot: StateSnapshot, delta: StateDelta) -> StateSnapshot:
    """The snapshot after `delta` (a new object; `snapshot` is left as it was).

    `server.now` becomes the delta's `now` and `uptime_s` follows it; other time-derived
    numbers (`oldest_wait_ms`, a session's `duration_ms`) are as of their row's last change:
    compute ages from the timestamps (`server.now` minus `queued_since`, `started_at`, ...).
    """
    server = delta.server or snapshot.server
    uptime = server.uptime_s
    if server.started_at is not None:
        uptime = max(0, int((delta.now - server.started_at).total_seconds()))
    mcp = snapshot.mcp
    if delta.mcp_clients or delta.mcp_sessions:
        mcp = McpState(
            clients=_merge(mcp.clients, delta.mcp_clients, client_key),
            sessions=_merge(mcp.sessions, delta.mcp_sessions, session_key),
        )
    models = snapshot.models
    if delta.models:
        models = sorted(_merge(models, delta.models, model_key), key=model_key)
    return StateSnapshot(
        server=server.model_copy(update={"now": delta.now, "uptime_s": uptime}),
        workers_summary=delta.workers_summary or snapshot.workers_summary,
        models=models,
        workers=_merge(snapshot.workers, delta.workers, worker_key),
        mcp=mcp,
    )
