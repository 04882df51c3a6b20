"""Settings and files written for the Go original keep working, or fail naming what to use."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web
from typer.testing import CliRunner

from infero.cli import app
from infero.common.buildinfo import BUILD
from infero.common.settings import ConfigError, load_settings, read_yaml
from infero.relay.settings import RelaySettings
from infero.server.settings import ServerSettings
from infero.worker.runtime import Connector
from infero.worker.settings import ZERO_POLL_INTERVAL, WorkerSettings
from support.linkfakes import FakeBackend
from support.server import running_server


@pytest.mark.parametrize("cls", [ServerSettings, WorkerSettings, RelaySettings])
@pytest.mark.parametrize("value", ["9090", ":9090", "0.0.0.0:9090", "[::]:9090"])
def test_metrics_port_accepts_the_originals_colon_forms(
    cls: type[ServerSettings | WorkerSettings | RelaySettings], value: str
) -> None:
    assert load_settings(cls, environ={"METRICS_PORT": value}).metrics_port == 9090


def test_metrics_port_with_a_specific_host_names_what_to_use() -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(ServerSettings, environ={"METRICS_PORT": "127.0.0.1:9090"})
    assert "METRICS_PORT (environment)" in str(error.value)
    assert "METRICS_PORT=9090" in str(error.value)
    assert "HOST" in str(error.value)


def test_model_poll_interval_zero_means_twenty_seconds_as_in_the_original() -> None:
    for value in ("0", "-1s"):
        loaded = load_settings(WorkerSettings, environ={"MODEL_POLL_INTERVAL": value})
        assert loaded.model_poll_interval == ZERO_POLL_INTERVAL == 20.0


def test_the_originals_lower_case_yaml_keys_are_read(tmp_path: Path) -> None:
    worker_yaml = tmp_path / "worker.yaml"
    worker_yaml.write_text(
        "serverurl: wss://gw.example.com/api/workers/connect\n"
        "clientkey: secret\n"
        "completionbaseurl: http://127.0.0.1:11434/v1\n"
        "completionapikey: backend\n"
        "maxconcurrency: 4\n"
        "clientid: w1\n"
        "clientname: Alpha\n"
        "statusaddr: 127.0.0.1:4555\n"
        "metricsaddr: ':9091'\n"
        "draintimeout: 2m\n"
        "modelpollinterval: 30s\n"
        "requesttimeout: 90s\n"
        "reconnect: true\n"
        "logdir: /var/log/infero\n",
        encoding="utf-8",
    )
    worker = load_settings(
        WorkerSettings, file_values=read_yaml(worker_yaml), file_path=worker_yaml
    )
    assert worker.server_url == "wss://gw.example.com/api/workers/connect"
    assert (worker.client_key, worker.completion_api_key) == ("secret", "backend")
    assert (worker.max_concurrency, worker.client_id, worker.client_name) == (4, "w1", "Alpha")
    assert (worker.status_addr, worker.metrics_port) == ("127.0.0.1:4555", 9091)
    assert (worker.drain_timeout, worker.model_poll_interval, worker.request_timeout) == (
        120.0,
        30.0,
        90.0,
    )
    assert worker.reconnect is True
    assert worker.log_dir == "/var/log/infero"

    server = load_settings(
        ServerSettings,
        file_values={
            "port": 8081,
            "apikey": "k",
            "clientkey": "c",
            "metricsaddr": ":9090",
            "requesttimeout": "120s",
            "draintimeout": "5m",
            "allowedorigins": ["https://a.example"],
        },
    )
    assert (server.port, server.api_key, server.client_key, server.metrics_port) == (
        8081,
        "k",
        "c",
        9090,
    )
    assert (server.request_timeout, server.drain_timeout) == (120.0, 300.0)
    assert server.allowed_origins == ("https://a.example",)

    relay = load_settings(
        RelaySettings,
        file_values={
            "serverurl": "ws://h/api/mcp/connect",
            "providerurl": "http://127.0.0.1:7777/",
            "authtoken": "t",
            "requesttimeout": "45s",
        },
    )
    assert (relay.provider_url, relay.auth_token, relay.mcp_http_timeout) == (
        "http://127.0.0.1:7777/",
        "t",
        45.0,
    )


def test_yaml_keys_that_cannot_work_fail_naming_what_to_use(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'configfile' has no effect in a file; use CONFIG_FILE"):
        load_settings(WorkerSettings, file_values={"configfile": "/etc/infero/worker.yaml"})
    with pytest.raises(ConfigError, match="'server_url' sets server_url a second time"):
        load_settings(
            WorkerSettings, file_values={"serverurl": "ws://a/x", "server_url": "ws://b/x"}
        )
    with pytest.raises(ConfigError, match="unknown setting 'listenaddr'"):
        load_settings(ServerSettings, file_values={"listenaddr": ":8080"})


def test_debug_true_means_log_level_debug_unless_log_level_is_set() -> None:
    assert load_settings(ServerSettings, environ={"DEBUG": "TRUE"}).log_level == "debug"
    assert load_settings(WorkerSettings, environ={"DEBUG": "false"}).log_level == "info"
    both = {"DEBUG": "true", "LOG_LEVEL": "warning"}
    assert load_settings(RelaySettings, environ=both).log_level == "warning"
    with pytest.raises(ConfigError, match=r"DEBUG .*LOG_LEVEL=debug"):
        load_settings(ServerSettings, environ={"DEBUG": "verbose"})


def test_request_timeout_bounds_mcp_calls_unless_broker_call_timeout_is_set() -> None:
    only = load_settings(ServerSettings, environ={"REQUEST_TIMEOUT": "30"})
    assert (only.request_timeout, only.broker_call_timeout) == (30.0, 30.0)
    both = load_settings(
        ServerSettings, environ={"REQUEST_TIMEOUT": "30", "BROKER_CALL_TIMEOUT": "9"}
    )
    assert both.broker_call_timeout == 9.0
    assert load_settings(ServerSettings, environ={}).broker_call_timeout == 300.0
    relay = load_settings(RelaySettings, environ={"REQUEST_TIMEOUT": "75"})
    assert relay.mcp_http_timeout == 75.0
    newer = load_settings(RelaySettings, environ={"REQUEST_TIMEOUT": "75", "MCP_HTTP_TIMEOUT": "5"})
    assert newer.mcp_http_timeout == 5.0


async def test_ollama_api_key_is_sent_to_the_backend() -> None:
    backend = FakeBackend(models=["m1"])
    runner = web.AppRunner(backend.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with running_server() as server:
            settings = load_settings(
                WorkerSettings,
                environ={
                    "SERVER_URL": server.ws_url,
                    "COMPLETION_BASE_URL": f"http://127.0.0.1:{runner.addresses[0][1]}/v1",
                    "OLLAMA_API_KEY": "from-ollama-key",
                },
            )
            connector = Connector(settings)
            task = asyncio.create_task(connector.run())
            try:
                async with asyncio.timeout(10):
                    await connector.connected.wait()
            finally:
                connector.request_stop()
                async with asyncio.timeout(10):
                    await task
    finally:
        await runner.cleanup()
    assert backend.discovery_auth[0] == "Bearer from-ollama-key"


@pytest.mark.parametrize(
    ("args", "component"),
    [
        (["--help"], "infero"),
        (["server", "--help"], "infero"),
        (["llm", "--help"], "infero-llm"),
        (["mcp", "--help"], "infero-mcp"),
    ],
)
def test_help_begins_with_the_version_line(args: list[str], component: str) -> None:
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200", "TERM": "dumb"})
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == BUILD.line(component)


def test_removed_server_env_names_fail_naming_the_replacement() -> None:
    with pytest.raises(ConfigError, match=r"BROKER_WS_HEARTBEAT_MS .* use HEARTBEAT_INTERVAL"):
        load_settings(ServerSettings, environ={"BROKER_WS_HEARTBEAT_MS": "15000"})
    with pytest.raises(ConfigError, match=r"LISTEN_ADDR .* use HOST and PORT"):
        load_settings(ServerSettings, environ={"LISTEN_ADDR": ":8080"})
