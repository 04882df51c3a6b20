"""Colours for worker and connector states (the state word is always shown too).

Light tints rather than ANSI names, so that NO_COLOR's monochrome filter keeps every state
readable on a dark background.
"""

from __future__ import annotations

from rich.text import Text

_GOOD, _BUSY, _LEAVING, _BAD, _NEW = "#5fd75f", "#ffd75f", "bold #d7afff", "bold #ff8787", "#5fd7ff"

STATUS_STYLES: dict[str, str] = {
    "idle": _GOOD,
    "ready": _GOOD,
    "connected_idle": _GOOD,
    "busy": _BUSY,
    "active": _BUSY,
    "connected_busy": _BUSY,
    "connecting": _NEW,
    "draining": _LEAVING,
    "terminating": _LEAVING,
    "not_ready": _BAD,
    "disconnected": _BAD,
    "error": _BAD,
    "gone": "dim",
}


def status_text(status: str) -> Text:
    """The state word in its colour (never parsed as markup)."""
    return Text(status, style=STATUS_STYLES.get(status, ""))
