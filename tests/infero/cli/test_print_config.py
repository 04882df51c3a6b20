"""`--print-config` on every command: secrets and credentials inside URLs masked, and the
config file named only when one was read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from infero.cli import app

WIDE = {"COLUMNS": "300", "NO_COLOR": "1", "TERM": "dumb"}


def printed(*args: str, env: dict[str, str] | None = None) -> tuple[dict[str, Any], str]:
    result = CliRunner().invoke(app, [*args, "--print-config"], env={**WIDE, **(env or {})})
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data, result.stdout


def test_credentials_inside_urls_are_masked_and_the_rest_of_the_url_kept() -> None:
    data, out = printed(
        "llm",
        "--server-url",
        "wss://gw-user:gw-s3cret@gw.example.com/api/llm/connect",
        env={"COMPLETION_BASE_URL": "http://ollama:olla-s3cret@10.0.0.5:11434/v1"},
    )
    assert data["server_url"] == "wss://gw-user:***@gw.example.com/api/llm/connect"
    assert data["completion_base_url"] == "http://ollama:***@10.0.0.5:11434/v1"
    assert "s3cret" not in out
    data, out = printed("mcp", env={"PROVIDER_URL": "http://mcp:pr0v-s3cret@10.0.0.6:7777/mcp"})
    assert data["provider_url"] == "http://mcp:***@10.0.0.6:7777/mcp"
    assert "s3cret" not in out


@pytest.mark.parametrize("command", ["llm", "mcp", "server"])
def test_a_config_file_that_was_not_read_is_not_named(command: str, tmp_path: Path) -> None:
    data, _ = printed(command)
    assert data["config_file"].startswith("none (not given; not found at ")
    config = tmp_path / "settings.yaml"
    config.write_text("log_level: debug\n", encoding="utf-8")
    data, _ = printed(command, "--config", str(config))
    assert (data["config_file"], data["log_level"]) == (str(config), "debug")


def test_demo_prints_its_settings() -> None:
    data, _ = printed("demo", "--port", "9000", "--log-level", "INFO")
    assert data == {"port": 9000, "token_delay": 0.05, "log_level": "info"}


def test_tui_prints_its_settings_with_keys_and_url_credentials_masked(tmp_path: Path) -> None:
    data, out = printed(
        "tui",
        "--server",
        "https://ops:pw-s3cret@gw.example.com",
        "--worker",
        "127.0.0.1:4555",
        "--config",
        str(tmp_path / "worker.yaml"),
        env={"API_KEY": "ak-s3cret", "OPERATOR_KEY": "op-s3cret"},
    )
    assert data["server"] == "https://ops:***@gw.example.com"
    assert (data["api_key"], data["operator_key"]) == ("***", "***")
    assert data["worker"] == "127.0.0.1:4555"
    assert data["token_file"] == str(tmp_path / "worker.token")
    assert "s3cret" not in out


def test_ctl_prints_its_settings_for_the_group_and_each_command() -> None:
    env = {"INFERO_SERVER": "http://tok-s3cret@gw:8080", "API_KEY": "ak-s3cret"}
    data, out = printed("ctl", env=env)
    assert data == {"server": "http://***@gw:8080", "api_key": "***", "operator_key": ""}
    assert "s3cret" not in out
    data, _ = printed("ctl", "drain", "w1", "--operator-key", "op-s3cret", env=env)
    assert (data["api_key"], data["operator_key"]) == ("***", "***")
    data, _ = printed("ctl", "workers", "--server", "http://127.0.0.1:9", env=env)
    assert data["server"] == "http://127.0.0.1:9"
