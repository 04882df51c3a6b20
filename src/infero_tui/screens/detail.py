"""Enter on a row: everything about one connector, model, MCP relay or server instance, full
screen."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import ClassVar, Protocol

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Static

from infero.protocol.state import (
    InstanceInfo,
    McpClientInfo,
    ModelInfo,
    StateSnapshot,
    WorkerInfo,
)
from infero_tui.client import Action
from infero_tui.format import age, count, millis, printable, rate
from infero_tui.history import ErrorHistory
from infero_tui.messages import Kind
from infero_tui.rates import RateTracker
from infero_tui.tables import TableContext, heartbeat_cell, instance_state
from infero_tui.widgets.fleet_header import FleetHeader
from infero_tui.widgets.graph import Graph
from infero_tui.widgets.status_style import status_text


class DetailSource(Protocol):
    """What the detail view reads (the main screen)."""

    snapshot: StateSnapshot | None
    rates: RateTracker
    errors: ErrorHistory
    ctx: TableContext

    def why_not_act(self) -> str | None: ...

    def request_action(self, kind: Kind, key: str, action: Action) -> None: ...

    def redraw_header(self) -> None: ...


WAITERS_SHOWN = 5
"""Waiters of a model whose instance the detail names."""


def _grid(rows: list[tuple[str, Text | str]]) -> Table:
    """Label/value pairs in two columns of pairs."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    cells = [(label, value if isinstance(value, Text) else Text(value)) for label, value in rows]
    for index in range(0, len(cells), 2):
        left = cells[index]
        right = cells[index + 1] if index + 1 < len(cells) else ("", Text(""))
        table.add_row(left[0], left[1], right[0], right[1])
    return table


def _errors(errors: list[tuple[datetime, str]], now: datetime) -> RenderableType:
    if not errors:
        return Text("Last errors: none seen", style="dim")
    table = Table(box=None, padding=(0, 1), show_edge=False, title_justify="left")
    table.add_column("When", no_wrap=True, style="dim")
    table.add_column("Last errors", style="#ff8787")
    for at, message in errors:
        table.add_row(Text(f"{at:%H:%M:%S} ({age(now, at)} ago)"), Text(printable(message)))
    return table


def worker_facts(
    worker: WorkerInfo, now: datetime, live_tokens: float, live_heartbeats: bool
) -> Table:
    gone = worker.status == "gone"
    seen, seen_style = heartbeat_cell(
        now, worker.last_heartbeat, gone, live_heartbeats, worker.heartbeat_late
    )
    facts: list[tuple[str, Text | str]] = [
        ("ID", worker.id),
        ("Status", status_text(worker.status)),
        ("Version", f"{worker.version or '?'} ({worker.build_sha or 'no sha'})"),
        ("Protocol", str(worker.protocol)),
        ("Backend", worker.backend or "?"),
        ("Linked for", age(now, worker.connected_at)),
        ("Heartbeat", Text(seen if seen == "live" else f"{seen} ago", style=seen_style)),
        ("Jobs", f"{worker.inflight}/{worker.max_concurrency}"),
        ("Queue", str(worker.queue_len)),
        ("Tokens/s now", f"{rate(live_tokens)} (10 s avg)"),
        ("Processed", f"{count(worker.processed_total)} (lifetime)"),
        ("Failures", f"{count(worker.failures_total)} (lifetime)"),
        ("Avg duration", f"{millis(worker.avg_processing_ms)} (lifetime avg)"),
        ("Avg TTFT", f"{millis(worker.avg_ttft_ms)} (lifetime avg)"),
        ("Avg tokens/s", f"{rate(worker.avg_tokens_per_second)} (lifetime avg)"),
        ("Tokens in/out", f"{count(worker.tokens_in_total)}/{count(worker.tokens_out_total)}"),
    ]
    if worker.instance:
        facts.append(("Instance", worker.instance))
    if worker.disconnected_at is not None:
        facts.append(("Gone for", age(now, worker.disconnected_at)))
    return _grid(facts)


def per_model(worker: WorkerInfo) -> Table:
    table = Table(box=None, padding=(0, 1), show_edge=False)
    for column in ("Model", "OK", "Errors", "Tokens in", "Tokens out"):
        table.add_column(column, justify="left" if column == "Model" else "right")
    for name in sorted(set(worker.models_supported) | set(worker.per_model)):
        c = worker.per_model.get(name)
        values = (
            (c.success_total, c.error_total, c.tokens_in_total, c.tokens_out_total) if c else ()
        )
        table.add_row(Text(name), *(Text(count(v)) for v in values or (0, 0, 0, 0)))
    return table


