"""`infero demo` on the command line: help, version, bad values."""

from __future__ import annotations

from typer.testing import CliRunner

from infero.cli import app
from infero.common.buildinfo import BUILD

WIDE = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}


def test_demo_help_names_its_options_and_defaults() -> None:
    result = CliRunner().invoke(app, ["demo", "--help"], env=WIDE)
    assert result.exit_code == 0
    out = " ".join(result.stdout.split())  # help wraps lines; compare word sequences
    assert "--port" in out
    assert "[default: 8080" in out
    assert "--token-delay" in out


def test_demo_version() -> None:
    result = CliRunner().invoke(app, ["demo", "--version"], env=WIDE)
    assert result.exit_code == 0
    assert result.stdout.strip() == BUILD.line("infero-demo")


def test_demo_rejects_a_bad_log_level_in_one_line_and_a_bad_port() -> None:
    result = CliRunner().invoke(app, ["demo", "--log-level", "loud"], env=WIDE)
    assert result.exit_code == 2
    assert result.stderr.strip() == "infero demo: invalid setting --log-level: 'loud'"
    result = CliRunner().invoke(app, ["demo", "--port", "99999"], env=WIDE)
    assert result.exit_code == 2
    assert "--port" in result.output
