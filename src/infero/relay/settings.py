"""Settings of `infero mcp` (env names from the seed; YAML file `mcp.yaml`)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo, field_validator

from infero.common.settings import (
    Bool,
    ConnectorSettings,
    Duration,
    HttpUrl,
    Opt,
    ServerUrl,
)
from infero.worker.settings import ListenAddr

Transport = Literal["http", "stdio", "sse"]
TRANSPORTS: tuple[Transport, ...] = ("http", "stdio", "sse")

DEFAULT_PROVIDER_URL = "http://127.0.0.1:7777/mcp"
"""Where the seed's FastMCP example listens; used when no provider is configured."""

DEFAULT_PROTOCOL_VERSION = "2025-06-18"


def _order(value: Any) -> Any:
    if isinstance(value, str):
        value = [item.strip().lower() for item in value.split(",") if item.strip()]
    if isinstance(value, list | tuple):
        items = [str(item).strip().lower() for item in value]
        unknown = [item for item in items if item not in TRANSPORTS]
        if unknown:
            raise ValueError(f"unknown transport {unknown[0]!r} (use http, stdio or sse)")
        if not items:
            raise ValueError("needs at least one of http, stdio, sse")
        return tuple(dict.fromkeys(items))
    return value


def _args(value: Any) -> Any:
    """A shell-quoted string (env, flag) or a YAML list."""
    if isinstance(value, str):
        try:
            return tuple(shlex.split(value))
        except ValueError as exc:
            raise ValueError(f"cannot split arguments: {exc}") from None
    if isinstance(value, list | tuple):
        return tuple(str(item) for item in value)
    return value


def _env(value: Any) -> Any:
    """`KEY=value,KEY2` (env, flag) or a YAML list of such items or a mapping."""
    if isinstance(value, Mapping):
        return tuple(f"{k}={v}" for k, v in value.items())
    if isinstance(value, str):
        value = [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, list | tuple):
        items = tuple(str(item) for item in value)
        for item in items:
            key = item.split("=", 1)[0]
            if not key or not key.replace("_", "a").isalnum():
                raise ValueError(f"{item!r} is not KEY=value or KEY")
        return items
    return value


def _version(value: str) -> str:
    if value and len(value) > 32:
        raise ValueError("too long for a protocol version such as 2025-06-18")
    return value


def _loopback(url: str) -> str:
    host = urlsplit(url).hostname or ""
    if url and host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("must be a loopback URL (the relay itself listens on it)")
    return url


TransportOrder = Annotated[tuple[Transport, ...], BeforeValidator(_order)]
ArgList = Annotated[tuple[str, ...], BeforeValidator(_args)]
EnvList = Annotated[tuple[str, ...], BeforeValidator(_env)]