def model_facts(model: ModelInfo, rates: RateTracker) -> Table:
    activity = rates.model(model.name)
    return _grid(
        [
            ("Ready workers", f"{model.ready_workers} of {model.workers}"),
            ("Queue", str(model.queue_len)),
            ("Oldest wait", millis(model.oldest_wait_ms)),
            ("Requests/s now", f"{rate(activity.requests.rate())} (10 s avg)"),
            ("Tokens/s now", f"{rate(activity.tokens.rate())} (10 s avg)"),
            ("Requests", f"{count(model.requests_total)} (lifetime)"),
            ("OK / errors", f"{count(model.success_total)} / {count(model.error_total)}"),
            ("Avg TTFT", f"{millis(model.avg_ttft_ms)} (lifetime avg)"),
            ("Avg duration", f"{millis(model.avg_duration_ms)} (lifetime avg)"),
            ("Avg tokens/s", f"{rate(model.avg_tokens_per_second)} (lifetime avg)"),
            *_waiters(model),
        ]
    )


def _waiters(model: ModelInfo) -> list[tuple[str, str]]:
    """Where each waiter is, in queue order, when a fleet lists them with their instance."""
    if not any(w.instance for w in model.waiters):
        return []
    shown = model.waiters[:WAITERS_SHOWN]
    places = ", ".join(f"{w.position} {w.instance}" for w in shown)
    rest = model.waiters_more + len(model.waiters) - len(shown)
    more = f", +{rest} more" if rest else ""
    return [("Waiting at", places + more)]


def serving(model: ModelInfo, workers: list[WorkerInfo]) -> Table:
    table = Table(box=None, padding=(0, 1), show_edge=False)
    for column in ("Worker", "ID", "Status", "Jobs"):
        table.add_column(column)
    for worker in workers:
        if model.name in worker.models_supported and worker.status != "gone":
            table.add_row(
                Text(printable(worker.name)),
                Text(printable(worker.id)),
                status_text(worker.status),
                Text(f"{worker.inflight}/{worker.max_concurrency}"),
            )
    return table


def relay_facts(relay: McpClientInfo, now: datetime, calls_rate: float) -> Table:
    facts: list[tuple[str, str | Text]] = [
        ("ID", relay.id),
        ("Status", status_text(relay.status)),
        ("Version", relay.version or "?"),
        ("Linked for", age(now, relay.connected_at)),
        ("In flight", str(relay.inflight)),
        ("Calls/s now", f"{rate(calls_rate)} (10 s avg)"),
        ("Calls", f"{count(relay.calls_total)} (since it connected)"),
        ("Errors", f"{count(relay.errors_total)} (since it connected)"),
    ]
    if relay.instance:
        facts.append(("Instance", relay.instance))
    return _grid(facts)


def methods(relay: McpClientInfo) -> Table:
    table = Table(box=None, padding=(0, 1), show_edge=False)
    table.add_column("Method")
    table.add_column("Calls", justify="right")
    for name, calls in sorted(relay.functions.items()):
        table.add_row(Text(name), Text(count(calls)))
    return table


_INSTANCE_STATES = {
    "this": "this (the instance the console reads)",
    "peer": "peer (another instance sharing the fleet)",
    "degraded": "degraded: this instance cannot reach Redis and serves its own links only",
}


def instance_facts(
    instance: InstanceInfo, ctx: TableContext, now: datetime, live_tokens: float
) -> Table:
    state, style = instance_state(ctx, instance)
    return _grid(
        [
            ("ID", instance.id),
            ("State", Text(_INSTANCE_STATES.get(state, state), style=style)),
            ("Address", instance.address or "-"),
            ("Version", instance.version or "?"),
            ("Up for", age(now, instance.started_at)),
            (
                "Started",
                f"{instance.started_at:%Y-%m-%d %H:%M:%S} UTC" if instance.started_at else "-",
            ),
            ("Links", f"{instance.links} (connectors and relays)"),
            ("In flight", str(instance.inflight)),
            ("Tokens/s now", f"{rate(live_tokens)} (10 s avg, its connectors)"),
        ]
    )


