"""`infero llm` on the command line: help, version, printed config, precedence, bad values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from infero.cli import app
from infero.common.buildinfo import BUILD

WIDE = {"COLUMNS": "300", "NO_COLOR": "1", "TERM": "dumb"}


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, ["llm", *args], env={**WIDE, **(env or {})})


def printed_config(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = invoke(*args, "--print-config", env=env)
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_help_lists_every_setting_with_its_env_var_and_default() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    out = " ".join(result.stdout.split())  # help wraps lines; compare word sequences
    for env in (
        "SERVER_URL",
        "CLIENT_KEY",
        "CLIENT_ID",
        "CLIENT_NAME",
        "COMPLETION_BASE_URL",
        "COMPLETION_API_KEY",
        "MAX_CONCURRENCY",
        "MODEL_POLL_INTERVAL",
        "REQUEST_TIMEOUT",
        "RECONNECT",
        "STATUS_ADDR",
        "METRICS_PORT",
        "DRAIN_TIMEOUT",
        "LOG_DIR",
        "CONFIG_FILE",
    ):
        assert f"[env: {env}]" in out, env
    assert "[default: ws://localhost:8080/api/workers/connect]" in out
    assert "[default: 1m]" in out
    assert "-r" in out


def test_version_prints_version_sha_and_date() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == BUILD.line("infero-llm")


def test_print_config_masks_secrets() -> None:
    data = printed_config("--client-key", "s3cret-ck", env={"COMPLETION_API_KEY": "s3cret-bk"})
    assert data["client_key"] == "***"
    assert data["completion_api_key"] == "***"
    assert "s3cret" not in json.dumps(data)


def test_precedence_is_default_then_yaml_then_env_then_flag(tmp_path: Path) -> None:
    config = tmp_path / "worker.yaml"
    config.write_text(
        "max_concurrency: 3\nclient_name: from-yaml\ndrain_timeout: 2m\n", encoding="utf-8"
    )
    assert printed_config()["max_concurrency"] == "auto"
    from_file = printed_config("--config", str(config))
    assert (from_file["max_concurrency"], from_file["client_name"]) == (3, "from-yaml")
    assert from_file["drain_timeout"] == 120.0
    env = {"CONFIG_FILE": str(config), "MAX_CONCURRENCY": "4"}
    from_env = printed_config(env=env)
    assert (from_env["max_concurrency"], from_env["client_name"]) == (4, "from-yaml")
    assert printed_config("--max-concurrency", "5", env=env)["max_concurrency"] == 5


@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        (["--max-concurrency", "abc"], {}, "--max-concurrency"),
        (["--server-url", "http://x"], {}, "--server-url"),
        ([], {"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ([], {"METRICS_PORT": "99999"}, "METRICS_PORT"),
        (["--status-addr", "localhost"], {}, "--status-addr"),
        (["--drain-timeout", "soon"], {}, "--drain-timeout"),
        (["--api-style", "grpc"], {}, "--api-style"),
    ],
)
def test_invalid_values_stop_with_one_line_naming_the_setting(
    args: list[str], env: dict[str, str], names: str
) -> None:
    result = invoke(*args, env=env)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("infero-llm: invalid setting ")
    assert names in lines[0]
    assert "Traceback" not in result.output


def test_unreachable_server_exits_non_zero_with_a_clear_message_and_a_log_file(
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "SERVER_URL": "ws://127.0.0.1:9/api/workers/connect",
        "COMPLETION_BASE_URL": "http://127.0.0.1:9/v1",
        "MODELS": "m",
        "LOG_DIR": str(tmp_path / "logs"),
    }
    code = "from infero.cli import llm_main; llm_main()"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "cannot reach the server at ws://127.0.0.1:9/api/workers/connect" in proc.stderr
    assert "Traceback" not in proc.stderr
    log = (tmp_path / "logs" / "infero-llm.log").read_text(encoding="utf-8")
    assert "cannot reach the server" in log
