"""The columns of the fleet tables (workers, models, MCP relays, sessions, server instances);
no Textual here.

Cells read the shared `TableContext` when drawn, so ages count from the latest server time and
rates come from the fixed-window tracker without rebuilding any row.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from infero.protocol.delta import session_key
from infero.protocol.state import (
    InstanceInfo,
    McpClientInfo,
    McpSessionInfo,
    ModelInfo,
    WorkerInfo,
)
from infero_tui.columns import Cell, Column, Rows
from infero_tui.format import age, age_seconds, count, middle_ellipsis, millis, rate
from infero_tui.rates import RateTracker
from infero_tui.widgets.status_style import status_style, status_word

HEARTBEAT_AGEING_S = 8.0
"""A heartbeat older than this is shown in yellow (the server pings after 5 s of silence)."""
HEARTBEAT_LATE_S = 12.0
"""Older than this, red: the link is about to be declared dead (15 s by default)."""

_STATUS_ORDER = {
    "busy": 0,
    "active": 0,
    "idle": 1,
    "connecting": 2,
    "draining": 3,
    "not_ready": 4,
    "gone": 5,
}


@dataclass
class TableContext:
    """What cells need beyond their own row; updated once per drawn snapshot."""

    now: datetime = field(default_factory=lambda: datetime.fromtimestamp(0, UTC))
    rates: RateTracker = field(default_factory=RateTracker)
    duplicate_names: frozenset[str] = frozenset()
    duplicate_relay_names: frozenset[str] = frozenset()
    relay_names: dict[str, str] = field(default_factory=dict)
    instances: bool = False
    """Whether the server is one of several instances (the INSTANCE column is shown)."""
    this_instance: str = ""
    """The id of the instance the console reads (`server.instance`)."""
    degraded: bool = False
    """That instance cannot reach Redis (`server.degraded`)."""
    live_heartbeats: bool = True
    """False on a delta stream: a live row's `last_heartbeat` is as of its last change, so its
    age means nothing unless the row is `heartbeat_late` (the server sends it then)."""

    def note(self, workers: list[WorkerInfo], relays: list[McpClientInfo]) -> None:
        """Remember which names several live workers (or relays) share."""
        self.duplicate_names = _shared(w.name for w in workers if w.status != "gone")
        self.duplicate_relay_names = _shared(r.name for r in relays if r.status != "gone")
        self.relay_names = {r.id: r.name or r.id for r in relays}


def _shared(names: Iterable[str]) -> frozenset[str]:
    return frozenset(name for name, n in Tally(names).items() if n > 1)


def _plain(text: str) -> Cell:
    return (text, "")


def heartbeat_cell(
    now: datetime, then: datetime, gone: bool, live_heartbeats: bool = True, late: bool = False
) -> Cell:
    """The heartbeat age, yellow while it ages (or the server says it is `late`) and red when
    the link is nearly dead; `live` for a live row of a delta stream that is not late."""
    if not gone and not live_heartbeats and not late:
        return ("live", "dim")
    seconds = age_seconds(now, then) or 0.0
    style = ""
    if not gone and seconds >= HEARTBEAT_LATE_S:
        style = "bold #ff8787"
    elif not gone and (late or seconds >= HEARTBEAT_AGEING_S):
        style = "#ffd75f"
    return (age(now, then), style)


def name_cell(name: str, duplicate: bool) -> Cell:
    """A name; one shared by several live rows is marked so the id column is read."""
    return (f"{name} ⧉", "#ffd75f") if duplicate else (name, "")


# ---- workers ------------------------------------------------------------------------------


def worker_rows(ctx: TableContext) -> Rows[WorkerInfo]:
    return Rows(
        key=lambda w: w.id,
        gone=lambda w: w.status == "gone",
        text=lambda w: " ".join(
            (w.name, w.id, w.status, w.version, w.instance, *w.models_supported)
        ).lower(),
        context=lambda: ctx.duplicate_names,  # a shared name is marked in its cell
    )


def worker_columns(ctx: TableContext) -> list[Column[WorkerInfo]]:
    """ID, name, status, jobs first (always shown); the rest as space allows."""
    columns: list[Column[WorkerInfo]] = [
        Column("id", "ID", 10, lambda w: _plain(middle_ellipsis(w.id, 10)), lambda w: w.id, "I"),
        Column(
            "name",
            "NAME",
            12,
            lambda w: name_cell(w.name or w.id, w.name in ctx.duplicate_names),
            lambda w: (w.name.lower(), w.id),
            "N",
            flex=True,
        ),
        Column(
            "status",
            "STATUS",
            11,
            lambda w: (status_word(w.status), status_style(w.status)),
            lambda w: _STATUS_ORDER.get(w.status, 9),
            "S",
        ),
        Column(
            "jobs",
            "JOBS",
            5,
            lambda w: _plain(f"{w.inflight}/{w.max_concurrency}"),
            lambda w: (w.inflight, w.max_concurrency),
            "J",
            justify="right",
        ),
        Column(
            "tokens",
            "TOK/S",
            6,
            lambda w: _plain(rate(ctx.rates.worker(w.id).tokens.rate())),
            lambda w: ctx.rates.worker(w.id).tokens.rate(),
            "T",
            justify="right",
            priority=2,
            volatile=True,
        ),
        Column(
            "queue",
            "QUEUE",
            5,
            lambda w: (str(w.queue_len), "bold #ffd75f" if w.queue_len else ""),
            lambda w: w.queue_len,
            "Q",
            justify="right",
            priority=3,
        ),
        Column(
            "seen",
            "SEEN",
            7,
            lambda w: heartbeat_cell(
                ctx.now, w.last_heartbeat, w.status == "gone", ctx.live_heartbeats, w.heartbeat_late
            ),
            lambda w: -w.last_heartbeat.timestamp(),
            "A",
            justify="right",
            priority=1,
        ),
        Column(
            "failures",
            "FAIL",
            5,
            lambda w: (count(w.failures_total), "#ff8787" if w.failures_total else ""),
            lambda w: w.failures_total,
            "F",
            justify="right",
            priority=4,
        ),
        Column(
            "ttft",
            "AVG TTFT",
            8,
            lambda w: _plain(millis(w.avg_ttft_ms)),
            lambda w: w.avg_ttft_ms,
            "L",
            justify="right",
            priority=5,
        ),
        Column(
            "version",
            "VERSION",
            9,
            lambda w: _plain(w.version or "?"),
            lambda w: w.version,
            "V",
            priority=6,
        ),
    ]
    columns.append(
        Column(
            "instance",
            "INSTANCE",
            10,
            lambda w: _plain(w.instance or "-"),
            lambda w: w.instance,
            "X",
            priority=7,
            shown=lambda: ctx.instances,  # several server instances share the fleet
        )
    )
    return columns


# ---- models -------------------------------------------------------------------------------


def model_rows() -> Rows[ModelInfo]:
    return Rows(
        key=lambda m: m.name,
        gone=lambda m: m.workers == 0,
        text=lambda m: m.name.lower(),
    )


def model_columns(ctx: TableContext) -> list[Column[ModelInfo]]:
    return [
        Column(
            "name", "MODEL", 14, lambda m: _plain(m.name), lambda m: m.name.lower(), "N", flex=True
        ),
        Column(
            "workers",
            "READY",
            6,
            lambda m: (
                f"{m.ready_workers}/{m.workers}",
                "" if m.ready_workers else "bold #ff8787",
            ),
            lambda m: (m.ready_workers, m.workers),
            "W",
            justify="right",
        ),
        Column(
            "queue",
            "QUEUE",
            5,
            lambda m: (str(m.queue_len), "bold #ffd75f" if m.queue_len else ""),
            lambda m: m.queue_len,
            "Q",
            justify="right",
        ),
        Column(
            "oldest",
            "OLDEST",
            7,
            lambda m: _plain(millis(m.oldest_wait_ms)),
            lambda m: m.oldest_wait_ms,
            "O",
            justify="right",
            priority=3,
        ),
        Column(
            "requests",
            "REQ/S",
            6,
            lambda m: _plain(rate(ctx.rates.model(m.name).requests.rate())),
            lambda m: ctx.rates.model(m.name).requests.rate(),
            "R",
            justify="right",
            volatile=True,
        ),
        Column(
            "tokens",
            "TOK/S",
            7,
            lambda m: _plain(rate(ctx.rates.model(m.name).tokens.rate())),
            lambda m: ctx.rates.model(m.name).tokens.rate(),
            "T",
            justify="right",
            volatile=True,
        ),
        Column(
            "ttft",
            "AVG TTFT",
            8,
            lambda m: _plain(millis(m.avg_ttft_ms)),
            lambda m: m.avg_ttft_ms,
            "L",
            justify="right",
            priority=2,
        ),
        Column(
            "errors",
            "ERRORS",
            6,
            lambda m: (count(m.error_total), "#ff8787" if m.error_total else ""),
            lambda m: m.error_total,
            "E",
            justify="right",
            priority=1,
        ),
        Column(
            "total",
            "REQUESTS",
            8,
            lambda m: _plain(count(m.requests_total)),
            lambda m: m.requests_total,
            "C",
            justify="right",
            priority=4,
        ),
    ]


# ---- MCP relays and sessions --------------------------------------------------------------


def relay_rows() -> Rows[McpClientInfo]:
    return Rows(
        key=lambda r: r.id,
        gone=lambda r: r.status == "gone",
        text=lambda r: " ".join(
            (r.name, r.id, r.status, r.version, r.instance, *r.functions)
        ).lower(),
    )


def relay_columns(ctx: TableContext) -> list[Column[McpClientInfo]]:
    return [
        Column("id", "ID", 10, lambda r: _plain(middle_ellipsis(r.id, 10)), lambda r: r.id, "I"),
        Column(
            "name",
            "NAME",
            12,
            lambda r: _plain(r.name or r.id),
            lambda r: r.name.lower(),
            "N",
            flex=True,
        ),
        Column(
            "status",
            "STATUS",
            11,
            lambda r: (status_word(r.status), status_style(r.status)),
            lambda r: _STATUS_ORDER.get(r.status, 9),
            "S",
        ),
        Column(
            "inflight",
            "JOBS",
            5,
            lambda r: _plain(str(r.inflight)),
            lambda r: r.inflight,
            "J",
            justify="right",
        ),
        Column(
            "rate",
            "CALLS/S",
            7,
            lambda r: _plain(
                rate(ctx.rates.relays[r.id].rate() if r.id in ctx.rates.relays else 0)
            ),
            lambda r: ctx.rates.relays[r.id].rate() if r.id in ctx.rates.relays else 0.0,
            "R",
            justify="right",
            priority=1,
            volatile=True,
        ),
        Column(
            "errors",
            "ERRORS",
            6,
            lambda r: (count(r.errors_total), "#ff8787" if r.errors_total else ""),
            lambda r: r.errors_total,
            "E",
            justify="right",
            priority=2,
        ),
        Column(
            "calls",
            "CALLS",
            6,
            lambda r: _plain(count(r.calls_total)),
            lambda r: r.calls_total,
            "C",
            justify="right",
            priority=3,
        ),
        Column(
            "version",
            "VERSION",
            9,
            lambda r: _plain(r.version or "?"),
            lambda r: r.version,
            "V",
            priority=4,
        ),
        Column(
            "instance",
            "INSTANCE",
            10,
            lambda r: _plain(r.instance or "-"),
            lambda r: r.instance,
            "X",
            priority=5,
            shown=lambda: ctx.instances,  # several server instances share the fleet
        ),
    ]


def session_rows(ctx: TableContext) -> Rows[McpSessionInfo]:
    return Rows(
        key=session_key,  # relay id and session id: two relays' providers may issue one id
        gone=lambda s: False,
        text=lambda s: " ".join(
            (s.id, s.method, ctx.relay_names.get(s.client_id, s.client_id))
        ).lower(),
        context=lambda: ctx.relay_names,  # the relay's name is shown
    )


def session_columns(ctx: TableContext) -> list[Column[McpSessionInfo]]:
    return [
        Column(
            "id", "SESSION", 14, lambda s: _plain(middle_ellipsis(s.id, 14)), lambda s: s.id, "I"
        ),
        Column(
            "relay",
            "RELAY",
            10,
            lambda s: _plain(ctx.relay_names.get(s.client_id, s.client_id)),
            lambda s: ctx.relay_names.get(s.client_id, s.client_id).lower(),
            "N",
            flex=True,
            volatile=True,
        ),
        Column("method", "METHOD", 14, lambda s: _plain(s.method or "-"), lambda s: s.method, "M"),
        Column(
            "inflight",
            "JOBS",
            5,
            lambda s: _plain(str(s.inflight)),
            lambda s: s.inflight,
            "J",
            justify="right",
        ),
        Column(
            "age",
            "AGE",
            8,
            lambda s: _plain(age(ctx.now, s.started_at)),
            lambda s: s.started_at,
            "A",
            justify="right",
            priority=1,
        ),
        Column(
            "last",
            "LAST CALL",
            9,
            lambda s: _plain(millis(s.duration_ms)),
            lambda s: s.duration_ms,
            "D",
            justify="right",
            priority=2,
        ),
        Column(
            "instance",
            "INSTANCE",
            10,
            lambda s: _plain(s.instance or "-"),
            lambda s: s.instance,
            "X",
            priority=3,
            shown=lambda: ctx.instances,  # several server instances share the fleet
        ),
    ]


# ---- server instances ---------------------------------------------------------------------


def instance_state(ctx: TableContext, instance: InstanceInfo) -> Cell:
    """`this` for the instance the console reads, `degraded` instead while it cannot reach
    Redis (only the instance that answers reports that), `peer` for the others."""
    if instance.id != ctx.this_instance:
        return ("peer", "")
    return ("degraded", "bold #ff8787") if ctx.degraded else ("this", "bold")


def instance_rows(ctx: TableContext) -> Rows[InstanceInfo]:
    return Rows(
        key=lambda i: i.id,
        gone=lambda i: False,  # the server lists live instances only
        text=lambda i: " ".join((i.id, i.address, i.version)).lower(),
        context=lambda: (ctx.this_instance, ctx.degraded),  # the STATE cell reads them
    )


def instance_columns(ctx: TableContext) -> list[Column[InstanceInfo]]:
    """Id, address, state always shown; the rest as space allows."""
    return [
        Column(
            "id",
            "INSTANCE",
            10,
            lambda i: _plain(middle_ellipsis(i.id, 10)),
            lambda i: i.id,
            "I",
        ),
        Column(
            "address",
            "ADDRESS",
            12,
            lambda i: _plain(i.address or "-"),
            lambda i: i.address,
            "A",
            flex=True,
        ),
        Column(
            "version",
            "VERSION",
            9,
            lambda i: _plain(i.version or "?"),
            lambda i: i.version,
            "V",
            priority=3,
        ),
        Column(
            "up",
            "UP",
            9,
            lambda i: _plain(age(ctx.now, i.started_at)),
            lambda i: -i.started_at.timestamp() if i.started_at else float("-inf"),
            "U",
            justify="right",
            priority=2,
        ),
        Column(
            "links",
            "LINKS",
            5,
            lambda i: _plain(str(i.links)),
            lambda i: i.links,
            "L",
            justify="right",
        ),
        Column(
            "inflight",
            "IN FLIGHT",
            9,
            lambda i: _plain(str(i.inflight)),
            lambda i: i.inflight,
            "J",
            justify="right",
            priority=1,
        ),
        Column(
            "state",
            "STATE",
            10,
            lambda i: instance_state(ctx, i),
            lambda i: i.id != ctx.this_instance,  # this one first
            "S",
        ),
    ]
