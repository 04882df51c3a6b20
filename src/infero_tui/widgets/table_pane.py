"""A tab made of fleet tables under one `/` filter (debounced), with actions on a row."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.timer import Timer
from textual.widgets import Input, Static

from infero.protocol.state import InstanceInfo, McpClientInfo, ModelInfo, WorkerInfo
from infero_tui.client import Action
from infero_tui.messages import ActionRequested, DetailRequested, Kind
from infero_tui.tables import (
    TableContext,
    instance_columns,
    instance_rows,
    model_columns,
    model_rows,
    relay_columns,
    relay_rows,
    session_columns,
    session_rows,
    worker_columns,
    worker_rows,
)
from infero_tui.widgets.fleet_table import FleetTable
from infero_tui.widgets.inputs import configure_inputs


class TablePane(Vertical):
    """Tables of one tab; `/` filters all of them as you type, Esc clears the filter.

    The keys (`/`, and d, u, x on an `ActionPane`) are the main screen's, which dispatches
    them to the active tab's pane (see `MainScreen.check_action`).
    """

    DEFAULT_CSS = """
    TablePane > Input.filter {
        dock: top;
        height: 3;
        display: none;
    }
    TablePane > Input.filter.-shown {
        display: block;
    }
    TablePane > .caption {
        height: 1;
        padding: 0 1;
        color: $text-muted;
    }
    """

    KIND: ClassVar[Kind | None] = None
    """What the first table lists, for Enter and the actions."""

    def __init__(self, ctx: TableContext, *, debounce: float, id: str | None = None) -> None:
        super().__init__(id=id)
        self.ctx = ctx
        self.debounce = debounce
        self._timer: Timer | None = None

    def compose_tables(self) -> ComposeResult:
        """The tables of this tab (the first one is the main one)."""
        yield from ()

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter (Enter: back to the table, Esc: clear)", classes="filter")
        yield from self.compose_tables()

    def on_mount(self) -> None:
        configure_inputs(self)

    @property
    def tables(self) -> list[FleetTable[Any]]:
        return list(self.query(FleetTable))

    @property
    def table(self) -> FleetTable[Any]:
        return self.tables[0]

    @property
    def filter_box(self) -> Input:
        return self.query_one("Input.filter", Input)

    def action_filter(self) -> None:
        self.filter_box.add_class("-shown")
        self.filter_box.focus()

    @on(Input.Changed, "Input.filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        event.stop()
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        if self.debounce <= 0:
            self.apply_filter()
        else:
            self._timer = self.set_timer(self.debounce, self.apply_filter)

    def apply_filter(self) -> None:
        """Filter every table of the tab by the text in the box."""
        self._timer = None
        for table in self.tables:
            table.set_filter(self.filter_box.value)

    @on(Input.Submitted, "Input.filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.apply_filter()
        self.table.focus()

    def clear_filter(self) -> bool:
        """Empty and hide the filter; False when there was none."""
        box = self.filter_box
        if not box.has_class("-shown") and not box.value:
            return False
        box.value = ""
        box.remove_class("-shown")
        if self._timer is not None:
            self._timer.stop()
        self.apply_filter()
        self.table.focus()
        return True

    def on_key(self, event: events.Key) -> None:
        if event.key == "escape" and self.clear_filter():
            event.stop()

    @on(FleetTable.Opened)
    def _opened(self, event: FleetTable.Opened) -> None:
        event.stop()
        kind = self.kind_of(event.table)
        if kind is not None:
            self.post_message(DetailRequested(kind, event.key))

    def kind_of(self, table: FleetTable[Any]) -> Kind | None:
        return self.KIND if table is self.table else None

    def caption(self, table_id: str, text: str) -> Static:
        return Static(Text(text), classes="caption", id=table_id)


class ActionPane(TablePane):
    """A tab whose main rows can be drained, undrained and shut down (d, u, x)."""

    def selected_is_live(self) -> bool:
        item = self.table.selected_item
        return item is not None and not self.table.rows.gone(item)

    def action_act(self, action: Action) -> None:
        key = self.table.selected
        if key is None or self.KIND is None:
            self.notify("Nothing selected.", severity="warning")
            return
        self.post_message(ActionRequested(self.KIND, key, action))

    _actionable: bool | None = None

    @on(FleetTable.Moved)
    def _moved(self, event: FleetTable.Moved) -> None:
        """Grey the actions out (or back in) when the cursor moves between live and gone rows;
        refreshing the bindings on every move would cost more than the move itself."""
        event.stop()
        actionable = self.selected_is_live()
        if actionable != self._actionable:
            self._actionable = actionable
            self.refresh_bindings()


class WorkersPane(ActionPane):
    """Tab 1: every `infero llm` connector."""

    KIND = "worker"

    def compose_tables(self) -> ComposeResult:
        yield FleetTable(
            worker_columns(self.ctx),
            worker_rows(self.ctx),
            sort="name",
            empty="No workers connected yet.",
            id="workers-table",
        )

    def show(self, workers: list[WorkerInfo]) -> None:
        self.table.update(workers)


class ModelsPane(TablePane):
    """Tab 2: every model the fleet serves."""

    KIND = "model"

    def compose_tables(self) -> ComposeResult:
        yield FleetTable(
            model_columns(self.ctx), model_rows(), empty="No models yet.", id="models-table"
        )

    def show(self, models: list[ModelInfo]) -> None:
        self.table.update(models)


class McpPane(ActionPane):
    """Tab 3: MCP relays (steerable) and their live sessions."""

    KIND = "relay"

    DEFAULT_CSS = """
    McpPane #mcp-sessions {
        height: 1fr;
        max-height: 40%;
    }
    """

    def compose_tables(self) -> ComposeResult:
        yield FleetTable(
            relay_columns(self.ctx),
            relay_rows(),
            sort="name",
            empty="No MCP relays connected.",
            id="mcp-relays",
        )
        yield self.caption("sessions-caption", "Sessions")
        yield FleetTable(
            session_columns(self.ctx),
            session_rows(self.ctx),
            empty="No live MCP sessions.",
            id="mcp-sessions",
        )

    def show(self, relays: list[McpClientInfo], sessions: list[Any]) -> None:
        self.table.update(relays)
        self.query_one("#mcp-sessions", FleetTable).update(sessions)


ALONE = "This server runs alone (no REDIS_ADDR): no other instance shares its fleet."
"""What the Instances tab says when a state lists no instances."""


class InstancesPane(TablePane):
    """Tab 6: the `infero server` instances sharing the fleet through Redis (REDIS_ADDR)."""

    KIND = "instance"

    def compose_tables(self) -> ComposeResult:
        yield FleetTable(
            instance_columns(self.ctx),
            instance_rows(self.ctx),
            empty="Waiting for the first state.",
            id="instances-table",
        )

    def show(self, instances: list[InstanceInfo]) -> None:
        table = self.table
        if table.empty != ALONE:  # a state came: no instance listed means a server alone
            table.empty = ALONE
            table.refresh()
        table.update(instances)
