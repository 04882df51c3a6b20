"""The Workers tab: filter box, sortable table and the detail pane of the selected worker."""

from __future__ import annotations

from typing import ClassVar

from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import DataTable, Input

from infero.protocol.state import StateSnapshot
from infero_tui.client import Action
from infero_tui.messages import ActionRequested
from infero_tui.widgets.inputs import configure_inputs
from infero_tui.widgets.worker_detail import WorkerDetail
from infero_tui.widgets.workers_table import WorkersTable


class WorkersPane(Vertical):
    """Workers of the fleet and the actions on the selected one."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("d", "act('drain')", "Drain"),
        Binding("u", "act('undrain')", "Undrain"),
        Binding("x", "act('shutdown')", "Shutdown"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("s", "sort", "Sort"),
        Binding("r", "reverse", "Reverse", show=False),
    ]
    """
    | Key | Action |
    | :- | :- |
    | d | Drain the selected worker (after confirmation). |
    | u | Undrain the selected worker. |
    | x | Shut down the selected worker (drain, then exit). |
    | / | Filter workers by name, id, status, version or model. |
    | s | Sort by the next column. |
    | r | Reverse the sort order. |
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._snapshot: StateSnapshot | None = None

    def compose(self) -> ComposeResult:
        yield Input(
            placeholder="filter workers (Enter: back to the table, Esc: clear)", id="filter"
        )
        yield WorkersTable(id="workers-table")
        yield WorkerDetail(id="worker-detail")

    def on_mount(self) -> None:
        self.query_one("#filter", Input).display = False
        configure_inputs(self)

    @property
    def table(self) -> WorkersTable:
        return self.query_one(WorkersTable)

    def show(self, snapshot: StateSnapshot) -> None:
        """Refresh the table and the detail pane from a snapshot."""
        self._snapshot = snapshot
        self.table.show(snapshot.workers, snapshot.server.now)
        self._show_detail()

    def _show_detail(self) -> None:
        if self._snapshot is None:
            return
        selected = self.table.selected_id
        worker = next((w for w in self._snapshot.workers if w.id == selected), None)
        self.query_one(WorkerDetail).show(
            worker, self._snapshot.server.now, fleet_size=len(self._snapshot.workers)
        )

    @on(DataTable.RowHighlighted)
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        self._show_detail()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.table.set_filter(event.value)
        self._show_detail()

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.table.focus()

    def on_key(self, event: events.Key) -> None:
        filter_box = self.query_one("#filter", Input)
        if event.key == "escape" and filter_box.has_focus:
            event.stop()
            filter_box.value = ""
            filter_box.display = False
            self.table.set_filter("")
            self._show_detail()
            self.table.focus()

    def action_act(self, action: Action) -> None:
        worker_id = self.table.selected_id
        if worker_id is None:
            self.notify("No worker selected.", severity="warning")
            return
        self.post_message(ActionRequested(worker_id, action))

    def action_filter(self) -> None:
        filter_box = self.query_one("#filter", Input)
        filter_box.display = True
        filter_box.focus()

    def action_sort(self) -> None:
        self.table.cycle_sort()

    def action_reverse(self) -> None:
        self.table.reverse_sort()
