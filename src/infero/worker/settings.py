"""Settings of `infero llm` (env names from the seed)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field

from infero.common.settings import (
    ConnectorSettings,
    CsvList,
    Duration,
    HttpUrl,
    Opt,
    ServerUrl,
)


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


ApiStyle = Annotated[Literal["auto", "openai", "ollama"], BeforeValidator(_lower)]


def _concurrency(value: object) -> object:
    if isinstance(value, str):
        value = value.strip().lower()
        if value != "auto" and not value.lstrip("-").isdigit():
            raise ValueError(f"{value!r} is neither a number nor auto")
    return value


Concurrency = Annotated[
    Annotated[int, Field(ge=1, le=100_000)] | Literal["auto"], BeforeValidator(_concurrency)
]
"""`MAX_CONCURRENCY`: a number, or `auto` (learned from the backend, worker/capacity.py)."""


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

ZERO_POLL_INTERVAL = 20.0
"""`MODEL_POLL_INTERVAL` of 0 or less means this, as in the Go original."""


def _poll_interval(value: float) -> float:
    return value if value > 0 else ZERO_POLL_INTERVAL


class WorkerSettings(ConnectorSettings):
    """Everything `infero llm` can be told; see docs/configuration.md."""

    server_url: ServerUrl = "ws://localhost:8080/api/workers/connect"
    completion_base_url: Annotated[
        HttpUrl, Opt("COMPLETION_BASE_URL", "OpenAI-compatible base URL of the backend.")
    ] = "http://127.0.0.1:11434/v1"
    completion_api_key: Annotated[
        str,
        Opt(
            "COMPLETION_API_KEY",
            "Bearer key sent to the backend.",
            secret=True,
            old_env=("OLLAMA_API_KEY",),
        ),
    ] = ""
    api_style: Annotated[
        ApiStyle,
        Opt("API_STYLE", "Model discovery: auto, openai (GET /models) or ollama (/api/tags)."),
    ] = "auto"
    models: Annotated[
        CsvList, Opt("MODELS", "Comma-separated models to advertise instead of discovering.")
    ] = ()
    max_concurrency: Annotated[
        Concurrency,
        Opt("MAX_CONCURRENCY", "Requests served at once; auto = ask the backend."),
    ] = "auto"
    model_poll_interval: Annotated[
        Duration,
        AfterValidator(_poll_interval),
        Opt("MODEL_POLL_INTERVAL", "How often models are re-discovered (0 or less: 20s)."),
    ] = 60.0
    request_timeout: Annotated[
        Duration,
        Field(gt=0),
        Opt("REQUEST_TIMEOUT", "Longest wait for the backend's headers or next chunk."),
    ] = 300.0
    status_addr: Annotated[
        ListenAddr,
        Opt(
            "STATUS_ADDR",
            "Local status/control port, e.g. 127.0.0.1:4555; empty = off.",
            trailing=True,
        ),
    ] = ""
