"""The console application and its factory (`make_app`), as `infero tui` builds it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual.app import App
from textual.binding import Binding, BindingType

from infero_tui.commands import ConsoleCommands
from infero_tui.config import Clock, ConsoleConfig
from infero_tui.feed import FleetFeed
from infero_tui.local import LocalContext
from infero_tui.screens.confirm import ConfirmScreen
from infero_tui.screens.detail import DetailScreen
from infero_tui.screens.help import HelpScreen, HelpSection
from infero_tui.screens.main import ACTION_KEYS, FILTER_KEYS, TAB_KEYS, MainScreen
from infero_tui.screens.settings_editor import SettingsEditorScreen
from infero_tui.widgets.fleet_table import FleetTable
from infero_tui.widgets.local_pane import LocalPane


def utc_now() -> datetime:
    """The real clock (tests inject a fixed one)."""
    return datetime.now(UTC)


class InferoConsole(App[None]):
    """`infero tui`: the fleet (with a server) and/or the local connector (with --worker)."""

    TITLE = "infero"
    CSS_PATH = Path(__file__).parent / "styles" / "app.tcss"
    COMMANDS = App.COMMANDS | {ConsoleCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "request_quit", "Quit"),
    ]
    """
    | Key | Action |
    | :- | :- |
    | ? | Help: every key. |
    | q | Quit (asks first while a connector started here is running). |
    | Ctrl+P | Command palette (every action by name). |
    """

    def __init__(
        self,
        *,
        fleet: FleetFeed | None = None,
        local: LocalContext | None = None,
        config: ConsoleConfig | None = None,
        clock: Clock = utc_now,
    ) -> None:
        super().__init__()
        self.fleet = fleet
        self.local = local
        self.config = config = config or ConsoleConfig()
        self.clock = clock
        self.animation_level = config.animation_level
        self.theme = config.theme

    def on_mount(self) -> None:
        self.push_screen(
            MainScreen(fleet=self.fleet, local=self.local, config=self.config, clock=self.clock)
        )

    async def on_unmount(self) -> None:
        """Stop a connector started from here and close the network clients."""
        if self.local is not None:
            if self.local.runner is not None:
                await self.local.runner.stop()
            await self.local.client.aclose()
        main = next((s for s in self.screen_stack if isinstance(s, MainScreen)), None)
        fleet = main.fleet if main is not None else self.fleet
        if fleet is not None:
            await fleet.aclose()

    def action_request_quit(self) -> None:
        """Quit; with a connector started from this console still running, ask first."""
        runner = self.local.runner if self.local is not None else None
        if runner is None or not runner.running:
            self.exit()
            return
        question = Text(f"A connector started here is running ({runner.describe()}). ")
        question.append("Stop it and quit?")

        def answered(answer: bool | None) -> None:
            if answer:
                self.exit()

        self.push_screen(ConfirmScreen(question), answered)

    def help_sections(self) -> list[HelpSection]:
        """Every binding, grouped by where it works."""
        sections: list[HelpSection] = [
            ("Everywhere", [*self.BINDINGS, Binding("ctrl+p", "", "Command palette")]),
            ("Tabs", TAB_KEYS),
        ]
        if self.fleet is not None:
            sections.append(("Tables", [*FleetTable.BINDINGS, *FILTER_KEYS]))
            sections.append(("Workers and MCP tabs", ACTION_KEYS))
            sections.append(("Detail view", DetailScreen.BINDINGS))
        if self.local is not None:
            sections.append(("Local tab", LocalPane.BINDINGS))
            sections.append(("Settings editor", SettingsEditorScreen.BINDINGS))
        sections.append(("Confirmation", ConfirmScreen.BINDINGS))
        return sections

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.help_sections()))


def make_app(
    *,
    fleet: FleetFeed | None = None,
    local: LocalContext | None = None,
    config: ConsoleConfig | None = None,
    clock: Clock = utc_now,
) -> InferoConsole:
    """Build the console; `infero tui` and the tests both come through here."""
    if fleet is None and local is None:
        raise ValueError("the console needs a server (fleet feed) or a local connector")
    return InferoConsole(fleet=fleet, local=local, config=config, clock=clock)
