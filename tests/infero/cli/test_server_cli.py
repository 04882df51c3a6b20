"""`infero server` on the command line: version, printed config, precedence, bad values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from infero.cli import app, main
from infero.common.buildinfo import BUILD

WIDE = {"COLUMNS": "300", "NO_COLOR": "1", "TERM": "dumb"}


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, ["server", *args], env={**WIDE, **(env or {})})


def test_version_prints_version_sha_and_date() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == BUILD.line("infero")


def test_bare_infero_with_flags_is_the_server(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == BUILD.line("infero")


def test_print_config_masks_every_secret(tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("operator_key: op-s3cret\nport: 9000\n", encoding="utf-8")
    result = invoke(
        "--config",
        str(config),
        "--print-config",
        "--api-key",
        "api-s3cret",
        env={"CLIENT_KEY": "ck-s3cret", "PORT": "9001"},
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["api_key"], data["client_key"], data["operator_key"]) == ("***", "***", "***")
    assert data["port"] == 9001
    assert "s3cret" not in result.stdout


@pytest.mark.parametrize(
    ("args", "env", "name"),
    [
        (["--port", "http"], {}, "--port"),
        ([], {"PORT": "70000"}, "PORT"),
        ([], {"LOG_LEVEL": "chatty"}, "LOG_LEVEL"),
        (["--queue-timeout", "whenever"], {}, "--queue-timeout"),
    ],
)
def test_invalid_values_stop_with_one_line_naming_the_setting(
    args: list[str], env: dict[str, str], name: str
) -> None:
    result = invoke(*args, env=env)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("infero: invalid setting ")
    assert name in lines[0]


def test_a_missing_explicit_config_file_is_one_clear_error(tmp_path: Path) -> None:
    result = invoke("--config", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert "no such file" in result.stderr
