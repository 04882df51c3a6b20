"""`FederatedState`: the shared-state seam of an instance in a fleet sharing REDIS_ADDR.

It wraps this instance's `EmbeddedState` (its own links, scheduler and queues) and adds the
view of the other instances read from Redis (`membership.py`). Routing: a local connector with
room first; else the least busy remote connector with room (load from its home's lease plus
the requests this instance sent it since; after its home refused a pick as `full`, full to
newcomers until a newer summary); else the fleet queue. With the fleet queue unreachable,
when no local connector serves the model, the least busy remote one anyway (it waits in its
home's queue), else this instance's own queue. A remote route relays over the peer channel
(`peer.py`). Request counters are the fleet's, kept in Redis (`fleetcounters.py`): a request
is counted once, by the instance that served it. MCP relays: `mcp/fleet.py` (ids leased
fleet-wide, relays of other instances) and `mcp/forward.py`. See docs/scale-out.md.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from infero.common.buildinfo import BUILD
from infero.protocol.state import (
    InstanceInfo,
    McpClientInfo,
    McpSessionInfo,
    McpStatus,
    ModelInfo,
    ServerInfo,
    WorkerInfo,
    WorkerStatus,
)
from infero.server.changes import ChangeFeed
from infero.server.embedded import EmbeddedState, LocalRoute
from infero.server.events import RequestFinished
from infero.server.fleetcounters import FleetCounters
from infero.server.fleetqueue import RACE_WINDOW, FleetQueue, FleetTicket, QueueView
from infero.server.fleetqueue import Failure as FleetQueueFailure
from infero.server.identity import ensure_unique_id
from infero.server.link import ConnectorLink, LinkHandler
from infero.server.mcp.fleet import FederatedRelays
from infero.server.membership import (
    ConnectorSummary,
    Lease,
    Membership,
    RelayDetail,
    RelaySummary,
    SessionSummary,
)
from infero.server.peer import PeerClient, PeerRoute, Reservations
from infero.server.registry import Counters, Worker, WorkerStats
from infero.server.settings import ServerSettings
from infero.server.shared import (
    Action,
    FleetGauges,
    Kind,
    ModelEntry,
    Route,
    Ticket,
    Verdict,
)
from infero.server.state import model_counters, worker_counters
from infero.server.statefeed import Built, Offer, Scan
from infero.server.statefeed import Kind as RowKind

Placed = tuple[Lease, ConnectorSummary]
"""A remote connector and the lease of its home."""

RESERVE_TRIES = 3
"""Homes a head of the fleet queue asks for a slot in one attempt."""


def instance_identity(settings: ServerSettings) -> tuple[str, str]:
    """This instance's id and internal base URL (INSTANCE_ID, INSTANCE_ADDR or defaults)."""
    host = socket.gethostname()
    scheme = "https" if settings.tls_cert_file else "http"
    address = settings.instance_addr or f"{scheme}://{host}:{settings.port}"
    return settings.instance_id or f"{host}:{settings.port}", address.rstrip("/")


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class FederatedDispatcher:
    """Local connectors first, then remote ones through their home; the fleet-wide queue.

    `local_only` (the home side of relayed requests): this instance's connectors only.
    """

    __slots__ = ("_local_only", "_state")

    def __init__(self, state: FederatedState, *, local_only: bool = False) -> None:
        self._state = state
        self._local_only = local_only

    def known(self, model: str, target: str | None) -> bool:
        state = self._state
        if state.local.dispatcher.known(model, target):
            return True
        return not self._local_only and state.serves(model, target)

    def serving_beyond(self, model: str, exclude: frozenset[str], target: str | None) -> bool:
        if self._state.local.dispatcher.serving_beyond(model, exclude, target):
            return True
        if self._local_only:
            return False
        return any(c.id not in exclude and c.serving for _, c in self._state.remote(model, target))

    async def acquire_now(
        self, model: str, exclude: frozenset[str], target: str | None
    ) -> Route | None:
        state = self._state
        degraded = state.queue_degraded()
        if not degraded and state.queue.waiting(model):
            return None  # fleet FIFO: a newcomer never overtakes (as mirrored, no Redis command)
        local = state.local.dispatcher
        route = await local.acquire_now(model, exclude, target)
        if (
            isinstance(route, LocalRoute)
            and not degraded
            and state.contested(route.worker)
            and await state.queue.waiting_now(model)  # a waiter joined elsewhere meanwhile?
        ):
            state.local.scheduler.release(route.worker)  # offered to the fleet's head
            return None
        if route is not None or self._local_only:
            return route
        found: Placed | None = None
        least = 0.0
        for lease, c in state.remote(model, target):  # the first least busy one
            if c.serving and c.id not in exclude:
                load = state.pick_load(c)
                if found is None or load < least:
                    found, least = (lease, c), load
        if found is None:
            return None
        if least < 1:  # the home serves a pick at once or refuses it (`full`)
            return state.peer_route(*found, pick=target is None)
        if degraded and not local.serving_beyond(model, exclude, target):
            return state.peer_route(*found)  # no fleet queue: it waits in its home's queue
        return None

    async def enqueue(
        self, model: str, exclude: frozenset[str], target: str | None, *, first: bool = False
    ) -> Ticket:
        """The fleet queue, or this instance's own while it is degraded (`first`: at the head,
        beyond QUEUE_MAX, for a request a connector refused `busy`, in both)."""
        state = self._state
        if not state.queue_degraded():
            try:
                return await state.queue.enqueue(
                    model, exclude, target, local_only=self._local_only, first=first
                )
            except FleetQueueFailure as failure:
                state.queue.failed(failure)
            # Degraded from now on: routed from the last good view (a remote connector's home
            # queues it) rather than waiting in this instance's own queue for nothing.
            route = await self.acquire_now(model, exclude, target)
            if route is not None:
                return _Handed(route, state.queue.seats.abandon)
        return await state.local.dispatcher.enqueue(model, exclude, target, first=first)


