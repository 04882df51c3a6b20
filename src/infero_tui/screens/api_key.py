"""The prompt shown when the server refuses the API key (401/403)."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from infero_tui.widgets.inputs import configure_inputs


class ApiKeyScreen(ModalScreen[str | None]):
    """Asks for the API key; dismisses with the key, or None on Esc."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]
    """
    | Key | Action |
    | :- | :- |
    | Enter | Use the key and reconnect. |
    | Esc | Keep the current key (the console stays disconnected). |
    """

    DEFAULT_CSS = """
    ApiKeyScreen {
        align: center middle;
    }
    ApiKeyScreen > Vertical {
        width: 64;
        max-width: 95%;
        height: auto;
        border: thick $error;
        background: $surface;
        padding: 1 2;
    }
    ApiKeyScreen Input {
        margin-top: 1;
    }
    """

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason

    def on_mount(self) -> None:
        configure_inputs(self)

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text("The server refused the API key.", style="bold"))
            yield Static(Text(self.reason, style="dim"))
            yield Input(placeholder="API key", password=True, id="api-key")

    @on(Input.Submitted, "#api-key")
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)
