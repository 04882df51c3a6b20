"""`/api/state` and `/api/state/stream`: the fleet as a `StateSnapshot`, then deltas.

See docs/state.md. `StateBuilder` offers the rows, `StatePublisher` (statefeed.py) serialises
each change once and fans it out to the viewers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from itertools import islice
from typing import Any, cast

from aiohttp import web

from infero.common.buildinfo import BUILD
from infero.protocol.delta import PARTS, Part, StreamMode, session_key
from infero.protocol.state import (
    McpClientInfo,
    McpState,
    ModelInfo,
    PerModelCounters,
    ServerInfo,
    ServerState,
    StateSnapshot,
    WaiterInfo,
    WorkerInfo,
    WorkersSummary,
)
from infero.server import keys
from infero.server.errors import bad_request
from infero.server.lifecycle import Lifecycle
from infero.server.registry import Counters, Fleet, Pending, Worker, WorkerStats
from infero.server.scheduler import QueueView
from infero.server.shared import SharedState
from infero.server.statefeed import Built, Kind, Offer, Scan, Scope, StatePublisher

logger = logging.getLogger(__name__)

SETTLE = 0.05
"""Seconds the publisher waits after a change, so a burst goes out as one batch."""
SPACING = 0.5
"""Least seconds between two batches: request traffic causes at most 2 events a second."""
KEEPALIVE = 5.0
"""Comment line when nothing was sent for this long (seconds); nothing else is periodic."""
MAX_CONNECTING_LISTED = 20
WAITERS_LISTED = 20
"""Waiters a model's row lists (`waiters`); `waiters_more` counts the rest."""
"""Links in their handshake listed at most (they are not authenticated yet)."""


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _avg(total: float, count: int) -> float:
    return round(total / count, 3) if count else 0.0


def _tps(counters: Counters) -> float:
    return (
        round(counters.tokens_out_total / counters.duration_s_total, 3)
        if counters.duration_s_total > 0
        else 0.0
    )