class _Handed:
    """A ticket holding its route at once (`Ticket` of shared.py)."""

    __slots__ = ("_free", "_route")

    def __init__(self, route: Route, free: Callable[[Route], None]) -> None:
        self._route: Route | None = route
        self._free = free

    async def position(self) -> int:
        return 0

    async def wait(self) -> Route | None:
        route, self._route = self._route, None
        return route

    async def leave(self) -> None:
        if self._route is not None:  # never taken: the client left first
            self._free(self._route)
            self._route = None


class FleetSeats:
    """Where a head of the fleet queue finds a slot: a local connector, or a remote one
    reserved at its home (`Seats` of fleetqueue.py)."""

    __slots__ = ("_state",)

    def __init__(self, state: FederatedState) -> None:
        self._state = state

    def _homed(self, ticket: FleetTicket) -> bool:
        """Redis cannot tell who heads the queue and no local connector serves the model: the
        ticket goes to a remote connector of the last good view, whose home queues it."""
        state = self._state
        return state.queue_degraded() and not state.local.dispatcher.serving_beyond(
            ticket.model, ticket.exclude, ticket.target
        )

    def _remote(
        self, ticket: FleetTicket, hint: str | None
    ) -> list[tuple[Lease, ConnectorSummary]]:
        state = self._state
        anyway = self._homed(ticket)
        found = [
            (lease, c)
            for lease, c in state.remote(ticket.model, ticket.target)
            if c.serving
            and c.id not in ticket.exclude
            and (anyway or c.id == hint or state.load(c) < 1)
        ]
        found.sort(key=lambda pair: (pair[1].id != hint, state.load(pair[1])))
        return found

    def room(self, ticket: FleetTicket, hint: str | None) -> bool:
        candidates = self._state.local.fleet.candidates(ticket.model, ticket.target).serving
        if any(w.inflight < w.capacity and w.id not in ticket.exclude for w in candidates):
            return True
        return not ticket.local_only and bool(self._remote(ticket, hint))

    def local_room(self, model: str) -> str | None:
        for worker in self._state.local.fleet.candidates(model).serving:
            if worker.inflight < worker.capacity:
                return worker.id
        return None

    async def take(self, ticket: FleetTicket, hint: str | None) -> Route | None:
        state = self._state
        local = state.local
        worker = local.scheduler.try_acquire(ticket.model, ticket.exclude, ticket.target)
        if worker is not None:
            return LocalRoute(local, worker)
        if ticket.local_only:
            return None
        remote = self._remote(ticket, hint)
        if remote and self._homed(ticket):
            return state.peer_route(*remote[0])
        for lease, c in remote[:RESERVE_TRIES]:
            token = await state.client.reserve(lease.address, ticket.model, c.id)
            if token is not None:
                return state.peer_route(lease, c, reservation=token)
        return None

    def abandon(self, route: Route) -> None:
        if isinstance(route, LocalRoute):
            self._state.local.scheduler.release(route.worker)
        else:
            self._state.unsend(route.connector_id)  # the home frees its reservation in time

    async def wake(self, instance_id: str, model: str, hint: str) -> None:
        lease = self._state.membership.peers.get(instance_id)
        if lease is not None:
            await self._state.client.wake(lease.address, model, hint)


