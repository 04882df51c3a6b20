"""A yes/no confirmation before a destructive action."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class ConfirmScreen(ModalScreen[bool]):
    """Asks one question; dismisses with True (y / Enter on Yes) or False (n / Esc)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]
    """
    | Key | Action |
    | :- | :- |
    | y | Confirm. |
    | n, Esc | Cancel. |
    """

    DEFAULT_CSS = """
    ConfirmScreen {
        align: center middle;
    }
    ConfirmScreen > Vertical {
        width: 60;
        max-width: 90%;
        height: auto;
        border: thick $warning;
        background: $surface;
        padding: 1 2;
    }
    ConfirmScreen Horizontal {
        height: auto;
        margin-top: 1;
        align: center middle;
    }
    ConfirmScreen Button {
        margin: 0 1;
    }
    """

    def __init__(self, question: Text) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question, id="question")
            with Horizontal():
                yield Button("Yes (y)", variant="warning", id="yes")
                yield Button("No (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


def action_question(action: str, target: Text, inflight: int | None) -> Text:
    """ "Drain worker alpha (2 in flight)?" with the name kept as plain text, then what the
    action means (the same words as every other surface, see docs/operations.md)."""
    verbs = {"drain": "Drain", "undrain": "Undrain", "shutdown": "Shut down"}
    meanings = {
        "drain": "It takes no new work, finishes what is in flight and stays linked "
        "until undrained.",
        "undrain": "It takes new work again.",
        "shutdown": "It drains, then exits. This cannot be undone.",
    }
    text = Text(f"{verbs.get(action, action)} ")
    text.append_text(target)
    if inflight is not None:
        text.append(f" ({inflight} in flight)")
    text.append("?")
    if action in meanings:
        text.append("\n" + meanings[action], style="dim")
    return text