def linked(instance: str, snapshot: StateSnapshot, rates: RateTracker) -> Table:
    """The live connectors and MCP relays linked to an instance."""
    table = Table(box=None, padding=(0, 1), show_edge=False)
    for column in ("Linked", "Name", "ID", "Status", "Jobs", "Tok/s"):
        table.add_column(column, justify="right" if column in ("Jobs", "Tok/s") else "left")
    for worker in snapshot.workers:
        if worker.instance == instance and worker.status != "gone":
            table.add_row(
                Text("worker"),
                Text(printable(worker.name)),
                Text(printable(worker.id)),
                status_text(worker.status),
                Text(f"{worker.inflight}/{worker.max_concurrency}"),
                Text(rate(rates.worker(worker.id).tokens.rate())),
            )
    for relay in snapshot.mcp.clients:
        if relay.instance == instance and relay.status != "gone":
            table.add_row(
                Text("MCP relay"),
                Text(printable(relay.name)),
                Text(printable(relay.id)),
                status_text(relay.status),
                Text(str(relay.inflight)),
                Text(""),
            )
    return table


def set_block(block: Static, content: RenderableType) -> None:
    """Show new content in a block of variable height; lay the screen out again only when the
    block's height changes (a redraw per state would otherwise relayout the whole view)."""
    width, height = block.content_size
    block.update(content, layout=False)
    if not width or block.get_content_height(block.size, block.app.size, width) != height:
        block.refresh(layout=True)


