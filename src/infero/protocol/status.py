"""The connector's local status port documents (`GET /status`, `GET /version`)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ConnectorState = Literal[
    "disconnected",
    "connecting",
    "connected_idle",
    "connected_busy",
    "not_ready",
    "draining",
    "terminating",
    "error",
]


class WorkerStatusDoc(BaseModel):
    """`GET /status` of `infero llm --status-addr` (seed field names, plus a few)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    state: ConnectorState
    connected_to_server: bool = False
    connected_to_backend: bool = False
    current_jobs: int = 0
    max_concurrency: int = 0
    models: list[str] = Field(default_factory=list)
    last_error: str = ""
    last_heartbeat: datetime | None = None
    worker_id: str = ""
    worker_name: str = ""
    version: str = ""
    build_sha: str = ""
    build_date: str = ""
    draining: bool = False
    backend: str = ""
    server_url: str = ""
    completion_base_url: str = ""
    kind: Literal["llm", "mcp"] = "llm"
    """Which connector answers: `infero llm` or `infero mcp` (the fields below are its)."""
    sessions: int = 0
    """`infero mcp`: client sessions open through its stdio/SSE facade."""
    provider: str = ""
    """`infero mcp`: the MCP provider (URL, or the stdio command without its arguments)."""
    authorization: str = ""
    """`infero mcp` with OAuth: `authorized`, `waiting for authorization: open <url>`, or why
    not (empty without OAuth)."""
    config_file: str = ""
    """Absolute path of the config file the connector was started with ("" = none)."""
    token_file: str = ""
    """Absolute path of the control token file (`X-Auth-Token` for `/control/*`)."""
    log_file: str = ""
    """Absolute path of the log file it writes ("" = it logs to stderr only)."""


class VersionDoc(BaseModel):
    """`GET /version`."""

    model_config = ConfigDict(frozen=True)

    version: str
    build_sha: str
    build_date: str