class StateBuilder:
    """The rows of the state document, from the fleet, the scheduler's queues and the lifecycle.

    It is the `RowSource` of the `StatePublisher`: `scan()` offers a cheap fingerprint of every
    row, and `row()` builds one (to be serialised) only when its fingerprint changed.
    """

    def __init__(
        self,
        *,
        fleet: Fleet,
        scheduler: QueueView,
        lifecycle: Lifecycle,
        mcp: Callable[[], McpState],
    ) -> None:
        self.fleet = fleet
        self.scheduler = scheduler
        self.lifecycle = lifecycle
        self.mcp = mcp
        self.instance = ""
        """The id shown for waiters of this instance's own queue (set in a fleet)."""
        self.started = time.time()
        self._offset = self.started - time.monotonic()
        """Unix minus monotonic time, taken once: a waiter's `queued_since` stays the same
        from one build of its row to the next."""
        self._figures: tuple[ServerState, int, int, int, int, int] = ("not_ready", 0, 0, 0, 0, 0)

    def scan(self) -> Scan:
        """Fingerprints of every row, the summary, and the server's figures (kept for `server`)."""
        fleet = self.fleet
        queues = self.scheduler.queues
        counts = dict.fromkeys(("idle", "busy", "draining", "not_ready", "gone"), 0)
        ready: dict[str, int] = {}
        inflight = 0
        serving = False
        workers: list[Offer] = []
        for w in fleet.workers.values():
            stats = w.stats
            status = w.status
            counts[status] += 1
            inflight += w.inflight
            if w.serving:
                serving = True
                for model in w.models:
                    ready[model] = ready.get(model, 0) + 1
            queued = sum(len(queues[m]) for m in w.models if m in queues) if queues else 0
            link = w.link
            mark = (
                w.connected_at,
                link is not None and link.late,
                status,
                w.link_status,
                w.inflight,
                w.capacity,
                w.models,
                w.link_error,
                stats.processed_total,
                stats.total.requests_total,
                stats.failures_total,
                stats.last_error,
                queued,
            )
            workers.append((w.id, mark, (w, queued)))
        workers.extend(
            (p.id, (p.peer, p.opened_at), p)
            for p in islice(fleet.pending.values(), MAX_CONNECTING_LISTED)
        )
        models = [
            self._model_offer(name, ready.get(name, 0))
            for name in set(fleet.by_model) | set(queues)
        ]
        mcp = self.mcp()
        clients: list[Offer] = [
            (
                c.id,
                (c.connected_at, c.name, c.version, c.status, c.inflight, _calls(c), c.last_error),
                c,
            )
            for c in mcp.clients
        ]
        sessions: list[Offer] = [
            (session_key(s), (s.started_at, s.last_activity, s.inflight, s.method), s)
            for s in mcp.sessions
        ]
        state: ServerState = (
            "draining" if self.lifecycle.draining else "ready" if serving else "not_ready"
        )
        totals = fleet.model_totals.values()
        self._figures = (
            state,
            inflight,
            sum(c.success_total for c in totals),
            sum(c.error_total for c in totals),
            sum(c.cancelled_total for c in totals),
            sum(len(q) for q in queues.values()),
        )
        summary = WorkersSummary(
            connected=len(fleet.workers) - counts["gone"],
            working=counts["busy"],
            idle=counts["idle"],
            draining=counts["draining"],
            not_ready=counts["not_ready"],
            gone=counts["gone"],
        )
        return Scan(
            offers={
                "workers": workers,
                "models": models,
                "mcp_clients": clients,
                "mcp_sessions": sessions,
            },
            server_mark=(self.lifecycle.draining, *self._figures),
            summary=summary,
        )

    def row(self, kind: Kind, what: Any) -> Built:
        """Build a row from what `scan` offered with it."""
        if kind == "workers":
            if isinstance(what, Pending):
                return Built(_connecting(what), (1, what.opened_at))
            worker, queued = what
            info = self._worker(worker, queued, time.time(), time.monotonic())
            return Built(info, (0, worker.connected_at), info.status == "gone")
        if kind == "models":
            name, workers, ready = what
            return Built(self._model(name, workers, ready, time.time()))
        if kind == "mcp_clients":
            connected = what.connected_at
            return Built(what, (0, connected.timestamp() if connected else 0.0))
        return Built(what, (0, what.started_at.timestamp()))

    def server(self, now: datetime) -> ServerInfo:
        """The `server` object at `now`, with the figures of the last scan."""
        state, inflight, completed, failed, cancelled, queued = self._figures
        return ServerInfo(
            now=now,
            version=BUILD.version,
            started_at=_dt(self.started),
            build_sha=BUILD.sha,
            build_date=BUILD.date,
            state=state,
            draining=self.lifecycle.draining,
            uptime_s=int(now.timestamp() - self.started),
            jobs_inflight_total=inflight,
            jobs_completed_total=completed,
            jobs_failed_total=failed,
            jobs_cancelled_total=cancelled,
            scheduler_queue_len=queued,
        )

    def _model_offer(self, name: str, ready: int) -> Offer:
        workers = len(self.fleet.by_model.get(name, ()))
        queue = self.scheduler.queues.get(name)
        counters = self.fleet.model_totals.get(name)
        mark = (
            workers,
            ready,
            len(queue) if queue else 0,
            tuple((q.instance, q.enqueued_at) for q in islice(queue, WAITERS_LISTED))
            if queue
            else (),
            counters.requests_total if counters else 0,
        )
        return (name, mark, (name, workers, ready))

    def _worker(self, w: Worker, queued: int, now: float, mono: float) -> WorkerInfo:
        stats = w.stats
        link = w.link
        late = False
        if link is not None:
            last_heartbeat = now - (mono - link.liveness.last_received)
            late = link.late
        else:
            last_heartbeat = w.disconnected_at or w.connected_at
        return WorkerInfo(
            id=w.id,
            name=w.name,
            status=w.status,
            connected_at=_dt(w.connected_at),
            last_heartbeat=_dt(last_heartbeat),
            heartbeat_late=late,
            disconnected_at=_dt(w.disconnected_at) if w.disconnected_at is not None else None,
            version=w.version,
            build_sha=w.build_sha,
            build_date=w.build_date,
            protocol=w.protocol,
            backend=w.backend,
            models_supported=sorted(w.models),
            max_concurrency=w.capacity,
            inflight=w.inflight,
            draining=w.link_status == "draining",
            queue_len=queued,
            last_error=stats.last_error or w.link_error,
            **worker_counters(stats),
        )

    def _model(self, name: str, workers: int, ready: int, now: float) -> ModelInfo:
        c = self.fleet.model_totals.get(name) or Counters()
        queue_len = self.scheduler.queue_len(name)
        wait_s = self.scheduler.oldest_wait_s(name)
        waiters = [
            WaiterInfo(
                position=n,
                queued_since=_dt(q.enqueued_at + self._offset),
                instance=q.instance or self.instance,
            )
            for n, q in enumerate(islice(self.scheduler.queues.get(name, ()), WAITERS_LISTED), 1)
        ]
        return ModelInfo(
            name=name,
            workers=workers,
            ready_workers=ready,
            queue_len=queue_len,
            oldest_wait_ms=int(wait_s * 1000),
            queued_since=_dt(now - wait_s) if queue_len else None,
            waiters=waiters,
            waiters_more=max(0, queue_len - len(waiters)),
            **model_counters(c),
        )


