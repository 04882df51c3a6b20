"""`infero ctl` (work in progress)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the `ctl` command (not yet available)."""
