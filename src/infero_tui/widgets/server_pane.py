"""The Server tab: totals (lifetime, labelled so) and per-second graphs of the fleet."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from infero.protocol.state import StateSnapshot
from infero_tui.format import count, duration
from infero_tui.rates import RateTracker
from infero_tui.widgets.graph import Graph
from infero_tui.widgets.status_style import status_text


class ServerPane(VerticalScroll):
    """Server totals and three graphs: requests/s, tokens/s, queue depth."""

    DEFAULT_CSS = """
    ServerPane #server-totals {
        height: auto;
        padding: 0 1 1 1;
    }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="server-totals")
        yield Graph("Requests/s", id="graph-requests")
        yield Graph("Tokens/s", id="graph-tokens")
        yield Graph("Queue depth", gauge=True, id="graph-queue")

    def show(self, snapshot: StateSnapshot, rates: RateTracker) -> None:
        """Refresh totals and graphs."""
        server, summary = snapshot.server, snapshot.workers_summary
        table = Table.grid(padding=(0, 3))
        for _ in range(3):
            table.add_column()
        state = Text("state ")
        state.append_text(status_text(server.state))
        table.add_row(
            Text(f"version {server.version or '?'}"), state, Text(f"up {duration(server.uptime_s)}")
        )
        table.add_row(
            Text(f"in flight {server.jobs_inflight_total}"),
            Text(f"completed {count(server.jobs_completed_total)}"),
            Text(f"failed {count(server.jobs_failed_total)}"),
        )
        table.add_row(
            Text(f"workers {summary.connected}: busy {summary.working}, idle {summary.idle}"),
            Text(f"draining {summary.draining} · not ready {summary.not_ready}"),
            Text(f"gone {summary.gone} · models {len(snapshot.models)}"),
        )
        table.add_row(Text("totals since the server started", style="dim"), Text(""), Text(""))
        # a hidden tab needs no layout now: showing it lays it out with this content
        self.query_one("#server-totals", Static).update(table, layout=self.is_on_screen)
        fleet = rates.fleet
        self.query_one("#graph-requests", Graph).show(
            fleet.requests.series(), fleet.requests.rate()
        )
        self.query_one("#graph-tokens", Graph).show(fleet.tokens.series(), fleet.tokens.rate())
        self.query_one("#graph-queue", Graph).show(
            rates.queue.series(), float(server.scheduler_queue_len)
        )
