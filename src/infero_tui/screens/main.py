"""The main screen: header, one tab per view, footer; owns the feed workers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Footer, TabbedContent, TabPane
from textual.worker import Worker, WorkerState

from infero.common.backoff import Backoff
from infero.protocol.state import StateSnapshot, WorkerInfo
from infero_tui.client import ACTIONS, Action, AuthRefused, ClientError, NotFound
from infero_tui.config import ConsoleConfig
from infero_tui.feed import FleetFeed
from infero_tui.local import LocalContext
from infero_tui.messages import (
    ActionRequested,
    AuthRequired,
    FeedLost,
    LocalLost,
    LocalStatusReceived,
    SnapshotReceived,
)
from infero_tui.rates import RateTracker
from infero_tui.screens.api_key import ApiKeyScreen
from infero_tui.screens.confirm import ConfirmScreen, action_question
from infero_tui.widgets.fleet_header import FleetHeader
from infero_tui.widgets.local_pane import LocalPane
from infero_tui.widgets.mcp_pane import McpPane
from infero_tui.widgets.models_table import ModelsTable
from infero_tui.widgets.server_pane import ServerPane
from infero_tui.widgets.workers_pane import WorkersPane

logger = logging.getLogger(__name__)

PaletteCommand = tuple[str, Callable[[], object], str]

TABS: tuple[tuple[str, str], ...] = (
    ("workers", "1 Workers"),
    ("models", "2 Models"),
    ("mcp", "3 MCP"),
    ("server", "4 Server"),
    ("local", "5 Local"),
)

FOCUS_IN_TAB = {
    "workers": "#workers-table",
    "models": "#models-table",
    "mcp": "#mcp-relays",
    "server": "#tabs Tabs",
    "local": "#local-log",
}


class MainScreen(Screen[None]):
    """Fleet tabs (with `--server`) and the Local tab (with `--worker`)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        *(
            Binding(str(index), f"show_tab('{tab}')", label.split()[1], show=False)
            for index, (tab, label) in enumerate(TABS, start=1)
        ),
        Binding("a", "api_key", "API key", show=False),
    ]
    """
    | Key | Action |
    | :- | :- |
    | 1-5 | Workers, Models, MCP, Server, Local tab. |
    | a | Enter another API key and reconnect. |
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
        self.connection = "connecting…" if fleet else ""
        self.last_received: datetime | None = None
        self.lost = False

    def compose(self) -> ComposeResult:
        yield FleetHeader(id="header")
        with TabbedContent(id="tabs"):
            if self.fleet is not None:
                with TabPane(TABS[0][1], id="workers"):
                    yield WorkersPane(id="workers-pane")
                with TabPane(TABS[1][1], id="models"):
                    yield ModelsTable(id="models-table")
                with TabPane(TABS[2][1], id="mcp"):
                    yield McpPane(id="mcp-pane")
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
        yield Footer()

    def on_mount(self) -> None:
        self.redraw_header()
        self._focus_tab(self.query_one(TabbedContent).active)
        if self.fleet is not None:
            self.follow_fleet()
        if self.local is not None:
            self.poll_local()
        if self.config.refresh_interval:
            self.set_interval(self.config.refresh_interval, self.redraw_header)

    # ---- feeds ------------------------------------------------------------------------

    @work(exclusive=True, group="fleet", exit_on_error=False)
    async def follow_fleet(self) -> None:
        """Follow the state stream, reconnecting with backoff until a 401 asks for a key."""
        assert self.fleet is not None
        backoff = Backoff(self.config.reconnect_schedule, self.config.reconnect_ceiling)
        while True:
            try:
                async for snapshot in self.fleet.snapshots():
                    backoff.reset()
                    self.post_message(SnapshotReceived(snapshot))
            except AuthRefused as exc:
                self.post_message(AuthRequired(str(exc)))
                return
            except ClientError as exc:
                self.post_message(FeedLost(str(exc)))
            await asyncio.sleep(backoff.next_delay())

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
        if event.worker.group == "fleet":
            self.lost = True
            self.connection = f"stream stopped ({type(error).__name__}); restart the console"
            self.redraw_header()
        self.notify(f"{event.worker.name}: {error}", title="Internal error", severity="error")

    # ---- feed messages ----------------------------------------------------------------

    @on(SnapshotReceived)
    def _snapshot(self, message: SnapshotReceived) -> None:
        snapshot = self.snapshot = message.snapshot
        self.last_received = self.clock()
        self.lost = False
        self.connection = "live"
        self.rates.add(snapshot)
        self.query_one(WorkersPane).show(snapshot)
        self.query_one(ModelsTable).show(snapshot.models, self.rates.per_model)
        self.query_one(McpPane).show(snapshot.mcp, snapshot.server.now)
        self.query_one(ServerPane).show(snapshot, self.rates)
        self.redraw_header()

    @on(FeedLost)
    def _lost(self, message: FeedLost) -> None:
        self.lost = True
        self.connection = f"reconnecting ({message.reason})"
        self.redraw_header()

    @on(AuthRequired)
    def _auth(self, message: AuthRequired) -> None:
        self.lost = True
        self.connection = "API key refused (a: enter a key)"
        self.redraw_header()
        self.ask_for_key(message.reason)

    def action_api_key(self) -> None:
        if self.fleet is not None:
            self.ask_for_key("Enter the API key to use from now on.")

    def ask_for_key(self, reason: str) -> None:
        """Prompt for an API key; a non-empty answer restarts the stream with it."""

        def entered(key: str | None) -> None:
            if key and self.fleet is not None:
                self.fleet.set_api_key(key)
                self.connection = "connecting…"
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

    def redraw_header(self) -> None:
        """Redraw the header (the refresh timer calls this so the stale age counts up)."""
        header = self.query_one(FleetHeader)
        if self.fleet is None:
            status = self.query_one(LocalPane).status if self.local else None
            state = status.state if status else "unreachable"
            header.show(None, connection=f"local connector: {state}", stale_s=None)
            return
        stale: int | None = None
        if self.lost and self.last_received is not None:
            stale = max(int((self.clock() - self.last_received).total_seconds()), 0)
        header.show(self.snapshot, connection=self.connection, stale_s=stale)

    # ---- actions ----------------------------------------------------------------------

    def worker(self, worker_id: str) -> WorkerInfo | None:
        """The worker with this id in the latest snapshot."""
        if self.snapshot is None:
            return None
        return next((w for w in self.snapshot.workers if w.id == worker_id), None)

    @on(ActionRequested)
    def _action_requested(self, message: ActionRequested) -> None:
        self.request_action(message.worker_id, message.action)

    def request_action(self, worker_id: str, action: Action) -> None:
        """Confirm, then send one action for a fleet worker (nothing in read-only mode)."""
        if self.config.read_only:
            self.notify("Read-only mode: actions are disabled.", severity="warning")
            return
        worker = self.worker(worker_id)
        if worker is None or self.fleet is None:
            self.notify("That worker is no longer known.", severity="warning")
            return
        question = action_question(
            action, Text(f"worker {worker.name or worker.id}"), worker.inflight
        )

        def confirmed(answer: bool | None) -> None:
            if answer:
                self.send_action(worker_id, worker.name or worker.id, action)

        self.app.push_screen(ConfirmScreen(question), confirmed)

    @work(group="actions", exit_on_error=False)
    async def send_action(self, worker_id: str, name: str, action: Action) -> None:
        """Send through the fleet feed; the outcome is a notification."""
        assert self.fleet is not None
        try:
            await self.fleet.control(worker_id, action)
        except AuthRefused:
            self.notify(
                "The server refused the operator key (--operator-key / OPERATOR_KEY).",
                title=f"{action} {name}",
                severity="error",
            )
            return
        except NotFound:
            self.notify("The server no longer knows this worker.", severity="error")
            return
        except ClientError as exc:
            self.notify(str(exc), title=f"{action} {name}", severity="error")
            return
        self.notify(f"{action} accepted for {name}", title="Fleet")

    def action_show_tab(self, tab: str) -> None:
        tabs = self.query_one(TabbedContent)
        if tabs.query(f"TabPane#{tab}"):
            tabs.active = tab
            self._focus_tab(tab)

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id:
            self._focus_tab(event.pane.id)

    def _focus_tab(self, tab: str) -> None:
        """Put the focus in the tab's main widget so its keys (footer) apply."""
        target = FOCUS_IN_TAB.get(tab)
        if target is not None:
            for widget in self.query(target):
                widget.focus()
                return

    def palette_commands(self) -> list[PaletteCommand]:
        """Commands for the palette: every action on every worker, and the tabs."""
        out: list[PaletteCommand] = []
        tabs = self.query_one(TabbedContent)
        for tab, label in TABS:
            if tabs.query(f"TabPane#{tab}"):
                out.append((f"Show {label.split()[1]}", partial(self.action_show_tab, tab), "tab"))
        if self.snapshot is not None and not self.config.read_only:
            out.extend(
                (
                    f"{action.capitalize()} worker {worker.name or worker.id}",
                    partial(self.request_action, worker.id, action),
                    f"{worker.status}, {worker.inflight} in flight",
                )
                for worker in self.snapshot.workers
                if worker.status != "gone"
                for action in ACTIONS
            )
        return out
