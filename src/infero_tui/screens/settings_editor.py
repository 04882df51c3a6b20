"""Edit the local connector's `worker.yaml`: one field per setting, validated before saving."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from rich.text import Text
from ruamel.yaml.comments import CommentedMap
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from infero.common.settings import ConfigError, field_opts
from infero.worker.settings import WorkerSettings
from infero_tui import settings_file
from infero_tui.widgets.inputs import configure_inputs


class SettingsEditorScreen(ModalScreen[bool]):
    """Dismisses with True after a valid save, False on cancel."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "save", "Save"),
        Binding("escape", "cancel", "Cancel"),
    ]
    """
    | Key | Action |
    | :- | :- |
    | Ctrl+S | Validate and save (comments in the file are kept). |
    | Esc | Close without saving. |
    """

    DEFAULT_CSS = """
    SettingsEditorScreen {
        align: center middle;
    }
    SettingsEditorScreen > Vertical {
        width: 90%;
        height: 90%;
        border: thick $primary;
        background: $surface;
    }
    SettingsEditorScreen .row {
        height: 3;
    }
    SettingsEditorScreen .row Label {
        width: 24;
        padding: 1 1 0 1;
    }
    SettingsEditorScreen .row Input {
        width: 1fr;
    }
    SettingsEditorScreen #settings-error {
        color: $error;
        height: auto;
        padding: 0 1;
    }
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.load_error = ""
        try:
            self.document = settings_file.load_document(path)
        except ConfigError as exc:
            self.document = CommentedMap()
            self.load_error = str(exc)

    def on_mount(self) -> None:
        configure_inputs(self)

    def compose(self) -> ComposeResult:
        values = settings_file.field_values(self.document)
        opts = field_opts(WorkerSettings)
        with Vertical():
            title = Text(f"Settings: {self.path}", style="bold")
            title.append("   Ctrl+S save · Esc cancel · empty = default", style="dim")
            yield Static(title, id="settings-title")
            yield Static(Text(self.load_error), id="settings-error")
            with VerticalScroll():
                for name, opt in opts.items():
                    with Horizontal(classes="row"):
                        yield Label(Text(name))
                        yield Input(
                            values[name],
                            placeholder=opt.help,
                            password=opt.secret,
                            id=f"setting-{name}",
                        )

    def edits(self) -> dict[str, str]:
        """The text of every field."""
        return {
            name: self.query_one(f"#setting-{name}", Input).value
            for name in field_opts(WorkerSettings)
        }

    def action_save(self) -> None:
        error = self.query_one("#settings-error", Static)
        if self.load_error:
            error.update(Text(f"{self.load_error} (fix the file by hand)"))
            return
        document = settings_file.apply_edits(self.document, self.edits())
        try:
            settings_file.save(self.path, document)
        except ConfigError as exc:
            error.update(Text(str(exc)))
            self._focus_field_named_in(str(exc))
            return
        except OSError as exc:
            error.update(Text(f"could not write {self.path}: {exc.strerror}"))
            return
        self.dismiss(True)

    def _focus_field_named_in(self, message: str) -> None:
        for name, opt in field_opts(WorkerSettings).items():
            if f" {name} " in message or opt.env in message:
                self.query_one(f"#setting-{name}", Input).focus()
                return

    def action_cancel(self) -> None:
        self.dismiss(False)
