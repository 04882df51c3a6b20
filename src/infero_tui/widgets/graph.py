"""A labelled sparkline: what it counts, over which span, its scale and the current rate."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

from infero_tui.format import rate
from infero_tui.rates import SPAN_S, WINDOW_S


class Graph(Vertical):
    """`Requests/s  now 4.0 (10 s avg) · max 6.0 · last 60 s, 1 bar = 1 s` over a sparkline."""

    DEFAULT_CSS = """
    Graph {
        height: auto;
        padding: 0 1;
    }
    Graph > Static {
        height: 1;
    }
    Graph > Sparkline {
        height: 2;
    }
    """

    def __init__(self, title: str, *, gauge: bool = False, id: str | None = None) -> None:
        super().__init__(id=id)
        self.title = title
        self.gauge = gauge

    def compose(self) -> ComposeResult:
        yield Static(Text(self.title, style="bold"))
        yield Sparkline([], summary_function=max)

    def show(self, series: list[float], current: float) -> None:
        """Draw the per-second buckets; the label states span and scale."""
        top = max(series, default=0.0)
        label = Text(self.title, style="bold")
        if top <= 0:
            label.append(f"  nothing in the last {SPAN_S} s", style="dim")
        else:
            now = f"now {current:.0f}" if self.gauge else f"{rate(current)} ({WINDOW_S} s avg)"
            label.append(f"  {now} · max {top:.1f} · {SPAN_S} s, 1 bar = 1 s", style="dim")
        self.query_one(Static).update(label, layout=False)  # one line, fixed height
        spark = self.query_one(Sparkline)
        spark.display = top > 0
        spark.data = series
