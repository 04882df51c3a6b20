"""The MCP tab: relays (`infero mcp`) and their live client sessions."""

from __future__ import annotations

from datetime import datetime

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Label

from infero.protocol.state import McpState
from infero_tui.format import age, millis
from infero_tui.widgets.status_style import status_text


class McpPane(Vertical):
    """Two tables: relays, then sessions."""

    DEFAULT_CSS = """
    McpPane DataTable {
        height: 1fr;
    }
    McpPane Label {
        text-style: bold;
        padding: 0 1;
    }
    """

    def compose(self) -> ComposeResult:
        yield Label("Relays")
        yield DataTable[Text](id="mcp-relays", cursor_type="row")
        yield Label("Sessions")
        yield DataTable[Text](id="mcp-sessions", cursor_type="row")

    def on_mount(self) -> None:
        relays = self.query_one("#mcp-relays", DataTable)
        for label in ("Name", "Status", "In flight", "Calls", "Errors", "Version", "Methods"):
            relays.add_column(Text(label), key=label)
        sessions = self.query_one("#mcp-sessions", DataTable)
        for label in ("Session", "Relay", "Method", "In flight", "Started", "Duration"):
            sessions.add_column(Text(label), key=label)

    def show(self, mcp: McpState, now: datetime) -> None:
        """Replace both tables."""
        relays: DataTable[Text] = self.query_one("#mcp-relays", DataTable)
        relays.clear()
        names: dict[str, str] = {}
        for client in mcp.clients:
            names[client.id] = client.name or client.id
            methods = ", ".join(f"{m} {n}" for m, n in sorted(client.functions.items()))
            relays.add_row(
                Text(client.name or client.id),
                status_text(client.status),
                Text(str(client.inflight), justify="right"),
                Text(str(client.calls_total), justify="right"),
                Text(str(client.errors_total), justify="right"),
                Text(client.version),
                Text(methods),
                key=client.id,
            )
        sessions: DataTable[Text] = self.query_one("#mcp-sessions", DataTable)
        sessions.clear()
        for session in mcp.sessions:
            sessions.add_row(
                Text(session.id),
                Text(names.get(session.client_id, session.client_id)),
                Text(session.method),
                Text(str(session.inflight), justify="right"),
                Text(age(now, session.started_at) + " ago", justify="right"),
                Text(millis(session.duration_ms), justify="right"),
                key=session.id,
            )
