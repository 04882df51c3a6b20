"""`infero server`: the public server."""

from __future__ import annotations

import typer

from infero.cli.options import settings_command, versioned
from infero.server.settings import ServerSettings


def _run(settings: ServerSettings, config_path: str) -> int:
    from infero.server.runner import run_server

    return run_server(settings)


def register(app: typer.Typer) -> None:
    """Add the `server` command."""
    app.command("server", cls=versioned("infero"))(
        settings_command(
            ServerSettings,
            component="infero",
            filename="server.yaml",
            run=_run,
            doc="Run the public server: OpenAI-compatible API, connector links, dashboard.",
        )
    )
