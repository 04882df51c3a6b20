"""`infero llm` (also `infero-llm`): the LLM connector."""

from __future__ import annotations

import typer

from infero.cli.options import settings_command, versioned
from infero.worker.settings import WorkerSettings


def _run(settings: WorkerSettings, config_path: str) -> int:
    from infero.worker.runner import run_worker

    return run_worker(settings, config_path=config_path)


def register(app: typer.Typer) -> None:
    """Add the `llm` command."""
    app.command("llm", cls=versioned("infero-llm"))(
        settings_command(
            WorkerSettings,
            component="infero-llm",
            filename="worker.yaml",
            run=_run,
            doc="Run an LLM connector: dial the server and relay to a local backend.",
        )
    )