def worker_counters(stats: WorkerStats) -> dict[str, Any]:
    """The counter fields of a connector's row (`WorkerInfo`), `last_error` aside."""
    processed = stats.processed_total
    processing_ms = int(stats.processing_s_total * 1000)
    total = stats.total
    return {
        "processed_total": processed,
        "processing_ms_total": processing_ms,
        "avg_processing_ms": _avg(processing_ms, processed),
        "failures_total": stats.failures_total,
        "cancelled_total": total.cancelled_total,
        "tokens_in_total": total.tokens_in_total,
        "tokens_out_total": total.tokens_out_total,
        "tokens_total": total.tokens_in_total + total.tokens_out_total,
        "avg_tokens_per_second": _tps(total),
        "avg_ttft_ms": _avg(total.ttft_s_total * 1000, total.ttft_count),
        "per_model": {
            name: PerModelCounters(
                success_total=c.success_total,
                error_total=c.error_total,
                cancelled_total=c.cancelled_total,
                tokens_in_total=c.tokens_in_total,
                tokens_out_total=c.tokens_out_total,
            )
            for name, c in sorted(stats.per_model.items())
        },
    }


def model_counters(c: Counters) -> dict[str, Any]:
    """The counter fields of a model's row (`ModelInfo`)."""
    return {
        "requests_total": c.requests_total,
        "success_total": c.success_total,
        "error_total": c.error_total,
        "cancelled_total": c.cancelled_total,
        "tokens_in_total": c.tokens_in_total,
        "tokens_out_total": c.tokens_out_total,
        "avg_ttft_ms": _avg(c.ttft_s_total * 1000, c.ttft_count),
        "avg_duration_ms": _avg(c.duration_s_total * 1000, c.requests_total),
        "avg_tokens_per_second": _tps(c),
    }


def _calls(client: McpClientInfo) -> tuple[int, int]:
    return client.calls_total, client.errors_total


def _connecting(pending: Pending) -> WorkerInfo:
    """A link in its handshake: only its peer address and age are known."""
    opened = _dt(pending.opened_at)
    return WorkerInfo(
        id=pending.id,
        name=pending.peer,
        status="connecting",
        connected_at=opened,
        last_heartbeat=opened,
    )


