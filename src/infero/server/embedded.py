"""`EmbeddedState`: the shared-state seam held in this process (no `REDIS_ADDR`).

The fleet registry, the scheduler with its per-model queues, the MCP relay table and fleet
control all live in memory; a route is a slot on a link of this instance.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from infero.protocol import link as lp
from infero.server.changes import ChangeFeed
from infero.server.events import EventBus, RequestFinished
from infero.server.exchange import Exchange, ExchangeFailed
from infero.server.lifecycle import Lifecycle
from infero.server.link import ConnectorLink, LinkHandler
from infero.server.mcp.relays import RelayRegistry
from infero.server.registry import Fleet, Worker
from infero.server.scheduler import Scheduler, Waiter
from infero.server.shared import Action, FleetGauges, Kind, ModelEntry, Route, Verdict
from infero.server.state import StateBuilder

PRUNE_PERIOD = 5.0
"""Most seconds between two sweeps of connectors gone for longer than GONE_RETENTION (a tenth
of GONE_RETENTION when that is shorter, at least 0.1 s)."""


class LocalRoute:
    """A slot on a connector linked to this instance."""

    __slots__ = ("_exchange", "_link", "_state", "worker")

    def __init__(self, state: EmbeddedState, worker: Worker) -> None:
        self._state = state
        self.worker = worker
        self._link = worker.link
        self._exchange: Exchange | None = None

    @property
    def connector_id(self) -> str:
        return self.worker.id

    @property
    def waits_when_busy(self) -> bool:
        return True

    async def open_exchange(
        self,
        *,
        method: str,
        path: str,
        headers: lp.Headers,
        body: bytes | bytearray,
        stream: bool,
        model: str,
        request_id: str,
    ) -> Exchange:
        link = self._link
        if link is None:
            raise ExchangeFailed("link_lost", "connector went away", retryable=True)
        self._exchange = await link.open_exchange(
            method=method,
            path=path,
            headers=headers,
            body=body,
            stream=stream,
            model=model,
            request_id=request_id,
        )
        return self._exchange

    async def finish(self, done: RequestFinished) -> None:
        """Count the outcome now; the slot is free once the connector has ended the call (a
        client that left, or a timeout, cancels it first): see docs/routing.md."""
        exchange, link = self._exchange, self._link
        if exchange is not None and link is not None:
            await exchange.cancel()  # nothing sent once ended; stops its wait timer
            end = exchange.end
            if end is not None and end.error is not None and end.error.code == "busy":
                # The connector had no room: it runs a call this server does not count. The
                # slot stays taken until the connector ends one; the request waits again, not
                # finished (docs/routing.md).
                link.forget(exchange)
                link.release_at_next_end(self._release)
                return
            link.release_after_end(exchange, self._release)
        else:
            self._release()
        state = self._state
        state.fleet.record(
            self.worker,
            done.model,
            outcome=done.outcome,
            error=done.error,
            duration_s=done.duration_s,
            ttft_s=done.ttft_s,
            tokens_in=done.tokens_in,
            tokens_out=done.tokens_out,
        )
        state.events.request_finished(done)

    def _release(self) -> None:
        self._state.scheduler.release(self.worker)


class LocalTicket:
    """A place in one of this instance's queues."""

    __slots__ = ("_state", "_taken", "_waiter")

    def __init__(self, state: EmbeddedState, waiter: Waiter) -> None:
        self._state = state
        self._waiter = waiter
        self._taken = False

    async def position(self) -> int:
        return self._state.scheduler.position(self._waiter)

    async def wait(self) -> Route | None:
        waiter = self._waiter
        if not waiter.future.done():
            waiter.moved.clear()
            await waiter.moved.wait()
            if not waiter.future.done():
                return None
        self._taken = True
        return LocalRoute(self._state, waiter.future.result())

    async def leave(self) -> None:
        if not self._taken:
            self._state.scheduler.leave(self._waiter)


