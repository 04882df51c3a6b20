"""Everything about the selected worker: models, per-model counters, last error, versions."""

from __future__ import annotations

from datetime import datetime

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from infero.protocol.state import WorkerInfo
from infero_tui.format import age, millis, rate
from infero_tui.widgets.status_style import status_text


def _pair(label: str, value: Text | str) -> Text:
    out = Text(f"{label}: ", style="bold")
    out.append_text(value if isinstance(value, Text) else Text(value))
    return out


class WorkerDetail(Static):
    """The detail pane under the workers table."""

    DEFAULT_CSS = """
    WorkerDetail {
        height: auto;
        max-height: 50%;
        border-top: solid $primary;
        padding: 0 1;
    }
    """

    def show(self, worker: WorkerInfo | None, now: datetime, *, fleet_size: int = 1) -> None:
        """Render `worker`, or a hint when nothing is selected."""
        if fleet_size == 0:
            self.update(Text("No workers connected yet.", style="dim"))
            return
        self.update(self.render_worker(worker, now))

    @staticmethod
    def render_worker(worker: WorkerInfo | None, now: datetime) -> RenderableType:
        if worker is None:
            return Text("No worker selected.", style="dim")
        line1 = _pair("Worker", worker.name or worker.id)
        line1.append(f"  id {worker.id}  ", style="dim")
        line1.append_text(status_text(worker.status))
        line2 = _pair("Connector", f"{worker.version or '?'} protocol {worker.protocol}")
        line2.append("  ")
        line2.append_text(_pair("Backend", worker.backend or "?"))
        line2.append(f"  connected {age(now, worker.connected_at)} ago")
        line3 = _pair(
            "Processed",
            f"{worker.processed_total}  avg {millis(worker.avg_processing_ms)}  "
            f"TTFT {millis(worker.avg_ttft_ms)}  {rate(worker.avg_tokens_per_second)} tok/s  "
            f"tokens in/out {worker.tokens_in_total}/{worker.tokens_out_total}",
        )
        error = _pair(
            "Last error",
            Text(worker.last_error or "-", style="#ff8787" if worker.last_error else ""),
        )
        models = Table(box=None, padding=(0, 1), show_edge=False, expand=False)
        for column in ("Model", "OK", "Errors", "Tokens in", "Tokens out"):
            models.add_column(column, justify="left" if column == "Model" else "right")
        for name in worker.models_supported:
            c = worker.per_model.get(name)
            counts = (
                (c.success_total, c.error_total, c.tokens_in_total, c.tokens_out_total)
                if c
                else (0, 0, 0, 0)
            )
            models.add_row(Text(name), *(Text(str(n)) for n in counts))
        return Group(line1, line2, line3, error, models)