class FederatedControl:
    """Steer a local connector directly, a remote one through its home instance."""

    __slots__ = ("_state",)

    def __init__(self, state: FederatedState) -> None:
        self._state = state

    async def steer(self, kind: Kind, connector_id: str, action: Action, by: str) -> Verdict:
        state = self._state
        verdict = await state.local.control.steer(kind, connector_id, action, by)
        if verdict != "not_linked":
            return verdict
        for lease in state.membership.peers.values():
            homed = lease.relays if kind == "mcp" else lease.connectors
            if any(c.id == connector_id for c in homed):  # an operator's action: a walk is fine
                answer = await state.client.steer(lease.address, kind, connector_id, action, by)
                return answer or "not_linked"
        return "not_linked"


class FederatedRows:
    """The rows of `/api/state`: this instance's, plus the other instances' connectors.

    The other instances' part is kept up to date by the membership's change notices: a remote
    connector's row carries a mark that changes only when that connector changed, and the
    per-model and per-status counts are adjusted per change, so a scan costs the same whatever
    the size of the rest of the fleet, and a viewer's delta carries only the changed rows.
    """

    def __init__(self, state: FederatedState) -> None:
        self._state = state
        self._workers: dict[tuple[str, str], Offer] = {}
        """Offers of remote connectors by (instance, connector id)."""
        self._stamp = 0
        """Marks of remote rows: a new one for every change."""
        self._status: dict[str, int] = {"idle": 0, "busy": 0, "draining": 0, "not_ready": 0}
        self._serving = 0
        """Remote connectors that may be given new work: this instance is `ready` with them."""
        self._models: dict[str, tuple[int, int]] = {}
        """Remote (connectors, ready connectors) by model."""
        self._figures = (0, 0, 0, 0)
        """The other instances' requests in flight, and the fleet's completed, failed and
        cancelled requests, as of the last scan."""
        self._mcp: dict[str, tuple[Offer, list[Offer]]] = {}
        """Offers of the relays linked to other instances and of their sessions, by relay id."""
        self._mcp_versions: tuple[int, int] | None = None
        """The membership's header and details versions `_mcp` was built from."""
        state.membership.listeners.append(self._changed)

    def _changed(
        self, instance: str, before: ConnectorSummary | None, after: ConnectorSummary | None
    ) -> None:
        """A remote connector appeared, changed or left."""
        if before is not None:
            self._count(before, -1)
            if after is None:
                del self._workers[(instance, before.id)]
        if after is not None:
            self._count(after, 1)
            self._stamp += 1
            self._workers[(instance, after.id)] = (
                after.id,
                self._stamp,
                _RemoteWorker(instance, after),
            )

    def recounted(self, connector_ids: set[str]) -> None:
        """The fleet's counters of these connectors changed: their remote rows get new marks."""
        for key, (connector_id, _, what) in self._workers.items():
            if connector_id in connector_ids:
                self._stamp += 1
                self._workers[key] = (connector_id, self._stamp, what)

    def _count(self, c: ConnectorSummary, sign: int) -> None:
        if c.status in self._status:
            self._status[c.status] += sign
        self._serving += sign * c.serving
        models = self._models
        for model in c.models:
            workers, ready = models.get(model, (0, 0))
            workers, ready = workers + sign, ready + sign * c.serving
            if workers:
                models[model] = (workers, ready)
            else:
                del models[model]

    def scan(self) -> Scan:
        state = self._state
        scan = state.local.rows.scan()
        counted = state.counters.requests_of_connector
        workers: list[Offer] = [
            (key, (mark, counted(key)), what) for key, mark, what in scan.offers["workers"]
        ]
        queues = state.queue_view.queues
        if queues:  # remote rows show the fleet queue of their models too
            for key, mark, what in self._workers.values():
                models = what.summary.models
                queued = sum(len(queues[m]) for m in models if m in queues)
                workers.append(
                    (key, (mark, queued), (what, queued)) if queued else (key, mark, what)
                )
        else:
            workers.extend(self._workers.values())  # re-marked when their counters change
        relays, sessions = scan.offers["mcp_clients"], scan.offers["mcp_sessions"]
        remote = self._remote_mcp()
        if remote:
            here = state.local.relays.relays  # a relay that moved here: listed once, as ours
            relays, sessions = list(relays), list(sessions)
            for relay_id, (relay, its_sessions) in remote.items():
                if relay_id not in here:
                    relays.append(relay)
                    sessions.extend(its_sessions)
        summary = scan.summary
        counts = self._status
        summary = summary.model_copy(
            update={
                "connected": summary.connected + sum(counts.values()),
                "working": summary.working + counts["busy"],
                "idle": summary.idle + counts["idle"],
                "draining": summary.draining + counts["draining"],
                "not_ready": summary.not_ready + counts["not_ready"],
            }
        )
        totals = state.counters.models().values()
        self._figures = (
            sum(lease.inflight for lease in state.membership.peers.values()),
            sum(c.success_total for c in totals),
            sum(c.error_total for c in totals),
            sum(c.cancelled_total for c in totals),
        )
        return Scan(
            offers={
                **scan.offers,
                "workers": workers,
                "models": self._model_offers(scan),
                "mcp_clients": relays,
                "mcp_sessions": sessions,
            },
            server_mark=(
                scan.server_mark,
                state.membership.header_version,
                self._figures,
                self._serving > 0,
            ),
            summary=summary,
        )

    def _remote_mcp(self) -> dict[str, tuple[Offer, list[Offer]]]:
        """Offers of the other instances' relays and their sessions (rebuilt when a header or
        a relay's details changed)."""
        membership = self._state.membership
        versions = (membership.header_version, membership.details_version)
        if versions != self._mcp_versions:
            offers: dict[str, tuple[Offer, list[Offer]]] = {}
            for relay_id, (lease, r) in self._state.relays.elsewhere().items():
                detail = membership.relay_detail(lease.id, relay_id) or RelayDetail(relay_id)
                relay: Offer = (
                    relay_id,
                    (lease.id, r, detail.functions, detail.unlisted),
                    (lease.id, r, detail),
                )
                offers[relay_id] = (
                    relay,
                    [
                        (f"{relay_id}/{s.id}", (lease.id, s), _RemoteSession(lease.id, relay_id, s))
                        for s in detail.sessions
                    ],
                )
            self._mcp, self._mcp_versions = offers, versions
        return self._mcp

    def _model_offers(self, scan: Scan) -> list[Offer]:
        """Model rows counting the other instances' connectors too."""
        remote = self._models
        counted = self._state.counters.requests_of_model
        offers: list[Offer] = []
        for name, mark, what in scan.offers["models"]:
            counts = remote.get(name, (0, 0))
            offers.append((name, (mark, counts, counted(name)), _ModelRow(name, what, counts)))
        local = {offer[0] for offer in offers}
        offers.extend(
            (name, ("remote", counts, counted(name)), _ModelRow(name, None, counts))
            for name, counts in remote.items()
            if name not in local
        )
        return offers

    def row(self, kind: RowKind, what: Any) -> Built:
        state = self._state
        queued = 0
        if isinstance(what, tuple) and isinstance(what[0], _RemoteWorker):
            what, queued = what
        if isinstance(what, _RemoteWorker):
            info = _remote_worker(what.instance, what.summary, queued)
            return Built(self._counted(info), (0, what.summary.connected_at))
        if isinstance(what, _ModelRow):
            return self._model(kind, what)
        if kind == "mcp_clients" and isinstance(what, tuple):
            instance, relay, detail = what
            return Built(_remote_relay(instance, relay, detail), (0, relay.connected_at))
        if isinstance(what, _RemoteSession):
            return Built(_remote_session(what), (0, what.session.started_at))
        built = state.local.rows.row(kind, what)
        if kind == "workers" and isinstance(built.model, WorkerInfo):
            info = built.model.model_copy(update={"instance": state.instance_id})
            return built._replace(model=self._counted(info))
        if kind in ("mcp_clients", "mcp_sessions"):
            return built._replace(
                model=built.model.model_copy(update={"instance": state.instance_id})
            )
        return built

    def _counted(self, info: WorkerInfo) -> WorkerInfo:
        """A connector's row with the fleet's counters of its id."""
        # Never counted in Redis (Redis restarted empty since): zero, not this process's own.
        stats = self._state.counters.connector(info.id) or WorkerStats()
        update = worker_counters(stats)
        update["last_error"] = stats.last_error or info.last_error
        return info.model_copy(update=update)

    def _model(self, kind: RowKind, what: _ModelRow) -> Built:
        """A model's row: connectors of every instance, the fleet's counters."""
        workers, ready = what.remote
        update = model_counters(self._state.counters.model(what.name) or Counters())
        if what.local is None:
            info = ModelInfo(name=what.name, workers=workers, ready_workers=ready)
            return Built(info.model_copy(update=update))
        built = self._state.local.rows.row(kind, what.local)
        local = built.model
        assert isinstance(local, ModelInfo)
        update["workers"] = local.workers + workers
        update["ready_workers"] = local.ready_workers + ready
        return built._replace(model=local.model_copy(update=update))

    def server(self, now: datetime) -> ServerInfo:
        state = self._state
        info = state.local.rows.server(now)
        own = state.membership.own or state.describe()
        local = state.local
        inflight_here = sum(w.inflight for w in local.fleet.workers.values() if w.live)
        instances = [_instance(own, len(local.local_links()), inflight_here)] + [
            _instance(
                lease,
                len(lease.connectors) + len(lease.relays),
                sum(c.inflight for c in lease.connectors),
            )
            for _, lease in sorted(state.membership.peers.items())
        ]
        inflight, completed, failed, cancelled = self._figures
        ready = info.state == "not_ready" and self._serving > 0  # served by another instance
        return info.model_copy(
            update={
                "state": "ready" if ready else info.state,
                "instance": state.instance_id,
                "degraded": state.membership.degraded,
                "instances": instances,
                "jobs_inflight_total": info.jobs_inflight_total + inflight,
                "jobs_completed_total": completed,
                "jobs_failed_total": failed,
                "jobs_cancelled_total": cancelled,
            }
        )


