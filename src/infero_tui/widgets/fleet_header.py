"""The two-line header: target and connection (with mode badges), then the server summary."""

from __future__ import annotations

from datetime import datetime

from rich.text import Text
from textual.widgets import Static

from infero.protocol.state import StateSnapshot
from infero_tui.connection import Connection
from infero_tui.format import duration, ellipsis, rate
from infero_tui.rates import WINDOW_S, RateTracker
from infero_tui.widgets.status_style import status_text


class FleetHeader(Static):
    """What the console watches, whether the data is live, and the fleet in one line."""

    DEFAULT_CSS = """
    FleetHeader {
        height: 2;
        padding: 0 1;
        background: $panel;
    }
    """

    def show(
        self,
        snapshot: StateSnapshot | None,
        *,
        connection: Connection | None,
        now: datetime,
        rates: RateTracker | None = None,
        badges: tuple[str, ...] = (),
        local: str = "",
    ) -> None:
        """Redraw from the latest snapshot, the connection and the console's mode."""
        width = max(self.size.width - 2, 40)
        top = Text("infero ", style="bold")
        tail = Text()
        for badge in badges:
            tail.append(" ")
            tail.append(f" {badge} ", style="bold reverse yellow")
        if connection is not None:
            words, style = connection.describe(now)
            room = width - top.cell_len - tail.cell_len - len(words) - 3
            top.append(ellipsis(connection.target, max(room, 12)), style="underline")
            top.append("  ")
            top.append(words, style=style)
        elif local:
            top.append(local)
        top.append_text(tail)
        second = Text()
        if snapshot is not None:
            server, summary = snapshot.server, snapshot.workers_summary
            second.append(f"server {server.version or '?'} ")
            second.append_text(status_text(server.state))
            second.append(f" · up {duration(server.uptime_s)}")
            second.append(f" · workers {summary.connected}")
            if summary.gone:
                second.append(f" (+{summary.gone} gone)", style="dim")
            queue_style = "bold #ffd75f" if server.scheduler_queue_len else ""
            second.append(" · queue ")
            second.append(str(server.scheduler_queue_len), style=queue_style)
            if server.instances:
                second.append(f" · instance {server.instance} of {len(server.instances)}")
            if server.degraded:
                second.append(" · DEGRADED (Redis down: own links only)", style="bold #ff8787")
            if rates is not None:
                requests, tokens = rates.fleet.requests.rate(), rates.fleet.tokens.rate()
                second.append(f" · {rate(requests)} req/s · {rate(tokens)} tok/s ({WINDOW_S} s)")
        elif connection is not None:
            second.append("waiting for the first state…", style="dim")
        # a fixed height: no layout of the whole screen for every state
        self.update(Text("\n").join([top, second]), layout=False)
