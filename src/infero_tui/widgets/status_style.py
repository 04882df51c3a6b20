"""Colours for worker and connector states (the state word is always shown too)."""

from __future__ import annotations

from rich.text import Text

STATUS_STYLES: dict[str, str] = {
    "idle": "green",
    "busy": "yellow",
    "active": "yellow",
    "connecting": "cyan",
    "draining": "magenta",
    "not_ready": "red",
    "gone": "dim",
    "ready": "green",
    "connected_idle": "green",
    "connected_busy": "yellow",
    "disconnected": "red",
    "terminating": "magenta",
    "error": "bold red",
}


def status_text(status: str) -> Text:
    """The state word in its colour (never parsed as markup)."""
    return Text(status, style=STATUS_STYLES.get(status, ""))
