"""State words and colours for workers, relays and the local connector.

Raw states (`connected_busy`) are shown in words (`busy`); the word is always there, the
colour only helps. Light tints rather than ANSI names, so NO_COLOR's monochrome filter keeps
every state readable on a dark background.
"""

from __future__ import annotations

from rich.text import Text

_GOOD, _BUSY, _LEAVING, _BAD, _NEW = "#5fd75f", "#ffd75f", "bold #d7afff", "bold #ff8787", "#5fd7ff"

WORDS: dict[str, str] = {
    "connected_idle": "idle",
    "connected_busy": "busy",
    "not_ready": "not ready",
    "disconnected": "not started",
    "error": "reconnecting",
    "terminating": "shutting down",
}
"""States whose raw name is not a word an operator would use."""

STATUS_STYLES: dict[str, str] = {
    "idle": _GOOD,
    "ready": _GOOD,
    "connected_idle": _GOOD,
    "busy": _BUSY,
    "active": _BUSY,
    "connected_busy": _BUSY,
    "connecting": _NEW,
    "error": _NEW,
    "draining": _LEAVING,
    "terminating": _LEAVING,
    "not_ready": _BAD,
    "disconnected": _BAD,
    "gone": "dim",
}


def status_word(status: str) -> str:
    """The state in words (`connected_busy` -> `busy`)."""
    return WORDS.get(status, status)


def status_style(status: str) -> str:
    """The colour of a state ("" when it has none)."""
    return STATUS_STYLES.get(status, "")


def status_text(status: str) -> Text:
    """The state word in its colour (never parsed as markup)."""
    return Text(status_word(status), style=status_style(status))
