"""`infero llm` (also `infero-llm`): the LLM connector."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import typer
from typer.models import OptionInfo

from infero.cli.options import settings_command
from infero.worker.settings import WorkerSettings

_UNESCAPED_BRACKET = re.compile(r"(?<!\\)\[")


def _run(settings: WorkerSettings, config_path: str) -> int:
    from infero.worker.runner import run_worker

    return run_worker(settings, config_path=config_path)


def _literal_brackets(command: Callable[..., Any]) -> Callable[..., Any]:
    """Escape `[env: X] [default: Y]` in option help so rich markup does not eat them."""
    for param in inspect.signature(command).parameters.values():
        option = param.default
        if isinstance(option, OptionInfo) and option.help:
            option.help = _UNESCAPED_BRACKET.sub(r"\\[", option.help)
    return command


def register(app: typer.Typer) -> None:
    """Add the `llm` command."""
    app.command("llm")(
        _literal_brackets(
            settings_command(
                WorkerSettings,
                component="infero-llm",
                filename="worker.yaml",
                run=_run,
                doc="Run an LLM connector: dial the server and relay to a local backend.",
            )
        )
    )
