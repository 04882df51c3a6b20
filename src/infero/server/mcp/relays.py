"""The MCP relays connected to this server, their calls and their clients' sessions.

`RelayRegistry` is the link handler of kind `mcp`: it assigns ids, refuses an id that
another live relay holds (the same relay instance reconnecting replaces its stale link), and
keeps the counters `/api/state` shows (`mcp.clients`, `mcp.sessions`). Sessions are the
`Mcp-Session-Id`s providers issued through a relay; one ends with a DELETE, a 404 from the
provider, or the relay's departure.
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from infero.protocol import link as lp
from infero.protocol.state import McpClientInfo, McpSessionInfo, McpState
from infero.server.exchange import Exchange
from infero.server.link import ConnectorLink, duplicate_refusal

if TYPE_CHECKING:  # fleet.py imports this module
    from infero.server.mcp.fleet import RemoteRelay

logger = logging.getLogger(__name__)

VALID_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,127}$")
"""Relay ids appear in URLs: unreserved characters only."""

MAX_SESSIONS_PER_RELAY = 1000
"""Sessions tracked per relay; the least recently active is forgotten beyond it."""

SESSION_FORGET_AFTER = timedelta(hours=1)
"""A session without traffic for this long is no longer listed (clients often never DELETE)."""

MAX_FUNCTIONS = 256
"""Distinct method names counted per relay; further ones count as `other`."""


@dataclass(eq=False)
class Relay:
    """One connected `infero mcp`."""

    id: str
    name: str
    version: str
    link: ConnectorLink
    connected_at: datetime
    auth_digest: str
    capacity: int
    """The relay's own limit (`MCP_MAX_INFLIGHT`); 0 means none announced."""
    status: lp.Status = "ready"
    last_error: str = ""
    last_error_at: datetime | None = None
    inflight: int = 0
    calls_total: int = 0
    errors_total: int = 0
    functions: Counter[str] = field(default_factory=Counter)

    def count(self, method: str) -> None:
        """Count one JSON-RPC message by method (bounded number of names)."""
        if method in self.functions or len(self.functions) < MAX_FUNCTIONS:
            self.functions[method] += 1
        else:
            self.functions["other"] += 1


@dataclass(frozen=True, slots=True)
class RelayGauges:
    """The `/metrics` gauges of the relay table at one moment."""

    relays: int
    sessions: int
    inflight: int


@dataclass(eq=False)
class Session:
    """One `Mcp-Session-Id` seen through a relay."""

    id: str
    relay_id: str
    started_at: datetime
    last_activity: datetime
    method: str = ""
    inflight: int = 0


