"""`infero mcp` on the command line: help, aliases, printed config, precedence, bad values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from infero.cli import app
from infero.common.settings import ConfigError, load_settings
from infero.relay.settings import DEFAULT_PROVIDER_URL, RelaySettings

WIDE = {"COLUMNS": "300", "NO_COLOR": "1", "TERM": "dumb"}


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, ["mcp", *args], env={**WIDE, **(env or {})})


def printed(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = invoke(*args, "--print-config", env=env)
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_help_names_the_seed_settings_and_the_mcp_flags() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for name in (
        "SERVER_URL",
        "CLIENT_KEY",
        "CLIENT_ID",
        "AUTH_TOKEN",
        "PROVIDER_URL",
        "--mcp-http-url",
        "--mcp-stdio-command",
        "--mcp-stdio-workdir",
        "--mcp-stdio-allow-relative",
        "--mcp-http-insecure-skip-verify",
        "MCP_HTTP_TIMEOUT",
        "MCP_PROTOCOL_VERSION",
        "MCP_MAX_INFLIGHT",
        "MCP_TRANSPORT_ORDER",
        "METRICS_PORT",
        "--reconnect",
        "-r",
    ):
        assert name in result.stdout, name


def test_flags_override_env_which_overrides_the_yaml_file(tmp_path: Path) -> None:
    config = tmp_path / "mcp.yaml"
    config.write_text(
        "provider_url: http://file:1/mcp\nmcp_stdio_workdir: /from/file\nclient_name: file\n",
        encoding="utf-8",
    )
    data = printed(
        "--config",
        str(config),
        "--mcp-http-url",
        "http://flag:3/mcp",
        env={"PROVIDER_URL": "http://env:2/mcp", "CLIENT_NAME": "env"},
    )
    assert data["provider_url"] == "http://flag:3/mcp"
    assert data["client_name"] == "env"
    assert data["mcp_stdio_workdir"] == "/from/file"


def test_secrets_are_masked_in_the_printed_config() -> None:
    data = printed(env={"CLIENT_KEY": "k", "AUTH_TOKEN": "t"})
    assert data["client_key"] == "***"
    assert data["auth_token"] == "***"


def test_a_relative_stdio_command_is_refused_unless_allowed() -> None:
    result = invoke("--mcp-stdio-command", "python3", "--print-config")
    assert result.exit_code == 2
    assert "--mcp-stdio-command" in result.output
    assert "absolute" in result.output
    data = printed("--mcp-stdio-command", "python3", env={"MCP_STDIO_ALLOW_RELATIVE": "true"})
    assert data["mcp_stdio_command"] == "python3"


def test_unknown_transports_are_refused_with_one_line() -> None:
    result = invoke("--print-config", env={"MCP_TRANSPORT_ORDER": "http,carrier-pigeon"})
    assert result.exit_code == 2
    assert "carrier-pigeon" in result.output


def test_the_first_configured_transport_in_order_is_used() -> None:
    s = load_settings(RelaySettings, environ={})
    assert (s.transport(), s.http_url()) == ("http", DEFAULT_PROVIDER_URL)
    stdio = {"MCP_STDIO_COMMAND": "/bin/srv", "MCP_SSE_URL": "http://h/sse"}
    assert load_settings(RelaySettings, environ=stdio).transport() == "stdio"
    both = {**stdio, "PROVIDER_URL": "http://h/mcp"}
    assert load_settings(RelaySettings, environ=both).transport() == "http"
    ordered = {**both, "MCP_TRANSPORT_ORDER": "sse,http"}
    assert load_settings(RelaySettings, environ=ordered).transport() == "sse"


def test_stdio_args_and_env_accept_shell_strings_and_yaml_lists() -> None:
    s = load_settings(
        RelaySettings,
        environ={"MCP_STDIO_ARGS": "-m 'my server'", "MCP_STDIO_ENV": "A=1,HOME"},
    )
    assert s.mcp_stdio_args == ("-m", "my server")
    assert s.stdio_env({"HOME": "/h", "SECRET": "x"}) == {"A": "1", "HOME": "/h"}
    y = load_settings(
        RelaySettings, file_values={"mcp_stdio_args": ["a", "b c"], "mcp_stdio_env": {"B": 2}}
    )
    assert (y.mcp_stdio_args, y.mcp_stdio_env) == (("a", "b c"), ("B=2",))


def test_bad_stdio_env_items_are_refused() -> None:
    with pytest.raises(ConfigError, match="MCP_STDIO_ENV"):
        load_settings(RelaySettings, environ={"MCP_STDIO_ENV": "=oops"})