@dataclass(frozen=True, slots=True)
class _RemoteWorker:
    """A connector row of another instance."""

    instance: str
    summary: ConnectorSummary


@dataclass(frozen=True, slots=True)
class _RemoteSession:
    """An MCP session row of a relay linked to another instance."""

    instance: str
    relay_id: str
    session: SessionSummary


@dataclass(frozen=True, slots=True)
class _ModelRow:
    """A model row: this instance's part (None when only other instances serve it), and
    (connectors, ready connectors) of the other instances."""

    name: str
    local: Any
    remote: tuple[int, int]


def _instance(lease: Lease, links: int, inflight: int) -> InstanceInfo:
    """An instance's row, with its links and requests in flight as of now: this instance's
    own, another's counted from its connectors and relays as mirrored here (the change log
    keeps those fresher than a lease's header, renewed every third of LEASE_TTL), so a row
    never says 0 links beside a connector listed at that instance."""
    return InstanceInfo(
        id=lease.id,
        address=lease.address,
        version=lease.version,
        started_at=_dt(lease.started_at),
        links=links,
        inflight=inflight,
    )


def _remote_relay(instance: str, r: RelaySummary, detail: RelayDetail) -> McpClientInfo:
    status: McpStatus = r.status  # type: ignore[assignment]  # written by a peer's registry
    return McpClientInfo(
        id=r.id,
        name=r.name,
        status=status,
        inflight=r.inflight,
        connected_at=_dt(r.connected_at),
        version=r.version,
        calls_total=r.calls_total,
        errors_total=r.errors_total,
        functions=dict(detail.functions),
        last_error=r.last_error,
        last_error_at=_dt(r.last_error_at) if r.last_error_at is not None else None,
        instance=instance,
        sessions_unlisted=detail.unlisted,
    )


