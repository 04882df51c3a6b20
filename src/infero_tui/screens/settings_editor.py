"""Edit the local connector's `worker.yaml`: one field per setting, validated before saving.

Booleans are switches, fixed choices are selects, everything else is a text field whose
placeholder is the default; each setting's help line sits under it. The first field has the
focus, Tab moves without selecting the whole text, and Esc with unsaved edits asks first.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from ruamel.yaml.comments import CommentedMap
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Input, Label, Select, Static, Switch

from infero.common.settings import ConfigError, Opt, field_opts
from infero.worker.settings import WorkerSettings
from infero_tui import settings_file
from infero_tui.screens.confirm import ConfirmScreen
from infero_tui.widgets.inputs import configure_inputs


def choices(name: str) -> tuple[str, ...]:
    """The fixed values a setting takes (a `Literal`), () when it is free text."""
    annotation = WorkerSettings.model_fields[name].annotation
    if typing.get_origin(annotation) is typing.Literal:
        return tuple(str(v) for v in typing.get_args(annotation))
    return ()


def is_switch(name: str) -> bool:
    return WorkerSettings.model_fields[name].annotation is bool


def default_text(name: str) -> str:
    """The default as the editor shows it."""
    value: Any = WorkerSettings.model_fields[name].default
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value) or "none"
    if value is None or value == "":
        return "none"
    return str(value)


def help_line(name: str, opt: Opt) -> Text:
    """`What it does.  default: 60 · MODEL_POLL_INTERVAL`."""
    text = Text(opt.help, style="dim")
    text.append(f"  default: {default_text(name)} · {opt.env}", style="dim italic")
    return text


class SettingsEditorScreen(ModalScreen[bool]):
    """Dismisses with True after a valid save, False when closed without saving."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "save", "Save"),
        Binding("escape", "cancel", "Close"),
    ]
    """
    | Key | Action |
    | :- | :- |
    | Tab / Shift+Tab | Next / previous field. |
    | Space | Flip a switch; open a select. |
    | Ctrl+S | Validate and save (comments in the file are kept). |
    | Esc | Close (asks first when there are unsaved edits). |
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
    SettingsEditorScreen .row Input, SettingsEditorScreen .row Select {
        width: 1fr;
    }
    SettingsEditorScreen .help {
        padding: 0 1 0 25;
        height: auto;
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
        self.initial: dict[str, str] = {}

    def compose(self) -> ComposeResult:
        values = settings_file.field_values(self.document)
        with Vertical():
            title = Text(f"Settings: {self.path}", style="bold")
            title.append("   Ctrl+S save · Esc close · empty = default", style="dim")
            yield Static(title, id="settings-title")
            yield Static(Text(self.load_error), id="settings-error")
            with VerticalScroll():
                for name, opt in field_opts(WorkerSettings).items():
                    with Horizontal(classes="row"):
                        yield Label(Text(name))
                        yield self._field(name, opt, values[name])
                    yield Static(help_line(name, opt), classes="help")

    def _field(self, name: str, opt: Opt, value: str) -> Widget:
        widget_id = f"setting-{name}"
        if is_switch(name):
            on = (value or default_text(name)) == "true"
            return Switch(value=on, id=widget_id)
        options = choices(name)
        if options:
            return Select(
                [(option, option) for option in options],
                value=value if value in options else Select.NULL,
                prompt=f"default ({default_text(name)})",
                id=widget_id,
            )
        return Input(
            value,
            placeholder=f"default: {default_text(name)}",
            password=opt.secret,
            select_on_focus=False,
            id=widget_id,
        )

    def on_mount(self) -> None:
        configure_inputs(self)
        self.initial = self.edits()
        fields = list(self.query(".row > Input, .row > Switch, .row > Select"))
        if fields:
            fields[0].focus()

    def edits(self) -> dict[str, str]:
        """The text of every field ("" = not set in the file: the default applies)."""
        values = settings_file.field_values(self.document)
        out: dict[str, str] = {}
        for name in field_opts(WorkerSettings):
            widget = self.query_one(f"#setting-{name}")
            if isinstance(widget, Switch):
                text = "true" if widget.value else "false"
                untouched = not values[name] and text == default_text(name)
                out[name] = "" if untouched else text
            elif isinstance(widget, Select):
                out[name] = "" if widget.value is Select.NULL else str(widget.value)
            else:
                assert isinstance(widget, Input)
                out[name] = widget.value
        return out

    @property
    def dirty(self) -> bool:
        """Whether any field differs from the file."""
        return self.edits() != self.initial

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
                self.query_one(f"#setting-{name}").focus()
                return

    def action_cancel(self) -> None:
        if not self.dirty:
            self.dismiss(False)
            return

        def answered(discard: bool | None) -> None:
            if discard:
                self.dismiss(False)

        question = Text(f"Discard the unsaved changes to {self.path.name}?")
        self.app.push_screen(ConfirmScreen(question), answered)
