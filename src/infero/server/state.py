"""`/api/state` and `/api/state/stream`: the fleet as one `StateSnapshot`. See docs/state.md."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import islice

from aiohttp import web

from infero.common.buildinfo import BUILD
from infero.protocol.state import (
    McpState,
    ModelInfo,
    PerModelCounters,
    ServerInfo,
    ServerState,
    StateSnapshot,
    WorkerInfo,
    WorkersSummary,
)
from infero.server.lifecycle import Lifecycle
from infero.server.registry import Counters, Fleet, Pending, Worker
from infero.server.scheduler import Scheduler

STREAM_PERIOD = 2.0
"""A snapshot at least this often on the stream (seconds)."""
STREAM_COALESCE = 0.1
"""Changes closer together than this go out as one event."""
KEEPALIVE = 1.0
"""Comment line when nothing was sent for this long."""
MAX_CONNECTING_LISTED = 20
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
    """Builds snapshots from the fleet, the scheduler's queues and the lifecycle."""

    def __init__(
        self,
        *,
        fleet: Fleet,
        scheduler: Scheduler,
        lifecycle: Lifecycle,
        mcp: Callable[[], Callable[[], McpState]],
    ) -> None:
        self.fleet = fleet
        self.scheduler = scheduler
        self.lifecycle = lifecycle
        self.mcp = mcp
        self.started = time.time()

    def snapshot(self) -> StateSnapshot:
        """The current document."""
        fleet = self.fleet
        fleet.prune_gone()
        now = time.time()
        mono = time.monotonic()
        workers = sorted(fleet.workers.values(), key=lambda w: w.connected_at)
        queues = self.scheduler.queues
        infos = [self._worker(w, now, mono) for w in workers]
        connecting = [_connecting(p) for p in islice(fleet.pending.values(), MAX_CONNECTING_LISTED)]
        summary = WorkersSummary(
            connected=sum(1 for w in workers if w.live),
            working=sum(1 for i in infos if i.status == "busy"),
            idle=sum(1 for i in infos if i.status == "idle"),
            draining=sum(1 for i in infos if i.status == "draining"),
            not_ready=sum(1 for i in infos if i.status == "not_ready"),
            gone=sum(1 for i in infos if i.status == "gone"),
        )
        names = {m for w in workers if w.live for m in w.models} | set(queues)
        models = [self._model(name, workers) for name in sorted(names)]
        state: ServerState = (
            "draining"
            if self.lifecycle.draining
            else "ready"
            if any(w.serving for w in workers)
            else "not_ready"
        )
        totals = list(fleet.model_totals.values())
        server = ServerInfo(
            now=_dt(now),
            version=BUILD.version,
            started_at=_dt(self.started),
            build_sha=BUILD.sha,
            build_date=BUILD.date,
            state=state,
            draining=self.lifecycle.draining,
            uptime_s=int(now - self.started),
            jobs_inflight_total=sum(w.inflight for w in workers),
            jobs_completed_total=sum(c.success_total for c in totals),
            jobs_failed_total=sum(c.error_total for c in totals),
            jobs_cancelled_total=sum(c.cancelled_total for c in totals),
            scheduler_queue_len=sum(len(q) for q in queues.values()),
        )
        return StateSnapshot(
            server=server,
            workers_summary=summary,
            models=models,
            workers=infos + connecting,
            mcp=self.mcp()(),
        )

    def _worker(self, w: Worker, now: float, mono: float) -> WorkerInfo:
        stats = w.stats
        link = w.link
        if link is not None:
            last_heartbeat = now - (mono - link.liveness.last_received)
        else:
            last_heartbeat = w.disconnected_at or w.connected_at
        processed = stats.processed_total
        processing_ms = int(stats.processing_s_total * 1000)
        total = stats.total
        return WorkerInfo(
            id=w.id,
            name=w.name,
            status=w.status,
            connected_at=_dt(w.connected_at),
            last_heartbeat=_dt(last_heartbeat),
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
            processed_total=processed,
            processing_ms_total=processing_ms,
            avg_processing_ms=_avg(processing_ms, processed),
            failures_total=stats.failures_total,
            cancelled_total=total.cancelled_total,
            queue_len=sum(self.scheduler.queue_len(m) for m in w.models),
            last_error=stats.last_error or w.link_error,
            tokens_in_total=total.tokens_in_total,
            tokens_out_total=total.tokens_out_total,
            tokens_total=total.tokens_in_total + total.tokens_out_total,
            avg_tokens_per_second=_tps(total),
            avg_ttft_ms=_avg(total.ttft_s_total * 1000, total.ttft_count),
            per_model={
                name: PerModelCounters(
                    success_total=c.success_total,
                    error_total=c.error_total,
                    cancelled_total=c.cancelled_total,
                    tokens_in_total=c.tokens_in_total,
                    tokens_out_total=c.tokens_out_total,
                )
                for name, c in sorted(stats.per_model.items())
            },
        )

    def _model(self, name: str, workers: list[Worker]) -> ModelInfo:
        owners = [w for w in workers if w.live and name in w.models]
        c = self.fleet.model_totals.get(name) or Counters()
        queue_len = self.scheduler.queue_len(name)
        wait_s = self.scheduler.oldest_wait_s(name)
        return ModelInfo(
            name=name,
            workers=len(owners),
            ready_workers=sum(1 for w in owners if w.serving),
            queue_len=queue_len,
            oldest_wait_ms=int(wait_s * 1000),
            queued_since=_dt(time.time() - wait_s) if queue_len else None,
            requests_total=c.requests_total,
            success_total=c.success_total,
            error_total=c.error_total,
            cancelled_total=c.cancelled_total,
            tokens_in_total=c.tokens_in_total,
            tokens_out_total=c.tokens_out_total,
            avg_ttft_ms=_avg(c.ttft_s_total * 1000, c.ttft_count),
            avg_duration_ms=_avg(c.duration_s_total * 1000, c.requests_total),
            avg_tokens_per_second=_tps(c),
        )


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


def setup(app: web.Application, builder: StateBuilder) -> None:
    """Mount `/api/state` and `/api/state/stream` (behind the API key, see middleware)."""
    changes = builder.fleet.changes
    lifecycle = builder.lifecycle

    async def state(_: web.Request) -> web.Response:
        return web.Response(
            text=builder.snapshot().model_dump_json() + "\n", content_type="application/json"
        )

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        event_id = 0
        try:
            await response.write(b"retry: 1000\n\n")
            while not lifecycle.stopping.is_set():
                seen = changes.version
                event_id += 1
                data = builder.snapshot().model_dump_json()
                await response.write(f"id: {event_id}\ndata: {data}\n\n".encode())
                sent = loop.time()
                while True:
                    remaining = sent + STREAM_PERIOD - loop.time()
                    if remaining <= 0 or lifecycle.stopping.is_set():
                        break
                    try:
                        async with asyncio.timeout(min(remaining, KEEPALIVE)):
                            await changes.wait(seen)
                    except TimeoutError:
                        if loop.time() - sent >= KEEPALIVE and remaining > KEEPALIVE:
                            await response.write(b": keepalive\n\n")
                        continue
                    await asyncio.sleep(STREAM_COALESCE)
                    break
        except ConnectionResetError:
            return response
        return response

    app.router.add_get("/api/state", state)
    app.router.add_get("/api/state/stream", stream)
