"""The Models tab: one row per model with its workers, queue and live rates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.text import Text
from textual.widgets import DataTable

from infero.protocol.state import ModelInfo
from infero_tui.format import millis, rate
from infero_tui.rates import Rate


class ModelsTable(DataTable[Text]):
    """Model, workers (ready/all), queue depth, oldest wait, requests/s, tokens/s, TTFT."""

    DEFAULT_CSS = """
    ModelsTable {
        height: 1fr;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        for label in ("Model", "Workers", "Queue", "Oldest wait", "Req/s", "Tok/s", "TTFT", "Err"):
            self.add_column(Text(label), key=label)

    def show(self, models: Sequence[ModelInfo], rates: Mapping[str, Rate]) -> None:
        """Replace the rows."""
        self.clear()
        for model in models:
            r = rates.get(model.name, Rate())
            queue_style = "bold yellow" if model.queue_len else ""
            self.add_row(
                Text(model.name),
                Text(f"{model.ready_workers}/{model.workers}", justify="right"),
                Text(str(model.queue_len), style=queue_style, justify="right"),
                Text(millis(model.oldest_wait_ms), justify="right"),
                Text(rate(r.requests), justify="right"),
                Text(rate(r.tokens), justify="right"),
                Text(millis(model.avg_ttft_ms), justify="right"),
                Text(str(model.error_total), justify="right"),
                key=model.name,
            )
