"""`infero mcp` (work in progress)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the `mcp` command (not yet available)."""
