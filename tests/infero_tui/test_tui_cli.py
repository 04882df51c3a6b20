"""`infero tui` argument handling (the app itself is tested through its factory)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from infero.cli import app as cli
from infero.cli.tui import _local_context
from infero_tui.process import ConnectorProcess


def test_without_server_or_worker_it_explains_what_to_give() -> None:
    result = CliRunner().invoke(cli, ["tui"])
    assert result.exit_code == 2
    assert "give --server URL and/or --worker ADDR" in result.stderr


def test_help_lists_the_options() -> None:
    result = CliRunner().invoke(cli, ["tui", "--help"])
    assert result.exit_code == 0
    for option in ("--server", "--api-key", "--operator-key", "--worker", "--read-only"):
        assert option in result.output


def test_an_unreadable_replay_file_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "state.json"
    bad.write_text('{"server": {}}', encoding="utf-8")
    result = CliRunner().invoke(cli, ["tui", "--replay", str(bad)])
    assert result.exit_code == 2
    assert "cannot replay" in result.stderr


def test_textual_is_a_base_dependency_with_a_compatible_range() -> None:
    from importlib.metadata import requires

    base = [r for r in requires("infero") or [] if "extra ==" not in r]
    assert [r for r in base if r.startswith("textual")] == ["textual<9,>=8.2"]


def test_local_paths_come_from_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "worker.yaml"
    config.write_text(f"log_dir: {tmp_path / 'logs'}\n", encoding="utf-8")
    context = _local_context("127.0.0.1:4555", str(config), None, None)
    assert context.config_path == config
    assert context.token_file == tmp_path / "worker.token"
    assert context.log_file == tmp_path / "logs" / "infero-llm.log"
    assert isinstance(context.runner, ConnectorProcess)
    assert "--status-addr" in context.runner.command
    assert context.explicit == {"config"}


def test_flags_override_the_token_file_and_log_dir(tmp_path: Path) -> None:
    config = tmp_path / "worker.yaml"
    config.write_text("log_dir: /nowhere\n", encoding="utf-8")
    context = _local_context(
        "127.0.0.1:4555", str(config), str(tmp_path / "t"), str(tmp_path / "l")
    )
    assert context.token_file == tmp_path / "t"
    assert context.log_file == tmp_path / "l" / "infero-llm.log"
    assert context.explicit == {"config", "token", "log"}


def test_a_config_file_that_does_not_exist_yet_is_accepted(tmp_path: Path) -> None:
    context = _local_context("127.0.0.1:4555", str(tmp_path / "new.yaml"), None, None)
    assert context.config_path == tmp_path / "new.yaml"
    assert context.token_file == tmp_path / "worker.token"


def test_a_malformed_server_url_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["tui", "--server", "localhost:8080"])
    assert result.exit_code == 2
    assert "invalid server URL" in result.stderr
