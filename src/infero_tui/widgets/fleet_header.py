"""The one-line header: server version, state, uptime and the live/stale connection badge."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from infero.protocol.state import StateSnapshot
from infero_tui.format import duration
from infero_tui.widgets.status_style import status_text


class FleetHeader(Static):
    """Shows what the console is connected to and whether the data is live."""

    DEFAULT_CSS = """
    FleetHeader {
        height: 1;
        padding: 0 1;
        background: $panel;
    }
    """

    def show(
        self,
        snapshot: StateSnapshot | None,
        *,
        connection: str,
        stale_s: int | None,
        title: str = "infero",
    ) -> None:
        """Redraw from the latest snapshot and the connection state."""
        text = Text(title, style="bold")
        if snapshot is not None:
            server = snapshot.server
            text.append(f" {server.version}")
            text.append("  ")
            text.append_text(status_text(server.state))
            text.append(f"  up {duration(server.uptime_s)}")
            summary = snapshot.workers_summary
            text.append(f"  workers {summary.connected}  queue {server.scheduler_queue_len}")
        text.append("  ")
        if stale_s is not None:
            text.append(f" stale {stale_s} s ", style="bold reverse red")
            text.append(f" {connection}")
        else:
            text.append(connection, style="green" if connection == "live" else "yellow")
        self.update(text)
