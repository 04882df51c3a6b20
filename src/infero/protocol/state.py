"""The `/api/state` snapshot: read by the dashboard, the console and `infero ctl`.

Field names follow the seed (reference 1.9); additions are documented in docs/state.md.
Times are RFC 3339 UTC; durations are milliseconds.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

WorkerStatus = Literal["connecting", "idle", "busy", "draining", "not_ready", "gone"]
ServerState = Literal["ready", "not_ready", "draining"]
McpStatus = Literal["idle", "active", "not_ready", "draining", "gone"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class InstanceInfo(_Model):
    """One `infero server` instance of a fleet sharing REDIS_ADDR (docs/scale-out.md)."""

    id: str
    address: str = ""
    version: str = ""
    started_at: datetime | None = None
    links: int = 0
    """Links this instance holds: LLM connectors and MCP relays."""
    inflight: int = 0


class ServerInfo(_Model):
    """The server process itself."""

    now: datetime
    version: str
    started_at: datetime | None = None
    """When the server started (`uptime_s` is `now` minus this)."""
    build_sha: str = ""
    build_date: str = ""
    state: ServerState
    draining: bool = False
    uptime_s: int = 0
    jobs_inflight_total: int = 0
    jobs_completed_total: int = 0
    jobs_failed_total: int = 0
    jobs_cancelled_total: int = 0
    """Requests the client gave up on (disconnect or stalled reader): not failures."""
    scheduler_queue_len: int = 0
    """Requests waiting in all model queues."""
    instance: str = ""
    """This instance's id (REDIS_ADDR set; empty when the state is embedded)."""
    degraded: bool = False
    """Redis is unreachable: only this instance's own links are served and listed."""
    instances: list[InstanceInfo] = Field(default_factory=list)
    """Every live instance of the fleet, this one first (empty when the state is embedded)."""


class WorkersSummary(_Model):
    """How many connectors are in each state (`connected` counts every live one)."""

    connected: int = 0
    working: int = 0
    """Connectors with at least one request in flight (status `busy`)."""
    idle: int = 0
    draining: int = 0
    not_ready: int = 0
    gone: int = 0


class WaiterInfo(_Model):
    """One request waiting in a model's queue (`ModelInfo.waiters`)."""

    position: int
    """1-based place in the queue (in the fleet's queue with REDIS_ADDR)."""
    queued_since: datetime
    """When it joined the queue."""
    instance: str = ""
    """The instance its client called (REDIS_ADDR set; empty when the state is embedded)."""


class ModelInfo(_Model):
    """One model id, aggregated over the connectors that serve it."""

    name: str
    workers: int = 0
    """Live connectors advertising this model."""
    ready_workers: int = 0
    """Of those, how many can take work now (not draining, backend up)."""
    queue_len: int = 0
    oldest_wait_ms: int = 0
    queued_since: datetime | None = None
    """When the oldest waiting request joined the queue (`oldest_wait_ms` is its age)."""
    waiters: list[WaiterInfo] = Field(default_factory=list)
    """The first waiters of the queue in order (at most 20: `waiters_more` counts the rest)."""
    waiters_more: int = 0
    """Waiters in the queue beyond those listed."""
    requests_total: int = 0
    success_total: int = 0
    error_total: int = 0
    cancelled_total: int = 0
    """Requests the client gave up on (disconnect or stalled reader)."""
    tokens_in_total: int = 0
    tokens_out_total: int = 0
    avg_ttft_ms: float = 0.0
    """Average time to first byte of the answer, as seen by the server."""
    avg_duration_ms: float = 0.0
    avg_tokens_per_second: float = 0.0


class PerModelCounters(_Model):
    """Counters of one connector for one model."""

    success_total: int = 0
    error_total: int = 0
    cancelled_total: int = 0
    tokens_in_total: int = 0
    tokens_out_total: int = 0


class WorkerInfo(_Model):
    """One connector (`infero llm`)."""

    id: str
    name: str
    status: WorkerStatus
    connected_at: datetime
    last_heartbeat: datetime
    heartbeat_late: bool = False
    """Nothing heard from the connector for two heartbeat intervals (the link is not gone yet)."""
    disconnected_at: datetime | None = None
    version: str = ""
    build_sha: str = ""
    build_date: str = ""
    protocol: int = 0
    backend: str = ""
    models_supported: list[str] = Field(default_factory=list)
    max_concurrency: int = 0
    inflight: int = 0
    draining: bool = False
    processed_total: int = 0
    processing_ms_total: int = 0
    avg_processing_ms: float = 0.0
    failures_total: int = 0
    """Requests that failed on this connector (client cancels are not failures)."""
    cancelled_total: int = 0
    """Requests on this connector the client gave up on (disconnect or stalled reader)."""
    queue_len: int = 0
    """Requests waiting for a model this connector serves."""
    last_error: str = ""
    tokens_in_total: int = 0
    tokens_out_total: int = 0
    tokens_total: int = 0
    avg_tokens_per_second: float = 0.0
    avg_ttft_ms: float = 0.0
    per_model: dict[str, PerModelCounters] = Field(default_factory=dict)
    instance: str = ""
    """The instance the connector is linked to (REDIS_ADDR set)."""


class McpClientInfo(_Model):
    """One MCP relay (`infero mcp`)."""

    id: str
    name: str
    status: McpStatus
    inflight: int = 0
    connected_at: datetime | None = None
    version: str = ""
    calls_total: int = 0
    errors_total: int = 0
    functions: dict[str, int] = Field(default_factory=dict)
    """Calls per JSON-RPC method since the relay connected."""
    last_error: str = ""
    """The latest relay- or provider-side failure (reported by the relay or seen on a call)."""
    last_error_at: datetime | None = None
    instance: str = ""
    """The server instance the relay is linked to ('' without REDIS_ADDR)."""
    sessions_unlisted: int = 0
    """Live sessions of the relay missing from `sessions` (a relay of another instance with
    more than its home shares: docs/scale-out.md)."""


class McpSessionInfo(_Model):
    """One live MCP client session (`Mcp-Session-Id`) through a relay."""

    id: str
    client_id: str
    started_at: datetime
    last_activity: datetime | None = None
    inflight: int = 0
    method: str = ""
    """Method of the most recent call."""
    duration_ms: int = 0
    instance: str = ""
    """The server instance its relay is linked to ('' without REDIS_ADDR)."""


class McpState(_Model):
    """MCP relays and their live sessions."""

    clients: list[McpClientInfo] = Field(default_factory=list)
    sessions: list[McpSessionInfo] = Field(default_factory=list)


class StateSnapshot(_Model):
    """The whole `/api/state` document."""

    server: ServerInfo
    workers_summary: WorkersSummary = WorkersSummary()
    models: list[ModelInfo] = Field(default_factory=list)
    workers: list[WorkerInfo] = Field(default_factory=list)
    mcp: McpState = McpState()
