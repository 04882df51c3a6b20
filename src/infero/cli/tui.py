"""`infero tui` (work in progress)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the `tui` command (not yet available)."""
