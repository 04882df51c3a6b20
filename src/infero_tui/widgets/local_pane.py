"""The Local tab: live status of the connector on this machine, its control, config and log."""

from __future__ import annotations

import os
import shlex
import subprocess
from datetime import datetime
from pathlib import Path
from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult, SuspendNotSupported
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import Log, Static

from infero.common.systemd import SystemdUnit, UnitError, UnitState, find_unit
from infero.protocol.status import VersionDoc, WorkerStatusDoc
from infero_tui.client import Action, ClientError
from infero_tui.config import Clock
from infero_tui.local import LocalContext, LogFollower, write_diagnostics
from infero_tui.screens.confirm import ConfirmScreen, action_question
from infero_tui.screens.settings_editor import SettingsEditorScreen
from infero_tui.widgets.status_style import status_text


def _yes_no(flag: bool) -> Text:
    return Text("yes", style="green") if flag else Text("no", style="red")


class LocalPane(Vertical):
    """Status, paths and live log of the local connector, with its actions."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("d", "act('drain')", "Drain"),
        Binding("u", "act('undrain')", "Undrain"),
        Binding("x", "act('shutdown')", "Shutdown"),
        Binding("e", "edit_settings", "Settings"),
        Binding("g", "diagnostics", "Diagnostics"),
        Binding("o", "open_config", "Edit"),
        Binding("l", "open_log", "Log"),
        Binding("S", "start", "Start"),
        Binding("K", "stop", "Stop"),
        Binding("N", "enable", "Enable"),
    ]
    """
    | Key | Action |
    | :- | :- |
    | d / u / x | Drain / undrain / shut down the local connector (confirmed). |
    | e | Edit worker.yaml in the settings form (validated, comments kept). |
    | g | Write a diagnostics file. |
    | o | Open worker.yaml in $EDITOR. |
    | l | Open the log file in $PAGER. |
    | S / K | Start / stop the connector's systemd unit, else a process owned by this console. |
    | N | Enable the connector's systemd unit (start at boot or login). |
    """

    DEFAULT_CSS = """
    LocalPane #local-status {
        height: auto;
        padding: 0 1;
    }
    LocalPane #local-paths {
        height: auto;
        padding: 0 1;
        color: $text-muted;
    }
    LocalPane Log {
        height: 1fr;
        border-top: solid $primary;
    }
    """

    def __init__(
        self,
        context: LocalContext,
        *,
        read_only: bool,
        clock: Clock,
        refresh_interval: float | None,
        id: str | None = None,
    ) -> None:
        super().__init__(id=id)
        self.context = context
        self.read_only = read_only
        self.clock = clock
        self.refresh_interval = refresh_interval
        self.status: WorkerStatusDoc | None = None
        self.version: VersionDoc | None = None
        self._follower = LogFollower(context.log_file)
        self.service: SystemdUnit | None = None
        self.unit_state: UnitState | None = None
        self._unit_busy = False

    def compose(self) -> ComposeResult:
        yield Static(Text("Waiting for the connector…", style="dim"), id="local-status")
        yield Static(self._paths(), id="local-paths")
        yield Log(id="local-log", max_lines=2000, auto_scroll=True)

    def on_mount(self) -> None:
        self.poll_log()
        if self.context.unit:
            self.refresh_unit()
        if self.refresh_interval:
            self.set_interval(self.refresh_interval, self.poll_log)
            if self.context.unit:
                self.set_interval(self.refresh_interval, self.refresh_unit)

    @work(group="local-unit", exit_on_error=False)
    async def refresh_unit(self) -> None:
        """Find the connector's systemd unit (once) and read its state (one call at a time,
        never cancelled half-way, so no systemctl is left behind)."""
        if self._unit_busy:
            return
        self._unit_busy = True
        try:
            if self.service is None and self.context.unit:
                self.service = await find_unit(self.context.unit)
            if self.service is not None:
                self.unit_state = await self.service.state()
                self.query_one("#local-paths", Static).update(self._paths())
        finally:
            self._unit_busy = False

    def poll_log(self) -> None:
        """Append lines written to the log file since the last poll."""
        lines = self._follower.read_new()
        if lines:
            self.query_one(Log).write_lines(lines)

    def _paths(self) -> Text:
        ctx = self.context
        text = Text()
        text.append("config ", style="bold")
        text.append(str(ctx.config_path))
        text.append("  log ", style="bold")
        text.append(str(ctx.log_file))
        text.append("  address ", style="bold")
        text.append(ctx.addr)
        if self.service is not None and self.unit_state is not None:
            text.append("  unit ", style="bold")
            text.append(f"{self.service.label}: {self.unit_state.describe()}")
        elif ctx.process is not None and ctx.process.running:
            text.append(f"  started here (pid {ctx.process.pid})", style="yellow")
        return text

    def show_status(self, status: WorkerStatusDoc | None, error: str = "") -> None:
        """Render the latest `/status`, or why it is missing."""
        self.status = status
        widget = self.query_one("#local-status", Static)
        self.query_one("#local-paths", Static).update(self._paths())
        if status is None:
            widget.update(Text(f"Connector not reachable: {error}", style="red"))
            return
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        table.add_column(style="bold")
        table.add_column()
        name = Text(status.worker_name or status.worker_id or "?")
        table.add_row("State", status_text(status.state), "Name", name)
        table.add_row(
            "Server",
            _yes_no(status.connected_to_server),
            "Backend",
            _yes_no(status.connected_to_backend),
        )
        table.add_row(
            "Jobs",
            Text(f"{status.current_jobs}/{status.max_concurrency}"),
            "Version",
            Text(status.version or "?"),
        )
        table.add_row("Models", Text(", ".join(status.models) or "-"), "", "")
        error_style = "#ff8787" if status.last_error else ""
        table.add_row("Last error", Text(status.last_error or "-", style=error_style), "", "")
        widget.update(table)

    def action_act(self, action: Action) -> None:
        if self.read_only:
            self.notify("Read-only mode: actions are disabled.", severity="warning")
            return
        name = Text(self.status.worker_name if self.status else "the local connector")
        inflight = self.status.current_jobs if self.status else None
        question = action_question(action, name, inflight)

        def confirmed(answer: bool | None) -> None:
            if answer:
                self._send(action)

        self.app.push_screen(ConfirmScreen(question), confirmed)

    @work(group="local-actions", exit_on_error=False)
    async def _send(self, action: Action) -> None:
        try:
            await self.context.client.control(action)
        except ClientError as exc:
            self.notify(str(exc), title="Local connector", severity="error")
            return
        self.notify(f"{action} sent to the local connector", title="Local connector")

    def action_edit_settings(self) -> None:
        if self.read_only:
            self.notify("Read-only mode: settings cannot be saved.", severity="warning")
            return

        def saved(ok: bool | None) -> None:
            if ok:
                self.notify(
                    f"Saved {self.context.config_path}; restart the connector to apply.",
                    title="Settings",
                )

        self.app.push_screen(SettingsEditorScreen(self.context.config_path), saved)

    def action_diagnostics(self) -> None:
        now: datetime = self.clock()
        try:
            path = write_diagnostics(self.context, self.status, self.version, now)
        except OSError as exc:
            self.notify(f"Could not write diagnostics: {exc.strerror}", severity="error")
            return
        self.notify(f"Diagnostics written to {path}", title="Diagnostics")

    def _open(self, env: str, fallback: str, path: Path) -> None:
        command = [*shlex.split(os.environ.get(env) or fallback), str(path)]
        try:
            with self.app.suspend():
                subprocess.run(command, check=False)
        except SuspendNotSupported:
            self.notify(
                f"This terminal cannot hand over to ${env}; open {path}.", severity="warning"
            )
        except OSError as exc:
            self.notify(f"Could not run {command[0]}: {exc.strerror}", severity="error")

    def action_open_config(self) -> None:
        self._open("EDITOR", "vi", self.context.config_path)

    def action_open_log(self) -> None:
        self._open("PAGER", "less", self.context.log_file)

    async def _unit_action(self, verb: str) -> None:
        assert self.service is not None
        try:
            await getattr(self.service, verb)()
        except UnitError as exc:
            self.notify(str(exc), severity="error")
            return
        self.notify(f"systemctl {verb} {self.service.label}: done.", title="Local connector")
        self.refresh_unit()

    @work(group="local-process", exclusive=True, exit_on_error=False)
    async def action_enable(self) -> None:
        if self.read_only or self.service is None:
            self.notify("No systemd unit for this connector.", severity="warning")
            return
        await self._unit_action("enable")

    @work(group="local-process", exclusive=True, exit_on_error=False)
    async def action_start(self) -> None:
        if not self.read_only and self.service is not None:
            await self._unit_action("start")
            return
        process = self.context.process
        if self.read_only or process is None:
            self.notify("Starting a connector is not available here.", severity="warning")
            return
        if not self.context.config_path.is_file():
            self.notify(
                f"{self.context.config_path} does not exist yet: press e to create it.",
                severity="warning",
            )
            return
        try:
            pid = await process.start()
        except OSError as exc:
            self.notify(f"Could not start the connector: {exc.strerror}", severity="error")
            return
        self.notify(f"Connector started (pid {pid}).", title="Local connector")
        self.query_one("#local-paths", Static).update(self._paths())

    @work(group="local-process", exclusive=True, exit_on_error=False)
    async def action_stop(self) -> None:
        if not self.read_only and self.service is not None:
            await self._unit_action("stop")
            return
        process = self.context.process
        if self.read_only or process is None or not process.running:
            self.notify("No connector was started from this console.", severity="warning")
            return
        code = await process.stop()
        self.notify(f"Connector stopped (exit code {code}).", title="Local connector")
        self.query_one("#local-paths", Static).update(self._paths())
