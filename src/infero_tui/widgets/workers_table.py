"""The sortable, filterable table of fleet workers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from rich.text import Text
from textual.widgets import DataTable

from infero.protocol.state import WorkerInfo
from infero_tui.format import age, millis, rate
from infero_tui.widgets.status_style import status_text

_STATUS_ORDER = {"busy": 0, "idle": 1, "connecting": 2, "draining": 3, "not_ready": 4, "gone": 5}

COLUMNS: tuple[tuple[str, Callable[[WorkerInfo], Any]], ...] = (
    ("Name", lambda w: w.name.lower()),
    ("Status", lambda w: _STATUS_ORDER.get(w.status, 9)),
    ("Jobs", lambda w: w.inflight),
    ("Queue", lambda w: w.queue_len),
    ("Tok/s", lambda w: w.avg_tokens_per_second),
    ("TTFT", lambda w: w.avg_ttft_ms),
    ("Fail", lambda w: w.failures_total),
    ("Seen", lambda w: w.last_heartbeat),
    ("Version", lambda w: w.version),
)


def matches(worker: WorkerInfo, needle: str) -> bool:
    """Case-insensitive match of the filter against name, id, status, version and models."""
    if not needle:
        return True
    needle = needle.lower()
    fields = (worker.name, worker.id, worker.status, worker.version, *worker.models_supported)
    return any(needle in field.lower() for field in fields)


class WorkersTable(DataTable[Text]):
    """One row per worker; the row key is the worker id."""

    DEFAULT_CSS = """
    WorkersTable {
        height: 1fr;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.sort_column = 0
        self.sort_reverse = False
        self.filter_text = ""
        self._workers: Sequence[WorkerInfo] = ()
        self._now: datetime | None = None

    @property
    def selected_id(self) -> str | None:
        """Id of the worker under the cursor, if any."""
        if self.row_count == 0:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        return key.value

    def visible_workers(self) -> list[WorkerInfo]:
        """The workers shown, filtered and sorted."""
        rows = [w for w in self._workers if matches(w, self.filter_text)]
        key = COLUMNS[self.sort_column][1]
        return sorted(rows, key=key, reverse=self.sort_reverse)

    def show(self, workers: Sequence[WorkerInfo], now: datetime) -> None:
        """Replace the rows, keeping the cursor on the same worker."""
        self._workers, self._now = workers, now
        self._rebuild()

    def cycle_sort(self) -> None:
        """Sort by the next column."""
        self.sort_column = (self.sort_column + 1) % len(COLUMNS)
        self._rebuild()

    def reverse_sort(self) -> None:
        """Flip the sort order."""
        self.sort_reverse = not self.sort_reverse
        self._rebuild()

    def set_filter(self, text: str) -> None:
        """Show only workers matching `text`."""
        self.filter_text = text.strip()
        self._rebuild()

    def _rebuild(self) -> None:
        selected = self.selected_id
        self.clear(columns=True)
        for index, (label, _) in enumerate(COLUMNS):
            mark = (" ▼" if self.sort_reverse else " ▲") if index == self.sort_column else ""
            self.add_column(Text(label + mark), key=label)
        now = self._now
        for worker in self.visible_workers():
            self.add_row(*self._cells(worker, now), key=worker.id)
        if selected is not None and selected in self.rows:
            self.move_cursor(row=self.get_row_index(selected), animate=False)

    @staticmethod
    def _cells(worker: WorkerInfo, now: datetime | None) -> list[Text]:
        return [
            Text(worker.name or worker.id),
            status_text(worker.status),
            Text(f"{worker.inflight}/{worker.max_concurrency}", justify="right"),
            Text(str(worker.queue_len), justify="right"),
            Text(rate(worker.avg_tokens_per_second), justify="right"),
            Text(millis(worker.avg_ttft_ms), justify="right"),
            Text(str(worker.failures_total), justify="right"),
            Text(age(now, worker.last_heartbeat) if now else "-", justify="right"),
            Text(worker.version),
        ]
