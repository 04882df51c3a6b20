"""Apply the console's input settings (cursor blink) to every Input under a node."""

from __future__ import annotations

from textual.dom import DOMNode
from textual.widgets import Input

from infero_tui.config import ConsoleConfig


def configure_inputs(root: DOMNode) -> None:
    """Switch the cursor blink off when the console's config says so (snapshot tests)."""
    config = getattr(root.app, "config", None)
    if isinstance(config, ConsoleConfig) and not config.cursor_blink:
        for field in root.query(Input):
            field.cursor_blink = False
