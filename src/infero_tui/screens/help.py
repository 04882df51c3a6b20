"""`?`: every key of the console, by where it works."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

_KEY_NAMES = {
    "question_mark": "?",
    "slash": "/",
    "escape": "Esc",
    "ctrl+p": "Ctrl+P",
    "ctrl+s": "Ctrl+S",
}

HelpSection = tuple[str, Sequence[BindingType]]


def _rows(bindings: Sequence[BindingType]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for item in bindings:
        if isinstance(item, Binding):
            key, description, display = item.key, item.description, item.key_display
        else:
            key, description, display = item[0], item[2] if len(item) > 2 else "", None
        if description:
            shown = display or ", ".join(_KEY_NAMES.get(k, k) for k in key.split(","))
            rows.append((shown, description))
    return rows


class HelpScreen(ModalScreen[None]):
    """A scrollable table of keys; Esc, q or ? closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "dismiss", "Close"),
    ]

    DEFAULT_CSS = """
    HelpScreen {
        align: center middle;
    }
    HelpScreen > VerticalScroll {
        width: 70;
        max-width: 95%;
        height: 90%;
        border: thick $primary;
        background: $surface;
        padding: 0 1;
    }
    """

    def __init__(self, sections: Sequence[HelpSection]) -> None:
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, padding=(0, 2), expand=True)
        table.add_column("Key", style="bold", no_wrap=True)
        table.add_column("Action")
        for title, bindings in self.sections:
            table.add_row(Text(title, style="bold underline"), Text(""))
            for key, description in _rows(bindings):
                table.add_row(Text(key), Text(description))
            table.add_row(Text(""), Text(""))
        with VerticalScroll():
            yield Static(Text("infero tui — keys (Esc closes)", style="bold"))
            yield Static(table)