class LocalDispatcher:
    """Routing over the in-memory fleet and queues."""

    __slots__ = ("_state",)

    def __init__(self, state: EmbeddedState) -> None:
        self._state = state

    def known(self, model: str, target: str | None) -> bool:
        return self._state.fleet.candidates(model, target).known

    def serving_beyond(self, model: str, exclude: frozenset[str], target: str | None) -> bool:
        serving = self._state.fleet.candidates(model, target).serving
        return any(w.id not in exclude for w in serving)

    async def acquire_now(
        self, model: str, exclude: frozenset[str], target: str | None
    ) -> Route | None:
        worker = self._state.scheduler.acquire_now(model, exclude, target)
        return LocalRoute(self._state, worker) if worker is not None else None

    async def enqueue(
        self, model: str, exclude: frozenset[str], target: str | None, *, first: bool = False
    ) -> LocalTicket:
        waiter = self._state.scheduler.enqueue(model, exclude, target, first=first)
        return LocalTicket(self._state, waiter)


class LocalControl:
    """Control frames to connectors linked to this instance."""

    __slots__ = ("_state",)

    def __init__(self, state: EmbeddedState) -> None:
        self._state = state

    async def steer(self, kind: Kind, connector_id: str, action: Action, by: str) -> Verdict:
        link = self._state.local_link(kind, connector_id)
        if link is None:
            return "not_linked"
        if action == "undrain" and link.shutting_down:
            return "shutting_down"
        await link.send(lp.Control(action=action, by=by))
        if action == "shutdown":
            link.shutting_down = True
        return "accepted"


class EmbeddedState:
    """The whole fleet state of one server process."""

    def __init__(
        self,
        *,
        gone_retention: float,
        queue_max: int,
        lifecycle: Lifecycle,
        events: EventBus,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.changes = ChangeFeed()
        self.events = events
        self.fleet = Fleet(
            gone_retention=gone_retention, changes=self.changes, on_capacity=self._dispatch
        )
        self.scheduler = Scheduler(self.fleet, queue_max=queue_max, clock=clock)
        self.relays = RelayRegistry(on_change=self.changes.bump)
        self.dispatcher = LocalDispatcher(self)
        self.control = LocalControl(self)
        self.rows = StateBuilder(
            fleet=self.fleet, scheduler=self.scheduler, lifecycle=lifecycle, mcp=self.relays.state
        )

    def _dispatch(self, worker: Worker) -> None:
        self.scheduler.opened(worker)

    def local_link(self, kind: Kind, connector_id: str) -> ConnectorLink | None:
        """The live link of a connector of this instance."""
        if kind == "mcp":
            relay = self.relays.lookup(connector_id)
            return relay.link if relay is not None else None
        worker = self.fleet.get_live(connector_id)
        return worker.link if worker is not None else None

    def link_handler(self, kind: Kind) -> LinkHandler:
        return self.relays if kind == "mcp" else self.fleet

    def local_links(self) -> list[ConnectorLink]:
        """Every link of this instance (LLM connectors and MCP relays)."""
        return self.fleet.live_links() + self.relays.links()

    def gauges(self) -> FleetGauges:
        fleet, scheduler = self.fleet, self.scheduler
        inflight = connected = draining = 0
        for worker in fleet.workers.values():
            if worker.live:
                connected += 1
                inflight += worker.inflight
                draining += worker.link_status == "draining"
        queues = {
            name: (scheduler.queue_len(name), scheduler.oldest_wait_s(name))
            for name in set(fleet.by_model) | set(scheduler.queues)
        }
        return FleetGauges(queues, inflight, connected, draining)

    def ready(self) -> bool:
        return any(w.serving for w in self.fleet.workers.values())

    def degraded(self) -> bool:
        """Never: the whole state is in this process."""
        return False

    def models(self) -> list[ModelEntry]:
        owners: dict[str, set[str]] = {}
        for worker in self.fleet.workers.values():
            if worker.live:
                for model in worker.models:
                    owners.setdefault(model, set()).add(worker.name)
        first_seen = self.fleet.model_first_seen
        return [
            ModelEntry(model, first_seen.get(model, 0), tuple(sorted(names)))
            for model, names in sorted(owners.items())
        ]

    async def run(self) -> None:
        """Forget connectors gone for longer than GONE_RETENTION, on a timer."""
        period = min(PRUNE_PERIOD, max(0.1, self.fleet.gone_retention / 10))
        while True:
            await asyncio.sleep(period)  # a timer: pruning is due by the clock, not by an event
            self.fleet.prune_gone()
