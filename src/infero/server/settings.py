"""Settings of `infero server` (env names from the seed)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, Field, model_validator

from infero.common.settings import (
    CsvList,
    Duration,
    ListenPort,
    LogFormat,
    LogLevel,
    Opt,
    Port,
    SettingsModel,
)
from infero.server.proxies import check_trusted_proxies


class ServerSettings(SettingsModel):
    """Everything `infero server` can be told; see docs/configuration.md."""

    replaced_env: ClassVar[Mapping[str, str]] = {
        "BROKER_WS_HEARTBEAT_MS": "HEARTBEAT_INTERVAL (a duration such as 15s)",
        "BROKER_WS_DEAD_AFTER_MS": "LINK_DEAD_AFTER (a duration such as 45s)",
        "LISTEN_ADDR": "HOST and PORT",
    }

    host: Annotated[str, Opt("HOST", "Address to listen on.")] = "0.0.0.0"
    port: Annotated[Port, Opt("PORT", "TCP port of the API, links and dashboard.")] = 8080
    api_key: Annotated[
        str, Opt("API_KEY", "Bearer key clients must send on /api/*; empty disables.", secret=True)
    ] = ""
    api_keys_file: Annotated[
        str,
        Opt("API_KEYS_FILE", "File of named client keys, one `name key [operator]` per line."),
    ] = ""
    operator_key: Annotated[
        str,
        Opt("OPERATOR_KEY", "Key allowed to drain/undrain/shut down connectors.", secret=True),
    ] = ""
    client_key: Annotated[
        str, Opt("CLIENT_KEY", "Shared secret connectors present when they dial in.", secret=True)
    ] = ""
    metrics_port: Annotated[
        ListenPort | None,
        Opt(
            "METRICS_PORT",
            "Serve /metrics on this port instead of PORT.",
            old_keys=("metricsaddr",),
        ),
    ] = None
    tls_cert_file: Annotated[
        str,
        Opt(
            "TLS_CERT_FILE",
            "PEM certificate chain: serve HTTPS/WSS (reloaded on change or SIGHUP).",
            aliases=("--tls-cert",),
        ),
    ] = ""
    tls_key_file: Annotated[
        str,
        Opt(
            "TLS_KEY_FILE",
            "PEM private key of TLS_CERT_FILE (empty: the key is in that file).",
            aliases=("--tls-key",),
        ),
    ] = ""
    trusted_proxies: Annotated[
        CsvList,
        AfterValidator(check_trusted_proxies),
        Opt(
            "TRUSTED_PROXIES",
            "Comma-separated proxy addresses/networks whose X-Forwarded-For is believed.",
        ),
    ] = ()
    allowed_origins: Annotated[
        CsvList, Opt("ALLOWED_ORIGINS", "Comma-separated CORS origins; empty denies all.")
    ] = ()
    max_body_bytes: Annotated[
        int, Field(gt=0), Opt("MAX_BODY_BYTES", "Largest request body accepted (413 above).")
    ] = 64 * 1024 * 1024
    header_timeout: Annotated[
        Duration,
        Field(gt=0),
        Opt("HEADER_TIMEOUT", "Close a connection whose request head is not complete in time."),
    ] = 10.0
    keepalive_timeout: Annotated[
        Duration,
        Field(gt=0),
        Opt("KEEPALIVE_TIMEOUT", "Close a keep-alive connection idle for this long."),
    ] = 75.0
    max_held_body_bytes: Annotated[
        int,
        Field(gt=0),
        Opt(
            "MAX_HELD_BODY_BYTES",
            "Bytes of request bodies the server holds at once (503 above).",
        ),
    ] = 256 * 1024 * 1024
    body_timeout: Annotated[
        Duration,
        Field(gt=0),
        Opt("BODY_TIMEOUT", "Longest gap while a request body arrives (408 above)."),
    ] = 30.0
    queue_max: Annotated[
        int, Field(ge=0), Opt("QUEUE_MAX", "Requests that may wait per model; 0 disables queue.")
    ] = 100
    queue_timeout: Annotated[
        Duration, Field(gt=0), Opt("QUEUE_TIMEOUT", "Longest wait in the queue.")
    ] = 60.0
    queue_headers_after: Annotated[
        Duration,
        Field(ge=0),
        Opt(
            "QUEUE_HEADERS_AFTER",
            "A queued stream gets 200 + `: queued` comments after waiting this long.",
        ),
    ] = 2.0
    first_byte_timeout: Annotated[
        Duration,
        Field(gt=0),
        Opt("FIRST_BYTE_TIMEOUT", "Longest wait for the answer to start once dispatched."),
    ] = 300.0
    request_timeout: Annotated[
        Duration,
        Field(gt=0),
        Opt("REQUEST_TIMEOUT", "Longest silence between two chunks of an answer."),
    ] = 120.0
    stall_timeout: Annotated[
        Duration,
        Field(gt=0),
        Opt(
            "STALL_TIMEOUT",
            "Cancel a request whose client accepts no bytes of its answer for this long.",
        ),
    ] = 30.0
    keepalive_interval: Annotated[
        Duration,
        Field(gt=0),
        Opt("KEEPALIVE_INTERVAL", "SSE keepalive comment period while a stream waits."),
    ] = 10.0
    heartbeat_interval: Annotated[
        Duration, Field(gt=0), Opt("HEARTBEAT_INTERVAL", "Link ping period after silence.")
    ] = 5.0
    link_dead_after: Annotated[
        Duration, Field(gt=0), Opt("LINK_DEAD_AFTER", "Close a link silent for this long.")
    ] = 15.0
    gone_retention: Annotated[
        Duration,
        Field(ge=0),
        Opt("GONE_RETENTION", "How long a departed connector stays listed as `gone`."),
    ] = 300.0
    drain_timeout: Annotated[
        Duration,
        Opt("DRAIN_TIMEOUT", "On SIGTERM, wait this long for in-flight work (0 now, -1 forever)."),
    ] = 300.0
    response_affinity_max: Annotated[
        int,
        Field(ge=1),
        Opt("RESPONSE_AFFINITY_MAX", "Response ids remembered with their connector (LRU)."),
    ] = 100_000
    response_affinity_retention: Annotated[
        Duration,
        Field(gt=0),
        Opt("RESPONSE_AFFINITY_RETENTION", "How long a response id stays routable."),
    ] = 30 * 24 * 3600.0
    redis_addr: Annotated[
        str,
        Opt(
            "REDIS_ADDR",
            "Redis URL shared by every instance (redis://, rediss://, redis+sentinel://, "
            "redis+cluster://); empty: one instance, state in memory.",
            secret=True,
        ),
    ] = ""
    instance_addr: Annotated[
        str,
        Opt(
            "INSTANCE_ADDR",
            "Base URL other instances use to reach this one (default http://HOSTNAME:PORT).",
        ),
    ] = ""
    instance_id: Annotated[
        str,
        Opt(
            "INSTANCE_ID",
            "This instance's name in the fleet, unique: one held by a live instance is refused "
            "at start (default HOSTNAME:PORT).",
        ),
    ] = ""
    peer_key: Annotated[
        str,
        Opt(
            "PEER_KEY",
            "Shared secret of the instances' internal channel (REDIS_ADDR).",
            secret=True,
        ),
    ] = ""
    lease_ttl: Annotated[
        Duration,
        Field(ge=1, le=10),
        Opt(
            "LEASE_TTL",
            "An instance not heard of in Redis for this long leaves the fleet (the same on "
            "every instance).",
        ),
    ] = 10.0
    log_level: Annotated[LogLevel, Opt("LOG_LEVEL", "debug, info, warning or error.")] = "info"
    log_format: Annotated[LogFormat, Opt("LOG_FORMAT", "text or json.")] = "text"
    broker_max_req_bytes: Annotated[
        int,
        Field(gt=0),
        Opt("BROKER_MAX_REQ_BYTES", "Largest MCP request body (JSON-RPC error 413 above)."),
    ] = 10 * 1024 * 1024
    broker_max_resp_bytes: Annotated[
        int,
        Field(gt=0),
        Opt("BROKER_MAX_RESP_BYTES", "Largest MCP answer to one POST (the call ends above)."),
    ] = 64 * 1024 * 1024
    broker_max_concurrency_per_client: Annotated[
        int,
        Field(ge=1, le=100_000),
        Opt("BROKER_MAX_CONCURRENCY_PER_CLIENT", "MCP calls in flight per relay (429 above)."),
    ] = 16
    broker_call_timeout: Annotated[
        Duration,
        Field(gt=0),
        Opt(
            "BROKER_CALL_TIMEOUT",
            "Longest MCP call wait for an answer or its next event (default: REQUEST_TIMEOUT "
            "when that is set, else 5m).",
        ),
    ] = 300.0

    @model_validator(mode="after")
    def _scale_out_needs_peer_key(self) -> ServerSettings:
        """Instances sharing REDIS_ADDR relay to each other: their channel needs its secret."""
        if self.redis_addr and not self.peer_key:
            raise ValueError("PEER_KEY is required when REDIS_ADDR is set (see docs/scale-out.md)")
        return self

    @model_validator(mode="before")
    @classmethod
    def _mcp_calls_follow_request_timeout(cls, data: Any) -> Any:
        """The Go original bounded MCP calls by REQUEST_TIMEOUT; keep that when only it is set."""
        if (
            isinstance(data, dict)
            and data.get("request_timeout") is not None
            and data.get("broker_call_timeout") is None
        ):
            return {**data, "broker_call_timeout": data["request_timeout"]}
        return data
