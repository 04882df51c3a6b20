"""Settings of `infero llm` (env names from the seed)."""

from __future__ import annotations

import socket
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field

from infero.common.settings import (
    Bool,
    CsvList,
    Duration,
    HttpUrl,
    LogFormat,
    LogLevel,
    Opt,
    Port,
    SettingsModel,
    WsUrl,
)


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


ApiStyle = Annotated[Literal["auto", "openai", "ollama"], BeforeValidator(_lower)]


def parse_addr(addr: str) -> tuple[str, int]:
    """`127.0.0.1:4555`, `[::1]:4555` or `:4555` (loopback) -> (host, port)."""
    host, sep, port = addr.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{addr!r} is not host:port (example: 127.0.0.1:4555)")
    return host.strip("[]") or "127.0.0.1", int(port)


def _addr(value: str) -> str:
    if value:
        parse_addr(value)
    return value


ListenAddr = Annotated[str, AfterValidator(_addr)]


class WorkerSettings(SettingsModel):
    """Everything `infero llm` can be told; see docs/configuration.md."""

    server_url: Annotated[WsUrl, Opt("SERVER_URL", "Server link URL (ws:// or wss://).")] = (
        "ws://localhost:8080/api/workers/connect"
    )
    client_key: Annotated[
        str, Opt("CLIENT_KEY", "Shared secret presented to the server.", secret=True)
    ] = ""
    client_id: Annotated[
        str, Field(max_length=128), Opt("CLIENT_ID", "Stable connector id; random if empty.")
    ] = ""
    client_name: Annotated[
        str, Field(max_length=128), Opt("CLIENT_NAME", "Display name; the hostname if empty.")
    ] = ""
    completion_base_url: Annotated[
        HttpUrl, Opt("COMPLETION_BASE_URL", "OpenAI-compatible base URL of the backend.")
    ] = "http://127.0.0.1:11434/v1"
    completion_api_key: Annotated[
        str, Opt("COMPLETION_API_KEY", "Bearer key sent to the backend.", secret=True)
    ] = ""
    api_style: Annotated[
        ApiStyle,
        Opt("API_STYLE", "Model discovery: auto, openai (GET /models) or ollama (/api/tags)."),
    ] = "auto"
    models: Annotated[
        CsvList, Opt("MODELS", "Comma-separated models to advertise instead of discovering.")
    ] = ()
    max_concurrency: Annotated[
        int, Field(ge=1, le=100_000), Opt("MAX_CONCURRENCY", "Requests served at once.")
    ] = 2
    model_poll_interval: Annotated[
        Duration, Field(gt=0), Opt("MODEL_POLL_INTERVAL", "How often models are re-discovered.")
    ] = 60.0
    request_timeout: Annotated[
        Duration,
        Field(gt=0),
        Opt("REQUEST_TIMEOUT", "Longest wait for the backend's headers or next chunk."),
    ] = 300.0
    reconnect: Annotated[
        Bool, Opt("RECONNECT", "Keep reconnecting with backoff instead of exiting.", short="-r")
    ] = False
    status_addr: Annotated[
        ListenAddr,
        Opt("STATUS_ADDR", "Local status/control port, e.g. 127.0.0.1:4555; empty = off."),
    ] = ""
    metrics_port: Annotated[
        Port | None, Opt("METRICS_PORT", "Serve connector metrics on this port.")
    ] = None
    drain_timeout: Annotated[
        Duration,
        Opt("DRAIN_TIMEOUT", "On SIGTERM, wait this long for in-flight work (0 now, -1 forever)."),
    ] = 60.0
    log_dir: Annotated[str, Opt("LOG_DIR", "Also write a rotating log file here.")] = ""
    log_level: Annotated[LogLevel, Opt("LOG_LEVEL", "debug, info, warning or error.")] = "info"
    log_format: Annotated[LogFormat, Opt("LOG_FORMAT", "text or json.")] = "text"

    def display_name(self) -> str:
        """`CLIENT_NAME`, else this machine's hostname."""
        return self.client_name or socket.gethostname() or "worker"