class RelayRegistry:
    """Live relays by id and their sessions."""

    def __init__(
        self,
        *,
        on_change: Callable[[], None] = lambda: None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.relays: dict[str, Relay] = {}
        self.sessions: dict[tuple[str, str], Session] = {}
        """By (relay id, session id), least recently active first (see `_touch`)."""
        self._on_change = on_change
        self._now = now
        self._digests: frozenset[str] | None = None
        """The relays' AUTH_TOKEN digests (None: rebuilt at the next `knows_token`)."""

    # ---- link handler (kind mcp) ---------------------------------------------------------

    def connecting(self, peer: str) -> contextlib.AbstractContextManager[None]:
        """Relays are listed once accepted; nothing to show during the handshake."""
        return contextlib.nullcontext()

    def admit(self, hello: lp.Hello) -> lp.Refused | str:
        """Assign an id when none is asked for; refuse an id another live relay holds."""
        if not hello.id:
            return uuid.uuid4().hex
        if not VALID_ID.match(hello.id):
            return lp.Refused(
                reason="invalid",
                message="CLIENT_ID may use letters, digits and . _ ~ - only (at most 128)",
            )
        holder = self.relays.get(hello.id)
        if holder is not None and not holder.link.replaceable_by(hello):
            return duplicate_refusal(hello.id)
        return hello.id

    def attached(self, hello: lp.Hello, link: ConnectorLink) -> ConnectorLink | None:
        """Register the relay; return the stale link of the same id it replaces."""
        old = self.relays.get(link.id)
        self.relays[link.id] = Relay(
            id=link.id,
            name=hello.name or link.id,
            version=hello.version,
            link=link,
            connected_at=self._now(),
            auth_digest=hello.auth_sha256.lower(),
            capacity=hello.max_concurrency,
            status=hello.status,
            last_error=hello.last_error,
            last_error_at=self._now() if hello.last_error else None,
        )
        self._digests = None
        self._on_change()
        return old.link if old is not None else None

    def status(self, link: ConnectorLink, update: lp.StatusUpdate) -> None:
        """The relay's provider became (un)reachable, or it drains."""
        relay = self.relays.get(link.id)
        if relay is None or relay.link is not link:
            return
        if relay.status != update.status:
            logger.info("mcp relay %s is now %s", relay.id, update.status)
        relay.status = update.status
        if update.last_error and update.last_error != relay.last_error:
            relay.last_error, relay.last_error_at = update.last_error, self._now()
        relay.capacity = update.max_concurrency
        self._on_change()

    def detached(self, link: ConnectorLink) -> None:
        """The relay left: forget it and its sessions."""
        relay = self.relays.get(link.id)
        if relay is None or relay.link is not link:
            return
        del self.relays[link.id]
        self._digests = None
        for key in [k for k in self.sessions if k[0] == link.id]:
            del self.sessions[key]
        self._on_change()

    async def claim(self, relay_id: str, hello: lp.Hello) -> lp.Refused | str:
        """Nothing to check beyond `admit` on one instance (fleets: `mcp.fleet`)."""
        return relay_id

    # ---- calls and sessions ----------------------------------------------------------------

    async def locate(self, relay_id: str) -> RemoteRelay | None:
        """No other instance on one instance."""
        return None

    def knows_token(self, digest: str) -> bool:
        """Whether a linked relay has the AUTH_TOKEN of this digest."""
        if self._digests is None:
            self._digests = frozenset(r.auth_digest for r in self.relays.values())
        return bool(digest) and digest in self._digests

    def lookup(self, relay_id: str) -> Relay | None:
        """The connected relay with this id."""
        relay = self.relays.get(relay_id)
        return relay if relay is not None and not relay.link.closed else None

    def limit(self, relay: Relay, broker_limit: int) -> int:
        """Calls this relay may have in flight."""
        return min(broker_limit, relay.capacity) if relay.capacity > 0 else broker_limit

    def start_call(self, relay: Relay, session_id: str | None, limit: int) -> bool:
        """Count a call (a POST with requests) in flight unless `limit` are; False if refused."""
        if relay.inflight >= limit:
            return False
        relay.inflight += 1
        relay.calls_total += 1
        session = self.sessions.get((relay.id, session_id)) if session_id else None
        if session is not None:
            session.inflight += 1
        self._on_change()
        return True

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
        """Send one MCP HTTP exchange over the relay's link."""
        return await relay.link.open_exchange(
            method=method,
            path=path,
            headers=headers,
            body=body,
            stream=stream,
            model=model,
            request_id=request_id,
        )

    def forget(self, relay: Relay, exchange: Exchange) -> None:
        """The broker no longer reads `exchange`."""
        relay.link.forget(exchange)

    def links(self) -> list[ConnectorLink]:
        """Links of every connected relay."""
        return [relay.link for relay in self.relays.values()]

    def finish_call(self, relay: Relay, session_id: str | None, *, ok: bool) -> None:
        """A call ended."""
        relay.inflight = max(0, relay.inflight - 1)
        if not ok:
            relay.errors_total += 1
        session = self.sessions.get((relay.id, session_id)) if session_id else None
        if session is not None:
            session.inflight = max(0, session.inflight - 1)
            self._touch(session, self._now())
        self._on_change()

    def call_failed(self, relay: Relay, error: str) -> None:
        """A call failed on the relay's or its provider's side: its latest error."""
        relay.last_error, relay.last_error_at = error, self._now()
        self._on_change()

    def session_seen(self, relay: Relay, session_id: str, method: str) -> None:
        """A provider answer carried this `Mcp-Session-Id` (created or still alive)."""
        key = (relay.id, session_id)
        now = self._now()
        session = self.sessions.get(key)
        if session is None:
            mine = [s for k, s in self.sessions.items() if k[0] == relay.id]
            if len(mine) >= MAX_SESSIONS_PER_RELAY:
                oldest = min(mine, key=lambda s: s.last_activity)
                del self.sessions[(relay.id, oldest.id)]
            session = Session(session_id, relay.id, started_at=now, last_activity=now)
            self.sessions[key] = session
            self._on_change()
        self._touch(session, now)
        if method:
            session.method = method

    def _touch(self, session: Session, now: datetime) -> None:
        """Record activity; the session moves to the end of `sessions` (most recent)."""
        session.last_activity = now
        key = (session.relay_id, session.id)
        if self.sessions.get(key) is session:
            self.sessions[key] = self.sessions.pop(key)

    def _forget_silent(self, now: datetime) -> None:
        """Forget sessions without traffic for SESSION_FORGET_AFTER (none in flight); only the
        silent ones at the front of `sessions` are looked at."""
        stale: list[tuple[str, str]] = []
        for key, s in self.sessions.items():
            if now - s.last_activity < SESSION_FORGET_AFTER:
                break
            if not s.inflight:
                stale.append(key)
        for key in stale:
            del self.sessions[key]

    def session_ended(self, relay: Relay, session_id: str) -> None:
        """The session was deleted or the provider no longer knows it."""
        if self.sessions.pop((relay.id, session_id), None) is not None:
            self._on_change()

    # ---- state -------------------------------------------------------------------------------

    def gauges(self) -> RelayGauges:
        """Relays, live sessions and calls in flight, read from the table (nothing built)."""
        self._forget_silent(self._now())
        inflight = sum(r.inflight for r in self.relays.values())
        return RelayGauges(len(self.relays), len(self.sessions), inflight)

    def state(self) -> McpState:
        """The `mcp` part of `/api/state` (forgetting sessions silent for an hour)."""
        now = self._now()
        self._forget_silent(now)
        clients = [
            McpClientInfo(
                id=r.id,
                name=r.name,
                status=client_status(r),
                inflight=r.inflight,
                connected_at=r.connected_at,
                version=r.version,
                calls_total=r.calls_total,
                errors_total=r.errors_total,
                functions=dict(r.functions),
                last_error=r.last_error,
                last_error_at=r.last_error_at,
            )
            for r in sorted(self.relays.values(), key=lambda r: r.connected_at)
        ]
        sessions = [
            McpSessionInfo(
                id=s.id,
                client_id=s.relay_id,
                started_at=s.started_at,
                last_activity=s.last_activity,
                inflight=s.inflight,
                method=s.method,
                duration_ms=int((now - s.started_at).total_seconds() * 1000),
            )
            for s in sorted(self.sessions.values(), key=lambda s: s.started_at)
        ]
        return McpState(clients=clients, sessions=sessions)


def client_status(relay: Relay) -> str:
    """The relay's `/api/state` status."""
    if relay.status != "ready":
        return relay.status
    return "active" if relay.inflight else "idle"