class RelaySettings(ConnectorSettings):
    """Everything `infero mcp` can be told; see docs/mcp.md."""

    server_url: ServerUrl = "ws://localhost:8080/api/mcp/connect"
    client_id: Annotated[
        str,
        Field(max_length=128),
        Opt("CLIENT_ID", "Relay id in the public URL /api/mcp/id/<id>; server assigns if empty."),
    ] = ""
    auth_token: Annotated[
        str,
        Opt(
            "AUTH_TOKEN",
            "Bearer token MCP clients may present for this relay (see docs/mcp.md).",
            secret=True,
        ),
    ] = ""
    provider_url: Annotated[
        HttpUrl,
        Opt(
            "PROVIDER_URL",
            f"Streamable HTTP MCP server URL (default {DEFAULT_PROVIDER_URL}).",
            aliases=("--mcp-http-url",),
        ),
    ] = ""
    mcp_sse_url: Annotated[
        HttpUrl, Opt("MCP_SSE_URL", "Legacy HTTP+SSE MCP server URL (its GET /sse endpoint).")
    ] = ""
    mcp_stdio_allow_relative: Annotated[
        Bool, Opt("MCP_STDIO_ALLOW_RELATIVE", "Allow a relative stdio command (looked up in PATH).")
    ] = False
    mcp_stdio_command: Annotated[
        str, Opt("MCP_STDIO_COMMAND", "stdio MCP server command (absolute path).")
    ] = ""
    mcp_stdio_args: Annotated[
        ArgList, Opt("MCP_STDIO_ARGS", "Arguments of the stdio command (shell-quoted).")
    ] = ()
    mcp_stdio_env: Annotated[
        EnvList,
        Opt("MCP_STDIO_ENV", "Extra env for the stdio command: KEY=value, or KEY to copy ours."),
    ] = ()
    mcp_stdio_workdir: Annotated[
        str, Opt("MCP_STDIO_WORKDIR", "Working directory of the stdio command.")
    ] = ""
    mcp_transport_order: Annotated[
        TransportOrder,
        Opt("MCP_TRANSPORT_ORDER", "Which configured provider to use first: http, stdio, sse."),
    ] = TRANSPORTS
    mcp_protocol_version: Annotated[
        str,
        AfterValidator(_version),
        Opt("MCP_PROTOCOL_VERSION", "Protocol version the relay's provider probe offers."),
    ] = DEFAULT_PROTOCOL_VERSION
    mcp_http_timeout: Annotated[
        Duration,
        Field(gt=0),
        Opt(
            "MCP_HTTP_TIMEOUT",
            "Longest wait for the provider's answer to a call to start or continue.",
            old_env=("REQUEST_TIMEOUT",),
            old_keys=("requesttimeout",),
        ),
    ] = 300.0
    mcp_http_insecure_skip_verify: Annotated[
        Bool, Opt("MCP_HTTP_INSECURE_SKIP_VERIFY", "Do not verify the provider's TLS certificate.")
    ] = False
    mcp_max_inflight: Annotated[
        int,
        Field(ge=1, le=100_000),
        Opt("MCP_MAX_INFLIGHT", "Calls the relay forwards to the provider at once."),
    ] = 16
    mcp_max_sessions: Annotated[
        int,
        Field(ge=1, le=100_000),
        Opt("MCP_MAX_SESSIONS", "stdio/SSE providers: client sessions open at once (one each)."),
    ] = 32
    mcp_session_idle_timeout: Annotated[
        Duration,
        Field(gt=0),
        Opt(
            "MCP_SESSION_IDLE_TIMEOUT",
            "Close a stdio/SSE session this long without a request; longest listening silence.",
        ),
    ] = 1800.0
    mcp_probe_interval: Annotated[
        Duration,
        Field(gt=0),
        Opt("MCP_PROBE_INTERVAL", "How often a ready http/sse provider is probed again."),
    ] = 60.0

    mcp_oauth_token_file: Annotated[
        str,
        Opt(
            "MCP_OAUTH_TOKEN_FILE",
            "http provider: use OAuth 2.1 and cache its tokens in this file (0600).",
        ),
    ] = ""
    mcp_oauth_client_id: Annotated[
        str,
        Opt("MCP_OAUTH_CLIENT_ID", "OAuth client id; empty = dynamic client registration."),
    ] = ""
    mcp_oauth_client_secret: Annotated[
        str,
        Opt("MCP_OAUTH_CLIENT_SECRET", "Secret of MCP_OAUTH_CLIENT_ID, if any.", secret=True),
    ] = ""
    mcp_oauth_scopes: Annotated[
        str,
        Opt("MCP_OAUTH_SCOPES", "OAuth scopes to ask for (space-separated); empty = advertised."),
    ] = ""
    mcp_oauth_redirect_url: Annotated[
        HttpUrl,
        AfterValidator(_loopback),
        Opt(
            "MCP_OAUTH_REDIRECT_URL",
            "Loopback URL the relay listens on for the browser's return after authorization.",
        ),
    ] = "http://127.0.0.1:8976/callback"
    status_addr: Annotated[
        ListenAddr,
        Opt(
            "STATUS_ADDR",
            "Local status/control port, e.g. 127.0.0.1:4556; empty = off.",
            trailing=True,
        ),
    ] = ""

    @field_validator("mcp_stdio_command")
    @classmethod
    def _absolute_command(cls, command: str, info: ValidationInfo) -> str:
        if command and not os.path.isabs(command) and not info.data.get("mcp_stdio_allow_relative"):
            raise ValueError(
                "must be an absolute path (set MCP_STDIO_ALLOW_RELATIVE=true to look it up in PATH)"
            )
        return command

    def configured(self) -> tuple[Transport, ...]:
        """Transports that have a provider configured, in `MCP_TRANSPORT_ORDER`."""
        present = {
            "http": bool(self.provider_url),
            "stdio": bool(self.mcp_stdio_command),
            "sse": bool(self.mcp_sse_url),
        }
        return tuple(t for t in self.mcp_transport_order if present[t])

    def transport(self) -> Transport:
        """The provider transport in use: the first configured one, else http."""
        chosen = self.configured()
        return chosen[0] if chosen else "http"

    def http_url(self) -> str:
        """The Streamable HTTP provider URL (default when none is configured)."""
        return self.provider_url or DEFAULT_PROVIDER_URL

    def stdio_env(self, environ: Mapping[str, str]) -> dict[str, str]:
        """Extra environment of the stdio child: `KEY=value` as given, bare `KEY` copied."""
        out: dict[str, str] = {}
        for item in self.mcp_stdio_env:
            key, sep, value = item.partition("=")
            if sep:
                out[key] = value
            elif key in environ:
                out[key] = environ[key]
        return out
