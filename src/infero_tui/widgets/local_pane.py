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
from infero_tui.commands import PaletteCommand
from infero_tui.config import Clock
from infero_tui.format import printable
from infero_tui.local import LocalContext, LogFollower, tail_lines, write_diagnostics
from infero_tui.screens.confirm import ConfirmScreen, action_question
from infero_tui.screens.settings_editor import SettingsEditorScreen
from infero_tui.widgets.status_style import status_text

EXIT_LOG_LINES = 5
"""Log lines shown when a connector started here exits by itself."""


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
        Binding("N", "enable", "Enable", show=False),
        Binding("end,G", "log_tail", "Log end", show=False),
    ]
    """
    | Key | Action |
    | :- | :- |
    | d / u / x | Drain / undrain / shut down the local connector (confirmed). |
    | e | Edit worker.yaml in the settings form (validated, comments kept). |
    | g | Write a diagnostics file. |
    | o | Open worker.yaml in $EDITOR. |
    | l | Open the log file in $PAGER (at its end). |
    | S / K | Start / stop the connector's systemd unit, else a process owned by this console. |
    | N | Enable the connector's systemd unit (start at boot or login). |
    | G, End | Back to the end of the log. |
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
        self.exited = ""
        """How the last connector started here ended, when it ended by itself."""
        self._stopping = False
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
        for label, value in (
            ("config ", str(ctx.config_path)),
            ("  token ", str(ctx.token_file)),
            ("  log ", str(ctx.log_file)),
            ("  address ", ctx.addr),
        ):
            text.append(label, style="bold")
            text.append(value)
        if self.service is not None and self.unit_state is not None:
            text.append("  unit ", style="bold")
            text.append(f"{self.service.label}: {self.unit_state.describe()}")
        elif ctx.runner is not None and ctx.runner.running:
            text.append(f"  started here ({ctx.runner.describe()})", style="yellow")
        for mismatch in ctx.mismatches:
            text.append(f"\nmismatch: {mismatch}", style="bold #ffd75f")
        if self.exited:
            text.append(f"\n{self.exited}", style="bold #ff8787")
        return text

    def show_status(self, status: WorkerStatusDoc | None, error: str = "") -> None:
        """Render the latest `/status`, or why it is missing."""
        self.status = status
        widget = self.query_one("#local-status", Static)
        if status is not None and self.context.adopt(status):
            self._follower = LogFollower(self.context.log_file)
            self.query_one(Log).clear()
            self.poll_log()
        self.query_one("#local-paths", Static).update(self._paths())
        if status is None:
            widget.update(Text(f"Connector not reachable: {error}", style="red"))
            return
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        table.add_column(style="bold")
        table.add_column()
        name = Text(printable(status.worker_name or status.worker_id or "?"))
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
        # while it reconnects the last error is the reason, not a fault of its own
        reconnecting = status.state in ("error", "connecting")
        error_style = "#ff8787" if status.last_error and not reconnecting else "dim"
        label = "Last link error" if reconnecting else "Last error"
        table.add_row(label, Text(status.last_error or "-", style=error_style), "", "")
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

    def _open(self, env: str, fallback: str, path: Path, *, at_end: bool = False) -> None:
        program = shlex.split(os.environ.get(env) or fallback)
        if at_end and Path(program[0]).name == "less":
            program.append("+G")
        command = [*program, str(path)]
        try:
            with self.app.suspend():
                subprocess.run(command, check=False)
            self.action_log_tail()
        except SuspendNotSupported:
            self.notify(
                f"This terminal cannot hand over to ${env}; open {path}.", severity="warning"
            )
        except OSError as exc:
            self.notify(f"Could not run {command[0]}: {exc.strerror}", severity="error")

    def action_open_config(self) -> None:
        self._open("EDITOR", "vi", self.context.config_path)

    def action_open_log(self) -> None:
        self._open("PAGER", "less", self.context.log_file, at_end=True)

    def action_log_tail(self) -> None:
        """Follow the end of the log again."""
        log = self.query_one(Log)
        log.auto_scroll = True
        log.scroll_end(animate=False, immediate=True)

    def already_running(self) -> str | None:
        """Why a start would be a second connector, or None."""
        runner = self.context.runner
        if runner is not None and runner.running:
            return f"It is already running ({runner.describe()})."
        status = self.status
        if status is not None and status.state not in ("disconnected", "terminating"):
            return f"A connector already answers on {self.context.addr} ({status.state})."
        return None

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
        runner = self.context.runner
        if self.read_only or runner is None:
            self.notify("Starting a connector is not available here.", severity="warning")
            return
        running = self.already_running()
        if running is not None:
            self.notify(f"Not started: {running}", severity="warning")
            return
        if not self.context.config_path.is_file():
            self.notify(
                f"{self.context.config_path} does not exist yet: press e to create it.",
                severity="warning",
            )
            return
        try:
            what = await runner.start()
        except OSError as exc:
            self.notify(f"Could not start the connector: {exc.strerror}", severity="error")
            return
        self.exited = ""
        self._stopping = False
        self.notify(f"Connector started ({what}).", title="Local connector")
        self.query_one("#local-paths", Static).update(self._paths())
        self.watch_child()

    @work(group="local-child", exclusive=True, exit_on_error=False)
    async def watch_child(self) -> None:
        """Report a started connector that exits without being asked to."""
        runner = self.context.runner
        assert runner is not None
        code = await runner.wait()
        if self._stopping:
            return
        lines = tail_lines(self.context.log_file, EXIT_LOG_LINES)
        self.exited = f"The connector started here exited with status {code}."
        detail = "\n".join(lines) if lines else "(no log lines)"
        self.notify(f"{self.exited}\n{detail}", title="Local connector", severity="error")
        self.query_one("#local-paths", Static).update(self._paths())

    def action_stop(self) -> None:
        if not self.read_only and self.service is not None:
            self.run_worker(self._unit_action("stop"), group="local-process", exclusive=True)
            return
        runner = self.context.runner
        if self.read_only or runner is None or not runner.running:
            self.notify("No connector was started from this console.", severity="warning")
            return
        question = Text(f"Stop the connector started here ({runner.describe()})? ")
        question.append("It drains first (SIGTERM).")

        def confirmed(answer: bool | None) -> None:
            if answer:
                self._stop()

        self.app.push_screen(ConfirmScreen(question), confirmed)

    @work(group="local-process", exclusive=True, exit_on_error=False)
    async def _stop(self) -> None:
        runner = self.context.runner
        assert runner is not None
        self._stopping = True
        code = await runner.stop()
        self.notify(f"Connector stopped (exit code {code}).", title="Local connector")
        self.query_one("#local-paths", Static).update(self._paths())

    def palette_commands(self) -> list[PaletteCommand]:
        """The Local tab's actions by name."""
        out: list[PaletteCommand] = [
            ("Local: drain the connector", lambda: self.action_act("drain"), "d"),
            ("Local: undrain the connector", lambda: self.action_act("undrain"), "u"),
            ("Local: shut down the connector", lambda: self.action_act("shutdown"), "x"),
            ("Local: settings (worker.yaml form)", self.action_edit_settings, "e"),
            ("Local: write diagnostics", self.action_diagnostics, "g"),
            ("Local: open worker.yaml in $EDITOR", self.action_open_config, "o"),
            ("Local: open the log in $PAGER", self.action_open_log, "l"),
        ]
        if self.context.runner is not None or self.context.unit:
            out.append(("Local: start the connector", self.action_start, "S"))
            out.append(("Local: stop the connector", self.action_stop, "K"))
        if self.context.unit:
            out.append(("Local: enable the connector's systemd unit", self.action_enable, "N"))
        return out
