"""`infero mcp` (also `infero-mcp`): the MCP relay."""

from __future__ import annotations

import typer

from infero.cli.options import settings_command, versioned
from infero.relay.settings import RelaySettings


def _run(settings: RelaySettings, config_path: str) -> int:
    from infero.relay.runner import run_relay

    return run_relay(settings, config_path=config_path)


def register(app: typer.Typer) -> None:
    """Add the `mcp` command."""
    app.command("mcp", cls=versioned("infero-mcp"))(
        settings_command(
            RelaySettings,
            component="infero-mcp",
            filename="mcp.yaml",
            run=_run,
            doc="Run an MCP relay: dial the server and relay MCP clients to a local MCP server.",
        )
    )
