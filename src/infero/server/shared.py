"""The seam between the request path and the fleet's shared state.

One `SharedState` per application holds the registry of connectors, the scheduler and its
queues, the MCP relay table and fleet control. The request path (OpenAI routes, MCP broker,
health, models, state, control) talks only to these protocols, so it does not know whether
the state lives in this process (`infero.server.embedded`) or is shared by several instances.
See docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from infero.protocol import link as lp
from infero.protocol.state import McpState
from infero.server.changes import ChangeFeed
from infero.server.events import RequestFinished
from infero.server.exchange import Exchange
from infero.server.link import ConnectorLink, LinkHandler
from infero.server.statefeed import RowSource

if TYPE_CHECKING:  # the mcp package imports this module at run time
    from infero.server.mcp.fleet import RemoteRelay
    from infero.server.mcp.relays import Relay, RelayGauges

Action = Literal["drain", "undrain", "shutdown"]
"""What an operator may ask of a connector."""

Kind = Literal["llm", "mcp"]
"""The two kinds of connector links."""

Verdict = Literal["accepted", "not_linked", "shutting_down"]
"""What became of an operator's action."""


class QueueFull(Exception):
    """The model's queue is at QUEUE_MAX."""


class Route(Protocol):
    """A connector slot already counted against its capacity; `finish` gives it back."""

    @property
    def connector_id(self) -> str:
        """The connector that serves the request."""
        ...

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
        """Send the request (raises a retryable `ExchangeFailed` when the connector is gone)."""
        ...

    @property
    def waits_when_busy(self) -> bool:
        """Whether a `busy` refusal means the connector has no room, so the request waits for
        a slot again (its `finish` then holds the slot and counts nothing); else it fails over
        (a peer instance's link at its stream limit)."""
        ...

    async def finish(self, done: RequestFinished) -> None:
        """Exactly once: end the exchange, free the slot, count the outcome, report the event."""
        ...


class Ticket(Protocol):
    """A place in a model's FIFO queue."""

    async def position(self) -> int:
        """1-based place in the queue (0 once a route was handed over)."""
        ...

    async def wait(self) -> Route | None:
        """The route once handed over; None when the position changed. Bound it with a timeout."""
        ...

    async def leave(self) -> None:
        """Give up the place (idempotent); a route handed over but not taken is freed."""
        ...


class Dispatcher(Protocol):
    """Registry, scheduler and queue: which connector serves a request, and when."""

    def known(self, model: str, target: str | None) -> bool:
        """Whether any live connector advertises `model` (exactly or by alias)."""
        ...

    def serving_beyond(self, model: str, exclude: frozenset[str], target: str | None) -> bool:
        """Whether a connector not in `exclude` serves `model` now (busy or not)."""
        ...

    async def acquire_now(
        self, model: str, exclude: frozenset[str], target: str | None
    ) -> Route | None:
        """The least busy connector with spare capacity, unless requests already queue."""
        ...

    async def enqueue(
        self, model: str, exclude: frozenset[str], target: str | None, *, first: bool = False
    ) -> Ticket:
        """Join `model`'s queue (`first`: at its head, for a request a connector refused
        `busy`); raises `QueueFull`. The caller must `leave` in the end."""
        ...


class RelayTable(Protocol):
    """The MCP relays: lookup by id, atomic call accounting, their clients' sessions."""

    def lookup(self, relay_id: str) -> Relay | None:
        """The relay with this id linked to this instance."""
        ...

    async def locate(self, relay_id: str) -> RemoteRelay | None:
        """The relay with this id linked to another instance of the fleet (REDIS_ADDR)."""
        ...

    def knows_token(self, digest: str) -> bool:
        """Whether a relay this instance knows has the AUTH_TOKEN of this SHA-256 digest (its
        own relays, and with REDIS_ADDR those the others' leases as last read list)."""
        ...

    async def claim(self, relay_id: str, hello: lp.Hello) -> lp.Refused | str:
        """After `admit`: take the id fleet-wide, or refuse it (`duplicate`)."""
        ...

    def limit(self, relay: Relay, broker_limit: int) -> int:
        """Calls this relay may have in flight."""
        ...

    def start_call(self, relay: Relay, session_id: str | None, limit: int) -> bool:
        """Count a call in flight unless the relay already runs `limit`; False when refused."""
        ...

    def finish_call(self, relay: Relay, session_id: str | None, *, ok: bool) -> None:
        """A call counted by `start_call` ended."""
        ...

    def call_failed(self, relay: Relay, error: str) -> None:
        """A call failed on the relay's or its provider's side: the relay's `last_error`."""
        ...

    async def open_exchange(
        self,
        relay: Relay,
        *,
        method: str,
        path: str,
        headers: lp.Headers,
        body: bytes | bytearray,
        stream: bool,
        model: str,
        request_id: str,
    ) -> Exchange:
        """Send one MCP HTTP exchange to the relay (raises `ExchangeFailed` when it is gone)."""
        ...

    def forget(self, relay: Relay, exchange: Exchange) -> None:
        """The broker no longer reads `exchange` (late frames for it are dropped)."""
        ...

    def session_seen(self, relay: Relay, session_id: str, method: str) -> None:
        """A provider answer carried this `Mcp-Session-Id`."""
        ...

    def session_ended(self, relay: Relay, session_id: str) -> None:
        """The session was deleted or the provider no longer knows it."""
        ...

    def state(self) -> McpState:
        """The `mcp` part of `/api/state`."""
        ...

    def gauges(self) -> RelayGauges:
        """The `/metrics` relay gauges, read from counters (no state built)."""
        ...


class FleetControl(Protocol):
    """Operator steering of any connector of the fleet."""

    async def steer(self, kind: Kind, connector_id: str, action: Action, by: str) -> Verdict:
        """Relay `action` to the connector (an undrain after a shutdown is refused)."""
        ...


@dataclass(frozen=True, slots=True)
class FleetGauges:
    """The fleet's figures at one moment, read from the registry and the queues."""

    queues: dict[str, tuple[int, float]]
    """(depth, age of the oldest waiter in seconds) for every advertised or queued model."""
    inflight: int
    connected: int
    draining: int


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model of `/api/v1/models`."""

    id: str
    created: int
    owners: tuple[str, ...]


class SharedState(Protocol):
    """Everything the request path needs of the fleet, behind one application key."""

    @property
    def dispatcher(self) -> Dispatcher: ...

    @property
    def relays(self) -> RelayTable: ...

    @property
    def control(self) -> FleetControl: ...

    @property
    def changes(self) -> ChangeFeed:
        """Bumped on every change of the fleet (links, load, queues, drain, relays)."""
        ...

    def link_handler(self, kind: Kind) -> LinkHandler:
        """What becomes of links of `kind` accepted by this instance."""
        ...

    def local_links(self) -> list[ConnectorLink]:
        """Every link of this instance (closed at shutdown)."""
        ...

    def gauges(self) -> FleetGauges:
        """The `/metrics` fleet gauges, read from counters (no snapshot)."""
        ...

    def ready(self) -> bool:
        """Some connector serves now (for `/readyz`)."""
        ...

    def degraded(self) -> bool:
        """The shared part of the state is unreachable: only this instance's links serve."""
        ...

    def models(self) -> list[ModelEntry]:
        """Every model a live connector advertises, sorted by id."""
        ...

    @property
    def rows(self) -> RowSource:
        """The rows of `/api/state` (read by the state publisher)."""
        ...

    async def run(self) -> None:
        """Upkeep for as long as the server runs (cancelled at shutdown)."""
        ...