PUBLISHER = web.AppKey("state_publisher", StatePublisher)
"""The app's state publisher (its viewers, ring and published rows)."""


class _Stalled(Exception):
    """A viewer accepted no bytes for STALL_TIMEOUT."""


class ScopeError(ValueError):
    """A query parameter of `/api/state` or its stream is not understood."""


def read_scope(query: Mapping[str, str]) -> Scope:
    """`parts`, `connector` and `gone` of a state request (see docs/state.md)."""
    parts = frozenset(PARTS)
    if "parts" in query:
        asked = {p.strip() for p in query["parts"].split(",") if p.strip()}
        unknown = asked - set(PARTS)
        if unknown:
            raise ScopeError(f"parts: unknown {', '.join(sorted(unknown))}; use {', '.join(PARTS)}")
        parts = frozenset(cast("set[Part]", asked)) | {"summary"}
    gone = query.get("gone", "count")
    if gone not in ("count", "list"):
        raise ScopeError("gone: use count or list")
    connector = query.get("connector") or None
    return Scope(parts=parts, connector=connector, gone=gone == "list")


def read_mode(query: Mapping[str, str]) -> StreamMode:
    """`mode` of a stream request: `delta` (default) or `full`."""
    mode = query.get("mode", "delta")
    if mode not in ("delta", "full"):
        raise ScopeError("mode: use delta or full")
    return cast("StreamMode", mode)


def setup(app: web.Application, shared: SharedState, lifecycle: Lifecycle) -> StatePublisher:
    """Mount `/api/state` and `/api/state/stream` (behind the API key, see middleware).

    The publisher reads `shared.rows` and runs as long as the app does.
    """
    changes = shared.changes
    publisher = StatePublisher(shared.rows, changes=changes)
    stall = app[keys.SETTINGS].stall_timeout

    async def state(request: web.Request) -> web.Response:
        try:
            scope = read_scope(request.query)
        except ScopeError as exc:
            return bad_request(str(exc))
        publisher.collect()
        return web.Response(text=publisher.document(scope) + "\n", content_type="application/json")

    async def stream(request: web.Request) -> web.StreamResponse:
        try:
            scope = read_scope(request.query)
            mode = read_mode(request.query)
        except ScopeError as exc:
            return bad_request(str(exc))
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        viewer = publisher.attach(scope, mode, request.headers.get("Last-Event-ID", ""))

        async def send(data: bytes) -> None:
            try:
                async with asyncio.timeout(stall):
                    await response.write(data)
            except TimeoutError:
                raise _Stalled from None

        try:
            await send(b"retry: 1000\n\n")
            while True:
                if not viewer.wake.is_set():
                    try:
                        async with asyncio.timeout(KEEPALIVE):
                            await viewer.wake.wait()
                    except TimeoutError:
                        await send(b": keepalive\n\n")
                        continue
                if viewer.ended or publisher.closed or lifecycle.stopping.is_set():
                    break
                data = publisher.next_event(viewer)
                if data:
                    await send(data)
        except ConnectionResetError:
            pass
        except _Stalled:
            logger.info("state stream: the viewer accepted no bytes for %ss, closing it", stall)
            if request.transport is not None:
                request.transport.abort()
        finally:
            publisher.detach(viewer)
        return response

    async def background(_: web.Application) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(publisher.run(changes, settle=SETTLE, spacing=SPACING))]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(_: web.Application) -> None:
        publisher.close()

    def snapshot() -> StateSnapshot:
        publisher.collect()
        return StateSnapshot.model_validate_json(publisher.document(Scope(gone=True)))

    app[keys.SNAPSHOT] = snapshot
    app[PUBLISHER] = publisher
    app.cleanup_ctx.append(background)
    app.on_shutdown.append(close)
    app.router.add_get("/api/state", state)
    app.router.add_get("/api/state/stream", stream)
    return publisher