def _remote_session(row: _RemoteSession) -> McpSessionInfo:
    s = row.session
    return McpSessionInfo(
        id=s.id,
        client_id=row.relay_id,
        started_at=_dt(s.started_at),
        last_activity=_dt(s.last_activity),
        inflight=s.inflight,
        method=s.method,
        duration_ms=int((time.time() - s.started_at) * 1000),
        instance=row.instance,
    )


def _remote_worker(instance: str, c: ConnectorSummary, queued: int = 0) -> WorkerInfo:
    status: WorkerStatus = c.status  # type: ignore[assignment]  # written by a peer's registry
    return WorkerInfo(
        id=c.id,
        name=c.name,
        status=status,
        connected_at=_dt(c.connected_at),
        last_heartbeat=datetime.now(UTC),
        heartbeat_late=c.late,
        version=c.version,
        backend=c.backend,
        models_supported=sorted(c.models),
        max_concurrency=c.capacity,
        inflight=c.inflight,
        draining=c.status == "draining",
        queue_len=queued,
        instance=instance,
    )


class FederatedState:
    """This instance's embedded state plus the fleet seen in Redis."""

    def __init__(
        self,
        *,
        local: EmbeddedState,
        settings: ServerSettings,
        redis: Any,
        on_duplicate: Callable[[str], None] = lambda _: None,
    ) -> None:
        """`on_duplicate` is told (the error) when another process that started first holds
        this instance's id while it runs (see `Membership`)."""
        self.local = local
        self.redis = redis
        """The redis-py client of REDIS_ADDR (closed when the instance leaves the fleet)."""
        self.instance_id, self.address = instance_identity(settings)
        self.started = time.time()
        self.nonce = secrets.token_hex(8)
        """This process among all that ever used its id (written in its lease)."""
        self.ttl = settings.lease_ttl
        self.client = PeerClient(settings.peer_key)
        self.membership = Membership(
            redis=redis,
            ttl=settings.lease_ttl,
            describe=self.describe,
            changes=local.changes,
            details=lambda: self.relays.details(),
            on_duplicate=on_duplicate,
        )
        self.membership.listeners.append(self._peer_changed)
        self.membership.departures.append(self._peer_left)
        self.relays = FederatedRelays(
            local.relays,
            redis=redis,
            instance_id=self.instance_id,
            ttl=settings.lease_ttl,
            peers=lambda: self.membership.peers.values(),
            version=lambda: self.membership.header_version,
            client=self.client,
            detail=self.membership.relay_detail,
        )
        self.sent: dict[str, int] = {}
        """Requests this instance relays to each remote connector right now."""
        self.refused: dict[str, ConnectorSummary] = {}
        """Remote connectors whose home refused a pick (`full`), with the summary that showed
        room: newcomers see them full until a newer summary of theirs arrives."""
        self._summaries: dict[str, tuple[tuple[Any, ...], ConnectorSummary]] = {}
        """The last summary of each local connector, with the fields it was built from."""
        self.queue = FleetQueue(
            redis=redis,
            instance_id=self.instance_id,
            queue_max=settings.queue_max,
            queue_timeout=settings.queue_timeout,
            lease_ttl=settings.lease_ttl,
            changes=local.changes,
            alive=self._alive,
            clock=local.scheduler.clock,
        )
        self.queue.seats = FleetSeats(self)
        local.scheduler.after_dispatch = self.queue.capacity
        self.queue_view = QueueView(self.queue, local.scheduler)
        local.rows.scheduler = self.queue_view
        local.rows.instance = self.instance_id
        self.reservations = Reservations(self._reserve, self._free)
        """Slots of local connectors reserved for heads of the queue at other instances."""
        self.dispatcher = FederatedDispatcher(self)
        self.home_dispatcher = FederatedDispatcher(self, local_only=True)
        """For requests other instances relay here: local connectors, the fleet queue."""
        self.control = FederatedControl(self)
        self.rows = FederatedRows(self)
        self.counters = FleetCounters(
            redis,
            instance_id=self.instance_id,
            on_change=self._recounted,
            degraded=lambda: self.membership.degraded,
        )
        local.events.subscribe(self.counters)

    # ---- the fleet view ------------------------------------------------------------------

    def remote(self, model: str, target: str | None) -> list[tuple[Lease, ConnectorSummary]]:
        """Remote connectors advertising `model` exactly, else by alias (`target`: only it)."""
        peers = self.membership.peers
        return [
            (peers[instance], c)
            for instance, c in self.membership.index.find(model, target)
            if instance in peers
        ]

    def serves(self, model: str, target: str | None) -> bool:
        """Whether `remote` would find a connector (without building its list)."""
        peers = self.membership.peers
        return any(instance in peers for instance, _ in self.membership.index.find(model, target))

    def load(self, c: ConnectorSummary) -> float:
        """Busy fraction of a remote connector (1 or more: full)."""
        return (c.inflight + self.sent.get(c.id, 0)) / c.capacity

    def pick_load(self, c: ConnectorSummary) -> float:
        """`load` for a newcomer's pick: full after its home refused a pick of this summary
        (the fleet queue's head still asks the home, whose answer is exact)."""
        if self.refused and self.refused.get(c.id) is c:
            return 1.0
        return self.load(c)

    def peer_route(
        self, lease: Lease, c: ConnectorSummary, reservation: str = "", *, pick: bool = False
    ) -> PeerRoute:
        """A route to a remote connector, counted until it finishes (`pick`: this instance's
        routing choice, which the home refuses as `full` rather than queue)."""
        self.sent[c.id] = self.sent.get(c.id, 0) + 1

        def finished(done: RequestFinished, full: bool) -> None:
            self.unsend(c.id)
            if full:  # this view of `c` was stale; nothing reached a connector: not counted
                self.refused[c.id] = c
            else:
                self.local.events.request_relayed(done)  # counted by the instance that served it

        link = self.client.link(lease.address)
        return PeerRoute(link, c.id, finished, reservation, pick=pick)

    def _recounted(self, connector_ids: set[str]) -> None:
        self.rows.recounted(connector_ids)
        self.local.changes.bump()

    def unsend(self, connector_id: str) -> None:
        """A request this instance relayed to a remote connector ended."""
        left = self.sent.get(connector_id, 1) - 1
        if left > 0:
            self.sent[connector_id] = left
        else:
            self.sent.pop(connector_id, None)

    # ---- the fleet queue ------------------------------------------------------------------

    def queue_degraded(self) -> bool:
        """New waiters use this instance's own queue (Redis unreachable)."""
        return self.membership.degraded or self.queue.degraded

    def contested(self, worker: Worker) -> bool:
        """A newcomer taking a slot of `worker` may overtake a waiter that joined at another
        instance since this one last read the queues: the connector had no free slot, linked
        or changed its status a moment ago (RACE_WINDOW)."""
        return self.local.scheduler.clock() - worker.full_at < RACE_WINDOW

    def _alive(self) -> set[str] | None:
        if self.membership.degraded:
            return None
        return {self.instance_id, *self.membership.peers}

    def _peer_changed(
        self, _: str, before: ConnectorSummary | None, after: ConnectorSummary | None
    ) -> None:
        """A connector of another instance changed: if it may take work now, heads try."""
        if self.refused and (changed := after or before) is not None:
            self.refused.pop(changed.id, None)  # a newer summary: the view is fresh again
        if after is not None and after.serving and after.inflight < after.capacity:
            self.queue.view_changed()

    def _peer_left(self, lease: Lease) -> None:
        """Another instance left the fleet: its link goes, unless a live peer took its address
        (restarted under a new id before the old lease expired)."""
        if all(peer.address != lease.address for peer in self.membership.peers.values()):
            self.client.forget(lease.address)

    def _reserve(self, model: str, connector_id: str) -> Route | None:
        worker = self.local.scheduler.try_acquire(model, frozenset(), connector_id)
        return LocalRoute(self.local, worker) if worker is not None else None

    def _free(self, route: Route) -> None:
        if isinstance(route, LocalRoute):
            self.local.scheduler.release(route.worker)

    def woken(self, model: str, hint: str | None) -> None:
        """Another instance says our waiter heads `model`'s queue and `hint` has room."""
        self.queue.woken(model, hint)

    def describe(self) -> Lease:
        """This instance's lease as of now (an unchanged connector keeps its summary object, so
        the membership tells changed ones apart by identity first)."""
        connectors: list[ConnectorSummary] = []
        inflight = 0
        held, fresh = self._summaries, {}
        for w in self.local.fleet.workers.values():
            if not w.live:
                continue
            inflight += w.inflight
            status = w.status
            late = w.link is not None and w.link.late
            # What may change while the link lives (a new link is a new connected_at).
            key = (w.models, w.capacity, w.inflight, status, late, w.connected_at, w.name)
            known = held.get(w.id)
            if known is None or known[0] != key:
                summary = ConnectorSummary(
                    id=w.id,
                    name=w.name,
                    models=tuple(sorted(w.models)),
                    capacity=w.capacity,
                    inflight=w.inflight,
                    status=status,
                    connected_at=w.connected_at,
                    version=w.version,
                    backend=w.backend,
                    late=late,
                )
                known = (key, summary)
            fresh[w.id] = known
            connectors.append(known[1])
        self._summaries = fresh
        return Lease(
            id=self.instance_id,
            address=self.address,
            version=BUILD.version,
            started_at=self.started,
            links=len(self.local.local_links()),
            inflight=inflight,
            connectors=tuple(connectors),
            relays=self.relays.summaries(),
            nonce=self.nonce,
        )

    # ---- SharedState ---------------------------------------------------------------------

    @property
    def changes(self) -> ChangeFeed:
        return self.local.changes

    def link_handler(self, kind: Kind) -> LinkHandler:
        return self.relays if kind == "mcp" else self.local.link_handler(kind)

    def local_links(self) -> list[ConnectorLink]:
        return self.local.local_links()

    def gauges(self) -> FleetGauges:
        """This instance's gauges plus the other instances' connectors from their leases
        (connected, in flight, draining, and their models), with the fleet-wide queues."""
        gauges = self.local.gauges()
        view = self.queue_view
        inflight, connected, draining = gauges.inflight, gauges.connected, gauges.draining
        names = set(gauges.queues) | set(self.queue.mirror)
        for lease in self.membership.peers.values():
            for c in lease.connectors:
                connected += 1
                inflight += c.inflight
                draining += c.status == "draining"
                names.update(c.models)
        queues = {name: (view.queue_len(name), view.oldest_wait_s(name)) for name in names}
        return FleetGauges(queues, inflight, connected, draining)

    def ready(self) -> bool:
        return self.local.ready() or any(
            c.serving for lease in self.membership.peers.values() for c in lease.connectors
        )

    def degraded(self) -> bool:
        return self.membership.degraded

    def models(self) -> list[ModelEntry]:
        entries = {e.id: e for e in self.local.models()}
        for lease in self.membership.peers.values():
            for c in lease.connectors:
                for model in c.models:
                    known = entries.get(model)
                    owners = set(known.owners) if known else set()
                    owners.add(c.name)
                    created = known.created if known else int(c.connected_at)
                    entries[model] = ModelEntry(model, created, tuple(sorted(owners)))
        return [entries[k] for k in sorted(entries)]

    async def claim(self) -> None:
        """Before anything is written to Redis: raise `DuplicateInstance` when a live instance
        holds this instance's id (`identity.py`)."""
        await ensure_unique_id(self.redis, self.instance_id, self.address, self.ttl)

    async def run(self) -> None:
        """Local upkeep and membership, until cancelled; then leave the fleet."""
        try:
            await asyncio.gather(
                self.local.run(),
                self.membership.run(),
                self.counters.run(),
                self.queue.run(),
                self.relays.run(),
            )
        finally:
            self.reservations.close()
            await self.relays.close()
            await self.counters.close()
            await self.membership.leave()
            await self.client.close()