class DetailScreen(Screen[None]):
    """One entity, redrawn with every snapshot the main screen draws."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,backspace,h", "back", "Back"),
        Binding("d", "act('drain')", "Drain"),
        Binding("u", "act('undrain')", "Undrain"),
        Binding("x", "act('shutdown')", "Shutdown"),
        Binding("j,down", "scroll(1)", "Down", show=False),
        Binding("k,up", "scroll(-1)", "Up", show=False),
    ]
    """
    | Key | Action |
    | :- | :- |
    | Esc, Backspace | Back to the table. |
    | d / u / x | Drain / undrain / shut down this connector or relay (confirmed). |
    | j / k | Scroll. |
    """

    DEFAULT_CSS = """
    DetailScreen #detail-title {
        height: 1;
        padding: 0 1;
        background: $boost;
        text-style: bold;
    }
    DetailScreen .block {
        height: auto;
        padding: 0 1 1 1;
    }
    DetailScreen #detail-keys {
        dock: bottom;
        height: 1;
        padding: 0 1;
        background: $panel;
    }
    """

    def __init__(self, kind: Kind, key: str, source: DetailSource, clock: Callable[[], datetime]):
        super().__init__()
        self.kind = kind
        self.key = key
        self.source = source
        self.clock = clock

    def compose(self) -> ComposeResult:
        yield FleetHeader(id="header")
        yield Static(id="detail-title")
        with VerticalScroll(id="detail-body"):
            yield Static(classes="block", id="detail-facts")
            if self.kind != "instance":  # no per-instance series: its figures are in the facts
                yield Graph("Requests/s" if self.kind != "relay" else "Calls/s", id="graph-a")
            if self.kind in ("worker", "model"):
                yield Graph("Tokens/s", id="graph-b")
            yield Static(classes="block", id="detail-table")
            yield Static(classes="block", id="detail-errors")
        yield Static(id="detail-keys")

    def on_mount(self) -> None:
        self.redraw()
        self.source.redraw_header()

    def on_screen_resume(self) -> None:
        self.source.redraw_header()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action != "act":
            return True
        if self.kind not in ("worker", "relay") or self.source.why_not_act() is not None:
            return None
        return None if self.entity_status() in (None, "gone") else True

    def entity_status(self) -> str | None:
        snapshot = self.source.snapshot
        if snapshot is None:
            return None
        if self.kind == "worker":
            worker = next((w for w in snapshot.workers if w.id == self.key), None)
            return worker.status if worker else None
        if self.kind == "relay":
            relay = next((r for r in snapshot.mcp.clients if r.id == self.key), None)
            return relay.status if relay else None
        return self.kind

    def redraw(self) -> None:
        """Draw the entity from the source's latest snapshot (it may have left the fleet)."""
        snapshot = self.source.snapshot
        title = self.query_one("#detail-title", Static)
        if snapshot is None:
            return
        now = snapshot.server.now
        rates = self.source.rates
        facts = self.query_one("#detail-facts", Static)
        table = self.query_one("#detail-table", Static)
        errors = self.query_one("#detail-errors", Static)
        if self.kind == "instance":
            self._redraw_instance(snapshot)
            return
        graph_a = self.query_one("#graph-a", Graph)
        if self.kind == "worker":
            worker = next((w for w in snapshot.workers if w.id == self.key), None)
            if worker is None:
                title.update(
                    Text(f"Worker {self.key} is no longer in the fleet.", style="dim"), layout=False
                )
                return
            head = Text(f"Worker {printable(worker.name or worker.id)}  ")
            head.append_text(status_text(worker.status))
            title.update(head, layout=False)  # one line, fixed height
            activity = rates.worker(worker.id)
            live = self.source.ctx.live_heartbeats
            set_block(facts, worker_facts(worker, now, activity.tokens.rate(), live))
            graph_a.show(activity.requests.series(), activity.requests.rate())
            self.query_one("#graph-b", Graph).show(activity.tokens.series(), activity.tokens.rate())
            set_block(table, per_model(worker))
            set_block(errors, _errors(self.source.errors.of(f"worker:{worker.id}"), now))
        elif self.kind == "model":
            model = next((m for m in snapshot.models if m.name == self.key), None)
            if model is None:
                title.update(
                    Text(f"Model {self.key} is no longer served.", style="dim"), layout=False
                )
                return
            title.update(Text(f"Model {model.name}"), layout=False)  # one line, fixed height
            activity = rates.model(model.name)
            set_block(facts, model_facts(model, rates))
            graph_a.show(activity.requests.series(), activity.requests.rate())
            self.query_one("#graph-b", Graph).show(activity.tokens.series(), activity.tokens.rate())
            set_block(table, serving(model, snapshot.workers))
            set_block(errors, Text(""))
        else:
            relay = next((r for r in snapshot.mcp.clients if r.id == self.key), None)
            if relay is None:
                title.update(
                    Text(f"MCP relay {self.key} is no longer connected.", style="dim"), layout=False
                )
                return
            head = Text(f"MCP relay {printable(relay.name or relay.id)}  ")
            head.append_text(status_text(relay.status))
            title.update(head, layout=False)  # one line, fixed height
            calls = rates.relays.get(relay.id)
            calls_rate = calls.rate() if calls else 0.0
            set_block(facts, relay_facts(relay, now, calls_rate))
            graph_a.show(calls.series() if calls else [], calls_rate)
            set_block(table, methods(relay))
            set_block(errors, _errors(self.source.errors.of(f"relay:{relay.id}"), now))
        self.query_one("#detail-keys", Static).update(self._keys(), layout=False)  # one line

    def _redraw_instance(self, snapshot: StateSnapshot) -> None:
        title = self.query_one("#detail-title", Static)
        instance = next((i for i in snapshot.server.instances if i.id == self.key), None)
        if instance is None:
            title.update(
                Text(f"Instance {self.key} is no longer in the fleet.", style="dim"), layout=False
            )
            return
        title.update(Text(f"Server instance {printable(instance.id)}"), layout=False)
        rates = self.source.rates
        tokens = sum(
            rates.worker(w.id).tokens.rate() for w in snapshot.workers if w.instance == instance.id
        )
        now = snapshot.server.now
        set_block(
            self.query_one("#detail-facts", Static),
            instance_facts(instance, self.source.ctx, now, tokens),
        )
        set_block(self.query_one("#detail-table", Static), linked(instance.id, snapshot, rates))
        set_block(self.query_one("#detail-errors", Static), Text(""))
        self.query_one("#detail-keys", Static).update(self._keys(), layout=False)  # one line

    def _keys(self) -> Text:
        """The keys of this view (a footer costs a recompose on every switch); actions that
        cannot be sent are dimmed."""
        text = Text()
        text.append("Esc", style="bold")
        text.append(" back  ")
        can_act = self.check_action("act", ()) is True
        for key, words in (("d", "drain"), ("u", "undrain"), ("x", "shutdown")):
            text.append(key, style="bold" if can_act else "dim")
            text.append(f" {words}  ", style="" if can_act else "dim")
        text.append("j/k", style="bold")
        text.append(" scroll  ")
        text.append("?", style="bold")
        text.append(" help")
        return text

    def action_back(self) -> None:
        self.dismiss()

    def action_act(self, action: Action) -> None:
        if self.kind in ("worker", "relay"):
            self.source.request_action(self.kind, self.key, action)

    def action_scroll(self, step: int) -> None:
        body = self.query_one("#detail-body", VerticalScroll)
        body.scroll_relative(y=step, animate=False)
