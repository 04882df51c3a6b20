"""`infero demo`: server + connector + a labelled demo backend on loopback (work in progress)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the `demo` command (not yet available)."""
