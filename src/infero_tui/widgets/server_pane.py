"""The Server tab: totals and live sparklines of requests/s, tokens/s and queue depth."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Sparkline, Static

from infero.protocol.state import StateSnapshot
from infero_tui.format import duration, rate
from infero_tui.rates import RateTracker


class ServerPane(Vertical):
    """Server totals and three graphs."""

    DEFAULT_CSS = """
    ServerPane #server-totals {
        height: auto;
        padding: 0 1;
    }
    ServerPane Label {
        padding: 1 1 0 1;
    }
    ServerPane Sparkline {
        height: 3;
        margin: 0 1;
    }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="server-totals")
        yield Label("Requests/s", id="label-requests")
        yield Sparkline([], id="spark-requests")
        yield Label("Tokens/s", id="label-tokens")
        yield Sparkline([], id="spark-tokens")
        yield Label("Queue depth", id="label-queue")
        yield Sparkline([], id="spark-queue")

    def show(self, snapshot: StateSnapshot, rates: RateTracker) -> None:
        """Refresh totals and graphs."""
        server, summary = snapshot.server, snapshot.workers_summary
        table = Table.grid(padding=(0, 2))
        for _ in range(4):
            table.add_column()
        table.add_row(
            Text(f"version {server.version}"),
            Text(f"state {server.state}"),
            Text(f"uptime {duration(server.uptime_s)}"),
            Text(f"queue {server.scheduler_queue_len}"),
        )
        table.add_row(
            Text(f"in flight {server.jobs_inflight_total}"),
            Text(f"completed {server.jobs_completed_total}"),
            Text(f"failed {server.jobs_failed_total}"),
            Text(f"models {len(snapshot.models)}"),
        )
        table.add_row(
            Text(f"workers {summary.connected}"),
            Text(f"busy {summary.working}  idle {summary.idle}"),
            Text(f"draining {summary.draining}"),
            Text(f"not ready {summary.not_ready}  gone {summary.gone}"),
        )
        self.query_one("#server-totals", Static).update(table)
        graphs = (
            ("requests", "Requests/s", rates.requests_history, rates.fleet.requests),
            ("tokens", "Tokens/s", rates.tokens_history, rates.fleet.tokens),
            ("queue", "Queue depth", rates.queue_history, float(server.scheduler_queue_len)),
        )
        for key, title, history, current in graphs:
            self.query_one(f"#label-{key}", Label).update(f"{title}: {rate(current)}")
            self.query_one(f"#spark-{key}", Sparkline).data = list(history)
