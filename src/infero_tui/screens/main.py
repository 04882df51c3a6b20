"""The main screen: header, one tab per view, the `:` command line, footer; owns the feeds.

Snapshots are drawn at a bounded rate and only the latest one: the stream worker parks each
snapshot in one slot and asks for a draw only when none is pending, so a console that falls
behind skips stale states instead of queueing them. Draws and the header's timer run in the
app's message loop, not this screen's: while a detail view covers this screen, a message
handled here would make Textual repaint the whole detail view.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import partial
from typing import ClassVar

from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Input, TabbedContent, TabPane
from textual.worker import Worker, WorkerState

from infero.common.backoff import Backoff
from infero.common.process import settle_heap
from infero.protocol.state import McpClientInfo, StateSnapshot, WorkerInfo
from infero_tui.client import ACTIONS, Action, AuthRefused, ClientError, NotFound
from infero_tui.cmdline import COMMANDS, CommandError, parse, resolve
from infero_tui.commands import PaletteCommand
from infero_tui.config import ConsoleConfig
from infero_tui.connection import Connection
from infero_tui.feed import FleetFeed
from infero_tui.format import printable
from infero_tui.history import ErrorHistory
from infero_tui.local import LocalContext
from infero_tui.messages import (
    ActionRequested,
    AuthRequired,
    DetailRequested,
    FeedLost,
    Kind,
    LocalLost,
    LocalStatusReceived,
)
from infero_tui.rates import RateTracker
from infero_tui.screens.api_key import ApiKeyScreen
from infero_tui.screens.confirm import ConfirmScreen, action_question
from infero_tui.screens.detail import DetailScreen
from infero_tui.tables import TableContext
from infero_tui.widgets.fleet_header import FleetHeader
from infero_tui.widgets.footer import KeyFooter
from infero_tui.widgets.inputs import configure_inputs
from infero_tui.widgets.local_pane import LocalPane
from infero_tui.widgets.server_pane import ServerPane
from infero_tui.widgets.status_style import status_word
from infero_tui.widgets.table_pane import (
    ActionPane,
    InstancesPane,
    McpPane,
    ModelsPane,
    TablePane,
    WorkersPane,
)

logger = logging.getLogger(__name__)

TABS: tuple[tuple[str, str], ...] = (
    ("workers", "1 Workers"),
    ("models", "2 Models"),
    ("mcp", "3 MCP"),
    ("server", "4 Server"),
    ("local", "5 Local"),
    ("instances", "6 Instances"),
)

FOCUS_IN_TAB = {
    "workers": "#workers-table",
    "models": "#models-table",
    "mcp": "#mcp-relays",
    "server": "#server-pane",
    "local": "#local-log",
    "instances": "#instances-table",
}


TAB_KEYS: list[BindingType] = [
    *(
        Binding(str(index), f"show_tab('{tab}')", label.split()[1], show=False)
        for index, (tab, label) in enumerate(TABS, start=1)
    ),
    Binding("colon", "command_line", "Command", key_display=":"),
    Binding("a", "api_key", "API key", show=False),
]
"""
| Key | Action |
| :- | :- |
| 1-6 | Workers, Models, MCP, Server, Local, Instances tab. |
| : | Command line: :workers, :mcp, :drain NAME, :undrain NAME, :ctx URL, :q (see docs). |
| a | Enter another API key and reconnect. |
"""

FILTER_KEYS: list[BindingType] = [Binding("slash", "filter", "Filter", key_display="/")]
"""
| Key | Action |
| :- | :- |
| / | Filter the rows of the tab (Enter: back to the table, Esc: clear). |
"""

ACTION_KEYS: list[BindingType] = [
    Binding("d", "act('drain')", "Drain"),
    Binding("u", "act('undrain')", "Undrain"),
    Binding("x", "act('shutdown')", "Shutdown"),
]
"""
| Key | Action |
| :- | :- |
| d | Drain the selected row: finish in-flight work, take nothing new (confirmed). |
| u | Undrain: take work again. |
| x | Shut down: drain, then exit (confirmed). |
"""


class MainScreen(Screen[None]):
    """Fleet tabs (with `--server` or `--replay`) and the Local tab (with `--worker`).

    Every fleet tab has the same keys (the footer stays as it is when the tab changes): the
    screen dispatches them to the active tab, and `check_action` greys out those that do not
    apply there (no actions on the Models and Server tabs, on a gone row, or when the console
    cannot act). The Local tab's own keys take precedence on that tab.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open", "Detail"),  # the table's own Enter; greyed where none is
        *FILTER_KEYS,
        *ACTION_KEYS,
        *TAB_KEYS,
    ]

    DEFAULT_CSS = """
    MainScreen #command-line {
        dock: bottom;
        height: 1;
        border: none;
        padding: 0 1;
        display: none;
        background: $boost;
    }
    MainScreen #command-line.-shown {
        display: block;
    }
    """

    def __init__(
        self,
        *,
        fleet: FleetFeed | None,
        local: LocalContext | None,
        config: ConsoleConfig,
        clock: Callable[[], datetime],
    ) -> None:
        super().__init__()
        self.fleet = fleet
        self.local = local
        self.config = config
        self.clock = clock
        self.snapshot: StateSnapshot | None = None
        self.rates = RateTracker()
        self.errors = ErrorHistory()
        self.ctx = TableContext(rates=self.rates)
        if fleet is not None:
            self.ctx.live_heartbeats = fleet.live_heartbeats
        self.connection = (
            Connection(fleet.target, replay=fleet.replay) if fleet is not None else None
        )
        self._panes: dict[str, TablePane | None] = {}
        self._latest: StateSnapshot | None = None
        self._draw_pending = False
        self._last_draw = 0.0
        self.draws = 0
        """Snapshots drawn (fewer than received when they come faster than the redraw rate)."""
        self._tabs_stale = False
        """A snapshot was drawn while a detail view hid the tabs."""

    # ---- layout ---------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield FleetHeader(id="header")
        debounce = self.config.filter_debounce
        with TabbedContent(id="tabs"):
            if self.fleet is not None:
                with TabPane(TABS[0][1], id="workers"):
                    yield WorkersPane(self.ctx, debounce=debounce, id="workers-pane")
                with TabPane(TABS[1][1], id="models"):
                    yield ModelsPane(self.ctx, debounce=debounce, id="models-pane")
                with TabPane(TABS[2][1], id="mcp"):
                    yield McpPane(self.ctx, debounce=debounce, id="mcp-pane")
                with TabPane(TABS[3][1], id="server"):
                    yield ServerPane(id="server-pane")
            if self.local is not None:
                with TabPane(TABS[4][1], id="local"):
                    yield LocalPane(
                        self.local,
                        read_only=self.config.read_only,
                        clock=self.clock,
                        refresh_interval=self.config.refresh_interval,
                        id="local-pane",
                    )
            if self.fleet is not None:  # after Local: its key (5) predates this tab
                with TabPane(TABS[5][1], id="instances"):
                    yield InstancesPane(self.ctx, debounce=debounce, id="instances-pane")
        yield Input(placeholder=":command (Esc: cancel)", id="command-line")
        yield KeyFooter()

    def on_mount(self) -> None:
        configure_inputs(self)
        self.redraw_header()
        self._focus_tab(self.query_one(TabbedContent).active)
        if self.fleet is not None:
            self.follow_fleet()
        if self.local is not None:
            self.poll_local()
        if self.config.refresh_interval:
            self.app.set_interval(self.config.refresh_interval, self.redraw_header)

    # ---- modes ----------------------------------------------------------------------------

    def badges(self) -> tuple[str, ...]:
        """READ-ONLY, REPLAY, NO OPERATOR KEY: what the console will not do."""
        out: list[str] = []
        if self.config.read_only:
            out.append("READ-ONLY")
        if self.fleet is not None and self.fleet.replay:
            out.append("REPLAY")
        elif self.fleet is not None and not self.fleet.can_act and not self.config.read_only:
            out.append("NO OPERATOR KEY")
        return tuple(out)

    def why_not_act(self) -> str | None:
        """Why fleet actions are unavailable, or None when they can be sent."""
        if self.config.read_only:
            return "Read-only mode: actions are disabled."
        if self.fleet is None:
            return "No server: fleet actions need --server."
        if self.fleet.replay:
            return "Replay: recorded data, nothing is sent."
        if not self.fleet.can_act:
            return "No operator key: start with --operator-key (or OPERATOR_KEY) to act."
        return None

    # ---- feeds ----------------------------------------------------------------------------

    @work(exclusive=True, group="fleet", exit_on_error=False)
    async def follow_fleet(self) -> None:
        """Follow the state stream, reconnecting with backoff until a 401 asks for a key."""
        assert self.fleet is not None
        fleet = self.fleet
        backoff = Backoff(self.config.reconnect_schedule, self.config.reconnect_ceiling)
        attempt = 0
        while True:
            try:
                async for snapshot in fleet.snapshots():
                    backoff.reset()
                    attempt = 0
                    self._park(snapshot)
            except AuthRefused as exc:
                self.post_message(AuthRequired(str(exc)))
                return
            except ClientError as exc:
                attempt += 1
                delay = backoff.next_delay()
                self.post_message(FeedLost(str(exc), exc.cause, attempt, delay))
                await asyncio.sleep(delay)

    def _park(self, snapshot: StateSnapshot) -> None:
        """Count its rates, keep it as the newest; ask for one draw if none is pending."""
        if self.connection is not None:  # now, not when drawn: a loss reported after it wins
            self.connection.received(self.clock())
        self.rates.add(snapshot)  # counters need every snapshot; drawing only the latest
        self.errors.add(snapshot)
        self._latest = snapshot
        if not self._draw_pending:
            self._draw_pending = True
            self.app.call_later(self._snapshot_ready)

    @work(exclusive=True, group="local", exit_on_error=False)
    async def poll_local(self) -> None:
        """Read `/status` now and then every refresh interval (once when it is None)."""
        assert self.local is not None
        pane = self.query_one(LocalPane)
        while True:
            try:
                pane.version = pane.version or await self.local.client.version()
                self.post_message(LocalStatusReceived(await self.local.client.status()))
            except ClientError as exc:
                self.post_message(LocalLost(str(exc)))
            if not self.config.refresh_interval:
                return
            await asyncio.sleep(self.config.refresh_interval)

    @on(Worker.StateChanged)
    def _worker_failed(self, event: Worker.StateChanged) -> None:
        """The one place where an unexpected error of a background task surfaces."""
        if event.state is not WorkerState.ERROR:
            return
        error = event.worker.error
        logger.error("console task %s failed", event.worker.name, exc_info=error)
        if event.worker.group == "fleet" and self.connection is not None:
            self.connection.state = "stopped"
            self.connection.cause = f"stream stopped ({type(error).__name__}); restart the console"
            self.redraw_header()
        self.notify(f"{event.worker.name}: {error}", title="Internal error", severity="error")

    # ---- drawing --------------------------------------------------------------------------

    def _snapshot_ready(self) -> None:
        wait = self.config.min_redraw_interval - (time.monotonic() - self._last_draw)
        if wait > 0:
            self.app.set_timer(wait, self.draw)
        else:
            self.draw()

    def draw(self) -> None:
        """Draw the newest parked snapshot everywhere it shows."""
        self._draw_pending = False
        snapshot = self._latest
        if snapshot is None or not self.app.is_running:  # an app timer may fire while it exits
            return
        self._last_draw = time.monotonic()
        self.draws += 1
        if self.draws == 1 and self.config.settle_heap:
            settle_heap()
        self.snapshot = snapshot
        ctx = self.ctx
        ctx.now = snapshot.server.now
        ctx.instances = bool(snapshot.server.instances)
        ctx.this_instance = snapshot.server.instance
        ctx.degraded = snapshot.server.degraded
        ctx.note(snapshot.workers, snapshot.mcp.clients)
        if self.covered():
            self._tabs_stale = True
        else:
            self._draw_tabs(snapshot)
        for screen in self.app.screen_stack:
            if isinstance(screen, DetailScreen):
                screen.redraw()
        self.redraw_header()

    def _draw_tabs(self, snapshot: StateSnapshot) -> None:
        self._tabs_stale = False
        self.query_one(WorkersPane).show(snapshot.workers)
        self.query_one(ModelsPane).show(snapshot.models)
        self.query_one(McpPane).show(snapshot.mcp.clients, snapshot.mcp.sessions)
        self.query_one(ServerPane).show(snapshot, self.rates)
        self.query_one(InstancesPane).show(snapshot.server.instances)

    def covered(self) -> bool:
        """Whether a detail view hides this screen: its tabs then wait for it to close (Textual
        repaints the screen on top wherever the one below it changes)."""
        return any(isinstance(screen, DetailScreen) for screen in self.app.screen_stack)

    def on_screen_resume(self) -> None:
        if self._tabs_stale and self.snapshot is not None:
            self._draw_tabs(self.snapshot)
        self.redraw_header()  # its header, too, waited while covered

    @on(FeedLost)
    def _lost(self, message: FeedLost) -> None:
        if self.connection is not None:
            self.connection.failed(self.clock(), message.cause, message.attempt, message.retry_in)
        self.redraw_header()

    @on(AuthRequired)
    def _auth(self, message: AuthRequired) -> None:
        if self.connection is not None:
            self.connection.refused("API key refused")
        self.redraw_header()
        self.ask_for_key(message.reason)

    def action_api_key(self) -> None:
        if self.fleet is not None and not self.fleet.replay:
            self.ask_for_key("Enter the API key to use from now on.")

    def ask_for_key(self, reason: str) -> None:
        """Prompt for an API key; a non-empty answer restarts the stream with it."""

        def entered(key: str | None) -> None:
            if key and self.fleet is not None:
                self.fleet.set_api_key(key)
                if self.connection is not None:
                    self.connection.state = "connecting"
                self.redraw_header()
                self.follow_fleet()

        self.app.push_screen(ApiKeyScreen(reason), entered)

    @on(LocalStatusReceived)
    def _local_status(self, message: LocalStatusReceived) -> None:
        self.query_one(LocalPane).show_status(message.status)
        self.redraw_header()

    @on(LocalLost)
    def _local_lost(self, message: LocalLost) -> None:
        self.query_one(LocalPane).show_status(None, message.reason)
        self.redraw_header()

    def redraw_header(self) -> None:
        """Redraw the headers (the refresh timer calls this so ages and retries count)."""
        if not self.app.is_running:
            return
        local = ""
        if self.fleet is None:
            status = self.query_one(LocalPane).status if self.local else None
            local = f"local connector: {status_word(status.state) if status else 'unreachable'}"
        covered = self.covered()
        for screen in self.app.screen_stack:
            if isinstance(screen, DetailScreen) or (isinstance(screen, MainScreen) and not covered):
                for header in screen.query(FleetHeader):
                    header.show(
                        self.snapshot,
                        connection=self.connection,
                        now=self.clock(),
                        rates=self.rates if self.snapshot else None,
                        badges=self.badges(),
                        local=local,
                    )

    # ---- actions --------------------------------------------------------------------------

    def worker(self, worker_id: str) -> WorkerInfo | None:
        """The worker with this id in the latest snapshot."""
        if self.snapshot is None:
            return None
        return next((w for w in self.snapshot.workers if w.id == worker_id), None)

    def relay(self, relay_id: str) -> McpClientInfo | None:
        if self.snapshot is None:
            return None
        return next((r for r in self.snapshot.mcp.clients if r.id == relay_id), None)

    @on(ActionRequested)
    def _action_requested(self, message: ActionRequested) -> None:
        self.request_action(message.kind, message.key, message.action)

    @on(DetailRequested)
    def _detail_requested(self, message: DetailRequested) -> None:
        self.open_detail(message.kind, message.key)

    def open_detail(self, kind: Kind, key: str) -> None:
        """Show the full-screen detail; one screen per kind is built once, then reused (a new
        screen per Enter would cost a whole compose)."""
        name = f"detail-{kind}"
        if self.app.is_screen_installed(name):
            screen = self.app.get_screen(name)
            assert isinstance(screen, DetailScreen)
            screen.key = key
            if screen.is_mounted:
                screen.redraw()
        else:
            self.app.install_screen(DetailScreen(kind, key, self, self.clock), name)
        self.app.push_screen(name)

    def request_action(self, kind: Kind, key: str, action: Action) -> None:
        """Confirm, then send one action for a connector or relay (never when unavailable)."""
        why_not = self.why_not_act()
        if why_not is not None:
            self.notify(why_not, severity="warning")
            return
        entity = self.worker(key) if kind == "worker" else self.relay(key)
        if entity is None or kind not in ("worker", "relay"):
            self.notify("That connector is no longer known.", severity="warning")
            return
        if entity.status == "gone":
            self.notify(f"{entity.name or key} is gone: nothing to steer.", severity="warning")
            return
        what = "worker" if kind == "worker" else "MCP relay"
        target = Text(f"{what} ")
        target.append(printable(entity.name or entity.id))
        if entity.name and entity.name != entity.id:
            target.append(f" ({entity.id})", style="dim")
        question = action_question(action, target, entity.inflight)
        name = entity.name or entity.id

        def confirmed(answer: bool | None) -> None:
            if answer:
                self.send_action(kind, key, name, action)

        self.app.push_screen(ConfirmScreen(question), confirmed)

    @work(group="actions", exit_on_error=False)
    async def send_action(self, kind: Kind, key: str, name: str, action: Action) -> None:
        """Send through the fleet feed; the outcome is a notification."""
        assert self.fleet is not None
        try:
            await self.fleet.control(key, action, "relay" if kind == "relay" else "worker")
        except AuthRefused:
            self.notify(
                "The server refused the operator key (--operator-key / OPERATOR_KEY).",
                title=f"{action} {name}",
                severity="error",
            )
            return
        except NotFound:
            self.notify(f"The server no longer knows {name}.", severity="error")
            return
        except ClientError as exc:
            self.notify(str(exc), title=f"{action} {name}", severity="error")
            return
        self.notify(f"{action} accepted for {name}", title="Fleet")

    # ---- tabs -----------------------------------------------------------------------------

    def action_show_tab(self, tab: str) -> None:
        tabs = self.query_one(TabbedContent)
        if tabs.query(f"TabPane#{tab}"):
            tabs.active = tab
            self._focus_tab(tab)
        else:
            self.notify(f"No {tab} tab in this session.", severity="warning")

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id:
            self._focus_tab(event.pane.id)

    def _focus_tab(self, tab: str) -> None:
        """Put the focus in the tab's main widget so its keys (footer) apply."""
        target = FOCUS_IN_TAB.get(tab)
        if target is not None:
            for widget in self.query(target):
                self.set_focus(widget)  # now, so a later tab switch is not undone by it
                return

    def active_pane(self) -> TablePane | None:
        """The tables of the active tab (None on the Server and Local tabs)."""
        tabs = self.query_one(TabbedContent)
        tab = tabs.active
        if tab not in self._panes:
            panes = list(tabs.query(f"TabPane#{tab} TablePane").results(TablePane))
            self._panes[tab] = panes[0] if panes else None
        return self._panes[tab]

    # ---- the tabs' keys -------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Table keys apply on tabs with tables; actions on a live row when the console can
        act (None: shown greyed out). Neither is shown on the Local tab nor while typing."""
        if action not in ("open", "filter", "act"):
            return True
        if isinstance(self.focused, Input):
            return False  # typing: the keys are letters (a footer line of "/" would be wrong)
        if self.fleet is None or self.query_one(TabbedContent).active == "local":
            return False  # the Local tab has keys of its own
        pane = self.active_pane()
        if action != "act":
            return True if pane is not None else None
        if not isinstance(pane, ActionPane) or self.why_not_act() is not None:
            return None
        return True if pane.selected_is_live() else None

    def action_open(self) -> None:
        pane = self.active_pane()
        if pane is not None:
            pane.table.action_open()

    def action_filter(self) -> None:
        pane = self.active_pane()
        if pane is not None:
            pane.action_filter()

    def action_act(self, action: Action) -> None:
        pane = self.active_pane()
        if isinstance(pane, ActionPane):
            pane.action_act(action)

    # ---- the command line -----------------------------------------------------------------

    def action_command_line(self) -> None:
        line = self.query_one("#command-line", Input)
        line.value = ""
        line.add_class("-shown")
        line.focus()

    def _close_command_line(self) -> None:
        line = self.query_one("#command-line", Input)
        line.remove_class("-shown")
        self._focus_tab(self.query_one(TabbedContent).active)

    def on_key(self, event: events.Key) -> None:
        if event.key == "escape" and self.query_one("#command-line", Input).has_focus:
            event.stop()
            self._close_command_line()

    @on(Input.Submitted, "#command-line")
    def _command_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.query_one("#command-line", Input).remove_class("-shown")
        try:
            switches_tab = parse(event.value).verb == "tab"
        except CommandError:
            switches_tab = False
        if not switches_tab:  # a tab switch focuses the new tab (focusing the old one undoes it)
            self._focus_tab(self.query_one(TabbedContent).active)
        self.run_command(event.value)

    def run_command(self, line: str) -> None:
        """Carry out one `:` command line."""

        try:
            command = parse(line)
            if command.verb == "tab":
                self.action_show_tab(command.arg)
            elif command.verb == "quit":
                self.app.action_request_quit()  # type: ignore[attr-defined]
            elif command.verb == "help":
                self.app.action_help()  # type: ignore[attr-defined]
            elif command.verb == "ctx":
                self.switch_server(command.arg)
            else:
                assert command.action is not None
                kind, key, _ = resolve(self.snapshot, command.arg)
                self.request_action(kind, key, command.action)
        except CommandError as exc:
            self.notify(str(exc), title="Command", severity="warning")

    def switch_server(self, url: str) -> None:
        """`:ctx URL`: watch another server with the same keys."""
        if self.fleet is None:
            raise CommandError("no server in this session (start with --server)")
        try:
            fleet = self.fleet.with_target(url)
        except ClientError as exc:
            raise CommandError(str(exc)) from None
        old = self.fleet
        if fleet is not old:
            self.run_worker(old.aclose(), group="close", exit_on_error=False)
        self.fleet = fleet
        self.connection = Connection(fleet.target, replay=fleet.replay)
        self.ctx.live_heartbeats = fleet.live_heartbeats
        self.snapshot = self._latest = None
        self.rates = self.ctx.rates = RateTracker()
        self.redraw_header()
        self.follow_fleet()
        self.notify(f"Watching {fleet.target}", title="Server")

    # ---- the palette ----------------------------------------------------------------------

    def palette_fixed(self) -> list[PaletteCommand]:
        """Tabs, command-line verbs, local actions and settings."""
        out: list[PaletteCommand] = []
        tabs = self.query_one(TabbedContent)
        for tab, label in TABS:
            if tabs.query(f"TabPane#{tab}"):
                out.append((f"Show {label.split()[1]}", partial(self.action_show_tab, tab), "tab"))
        out.append(("Command line (:)", self.action_command_line, " ".join(COMMANDS)))
        if self.fleet is not None and not self.fleet.replay:
            out.append(("Switch server (:ctx URL)", self.action_command_line, "same keys"))
            out.append(("Enter another API key", self.action_api_key, "reconnects"))
        pane = self.active_pane()
        if pane is not None:
            out.append(("Filter rows (/)", pane.action_filter, "this tab"))
        if self.local is not None:
            out.extend(self.query_one(LocalPane).palette_commands())
        out.append(("Help: every key (?)", self.app.action_help, ""))  # type: ignore[attr-defined]
        out.append(("Quit (q)", self.app.action_request_quit, ""))  # type: ignore[attr-defined]
        return out

    def palette_rows(self) -> Iterator[PaletteCommand]:
        """Open and act on every live connector and relay, generated on demand."""
        snapshot = self.snapshot
        if snapshot is None:
            return
        can_act = self.why_not_act() is None
        twins = self.ctx.duplicate_names
        for worker in snapshot.workers:
            label = worker.name or worker.id
            if label in twins:
                label = f"{label} ({worker.id})"
            yield (f"Open worker {label}", partial(self.open_detail, "worker", worker.id), "")
            if can_act and worker.status != "gone":
                for action in ACTIONS:
                    yield (
                        f"{action.capitalize()} worker {label}",
                        partial(self.request_action, "worker", worker.id, action),
                        f"{status_word(worker.status)}, {worker.inflight} in flight",
                    )
        for relay in snapshot.mcp.clients:
            label = relay.name or relay.id
            if relay.name in self.ctx.duplicate_relay_names:
                label = f"{label} ({relay.id})"
            yield (f"Open MCP relay {label}", partial(self.open_detail, "relay", relay.id), "")
            if can_act and relay.status != "gone":
                for action in ACTIONS:
                    yield (
                        f"{action.capitalize()} MCP relay {label}",
                        partial(self.request_action, "relay", relay.id, action),
                        f"{status_word(relay.status)}, {relay.inflight} in flight",
                    )
        for model in snapshot.models:
            yield (f"Open model {model.name}", partial(self.open_detail, "model", model.name), "")
