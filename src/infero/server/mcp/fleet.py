"""MCP relays in a fleet sharing REDIS_ADDR: fleet-wide ids and relays linked elsewhere.

`FederatedRelays` wraps this instance's `RelayRegistry`. It is the link handler of kind `mcp`
and the broker's `RelayTable`:

* **Ids unique fleet-wide.** A relay id is leased in Redis (`{infero}:relay:<id>`, value
  `<instance>\\n<relay instance nonce>`, TTL LEASE_TTL) when its link is accepted; another
  instance refuses the id (`duplicate`, as on one instance) while the lease lives, unless the
  newcomer is the same relay process (same nonce) reconnecting. Leases are renewed every third
  of LEASE_TTL (re-written when Redis lost them), released when the link closes and at
  shutdown. An instance that finds its lease taken over closes its own link of that id.
* **Relays linked elsewhere.** `remote(id)` finds a relay in the other instances' leases (the
  `relays` summaries); the broker forwards the caller's exchange there (`forward.py`). A relay
  linked a moment ago, not yet in those leases as this instance last read them, is found by
  `locate(id)` in Redis: its id lease names its home, whose header describes it (two `GET`s,
  only for an id the leases read do not list). Lookups of one id at once share one read, and
  an id found nowhere is not read again for UNKNOWN_TTL (at most UNKNOWN_MAX such ids kept;
  one the leases read list meanwhile is forgotten at once), so a caller asking again and
  again for a wrong id costs Redis about one `GET` a second. The broker asks only for a
  caller some relay could accept: an API key, or a token whose digest `knows_token` finds
  among the relays linked here and those the leases read list (no Redis read).
* **Sessions and per-method counts.** `details()` is what this instance shares of each relay
  through the change log (`membership.py`), bounded: the SHARED_SESSIONS most recently active
  sessions (the rest counted), the SHARED_FUNCTIONS most used methods (the rest under `other`),
  names and ids of at most SHARED_TEXT characters (a longer session id is counted, not listed;
  a longer method name counts under `other`). `gauges()` counts the fleet's relays, sessions
  and calls in flight from them and the leases.

Redis unreachable: ids are checked on this instance only, and leases are written when Redis
answers again (a relay that lost its id then is closed). See docs/scale-out.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from infero.protocol import link as lp
from infero.protocol.state import McpState
from infero.server.exchange import Exchange
from infero.server.link import ConnectorLink, duplicate_refusal
from infero.server.mcp.relays import (
    VALID_ID,
    Relay,
    RelayGauges,
    RelayRegistry,
    Session,
    client_status,
)
from infero.server.membership import (
    PREFIX,
    REDIS_FAILURES,
    REDIS_TIMEOUT,
    Lease,
    RelayDetail,
    RelaySummary,
    SessionSummary,
)
from infero.server.peer import PeerClient

logger = logging.getLogger(__name__)

RELAY_PREFIX = PREFIX + "relay:"

SHARED_SESSIONS = 100
"""Sessions of one relay shared with the other instances (the most recently active)."""
SHARED_FUNCTIONS = 64
"""Method names of one relay whose counts are shared (the most used; the rest under `other`)."""
SHARED_TEXT = 200
"""Longest session id or method name shared."""
UNKNOWN_TTL = 1.0
"""Seconds an id that Redis placed at no other instance is answered without reading it again."""
UNKNOWN_MAX = 4096
"""Such ids kept at once (the oldest forgotten first)."""

_CLAIM = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, '\\n', 1, true)
  local holder = sep and string.sub(cur, 1, sep - 1) or cur
  local nonce = sep and string.sub(cur, sep + 1) or ''
  if holder ~= ARGV[1] and (ARGV[3] == '' or nonce ~= ARGV[3]) then
    return holder
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. '\\n' .. ARGV[3], 'PX', ARGV[2])
return false
"""
"""Take the id unless another instance holds it for another relay process: nil, or the holder."""

_RENEW = """
local lost = {}
for i, key in ipairs(KEYS) do
  local cur = redis.call('GET', key)
  if not cur then
    redis.call('SET', key, ARGV[i + 1], 'PX', ARGV[1])
  elseif cur == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
  else
    table.insert(lost, key)
  end
end
return lost
"""
"""Renew (or re-write, after a Redis restart) every lease; the keys another instance holds."""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class RemoteRelay:
    """A relay linked to another instance, as that instance's lease describes it."""

    id: str
    instance: str
    address: str
    """The home instance's INSTANCE_ADDR."""
    auth_digest: str
    client: PeerClient


class FederatedRelays:
    """This instance's relays, fleet-wide id leases, and the relays of the other instances."""

    def __init__(
        self,
        local: RelayRegistry,
        *,
        redis: Any,
        instance_id: str,
        ttl: float,
        peers: Callable[[], Iterable[Lease]],
        version: Callable[[], int],
        client: PeerClient,
        detail: Callable[[str, str], RelayDetail | None] = lambda instance, relay: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.local = local
        self.redis = redis
        self.instance_id = instance_id
        self.ttl = ttl
        self.peers = peers
        """The other instances' live leases."""
        self.version = version
        """Changes whenever a lease of another instance (or the set of them) changes."""
        self.detail = detail
        """The sessions and counts another instance shares of its relay: (instance, relay id)."""
        self._index: dict[str, tuple[Lease, RelaySummary]] = {}
        self._digests: frozenset[str] = frozenset()
        """The AUTH_TOKEN digests of the relays in `_index`."""
        self._indexed: int | None = None
        self.client = client
        self._held: dict[str, str] = {}
        """Lease values of the ids this instance claimed, by relay id."""
        self._tasks: set[asyncio.Task[None]] = set()
        self.clock = clock
        self._unknown: OrderedDict[str, float] = OrderedDict()
        """Ids Redis placed at no other instance, with when they may be read again (oldest
        first)."""
        self._reading: dict[str, asyncio.Task[RemoteRelay | None]] = {}
        """The read of each id being located in Redis, shared by every caller asking for it."""
        self._claim = redis.register_script(_CLAIM)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    # ---- link handler (kind mcp) ---------------------------------------------------------

    def connecting(self, peer: str) -> contextlib.AbstractContextManager[None]:
        return self.local.connecting(peer)

    def admit(self, hello: lp.Hello) -> lp.Refused | str:
        return self.local.admit(hello)

    async def claim(self, relay_id: str, hello: lp.Hello) -> lp.Refused | str:
        """Lease the id in Redis; `duplicate` while another instance's relay holds it."""
        value = f"{self.instance_id}\n{hello.instance}"
        keys = [RELAY_PREFIX + relay_id]
        args = [self.instance_id, int(self.ttl * 1000), hello.instance]
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                try:
                    holder = await self._claim(keys=keys, args=args)
                except RedisConnectionError:  # a pooled connection Redis closed (it restarted)
                    holder = await self._claim(keys=keys, args=args)
        except REDIS_FAILURES as failure:
            logger.warning(
                "mcp relay %s: Redis unreachable (%s), id checked on this instance only",
                relay_id,
                failure,
            )
        else:
            if holder is not None:
                return duplicate_refusal(relay_id)
        self._held[relay_id] = value
        return relay_id

    def attached(self, hello: lp.Hello, link: ConnectorLink) -> ConnectorLink | None:
        return self.local.attached(hello, link)

    def status(self, link: ConnectorLink, update: lp.StatusUpdate) -> None:
        self.local.status(link, update)

    def detached(self, link: ConnectorLink) -> None:
        relay = self.local.relays.get(link.id)
        self.local.detached(link)
        if relay is None or relay.link is not link or link.id in self.local.relays:
            return  # a stale link replaced by a newer one of the same id
        value = self._held.pop(link.id, None)
        if value is not None:
            task = asyncio.create_task(self._give_back(link.id, value), name="mcp-relay-release")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _give_back(self, relay_id: str, value: str) -> None:
        with contextlib.suppress(*REDIS_FAILURES):
            async with asyncio.timeout(REDIS_TIMEOUT):
                await self._release(keys=[RELAY_PREFIX + relay_id], args=[value])

    # ---- the fleet's relays --------------------------------------------------------------

    def elsewhere(self) -> dict[str, tuple[Lease, RelaySummary]]:
        """The relays of the other instances by id, with their home's lease (an index rebuilt
        only when a lease changed). A relay listed twice (it moved; its old home's lease has not
        expired yet) is taken from the lease with its newer link."""
        version = self.version()
        if version != self._indexed:
            index: dict[str, tuple[Lease, RelaySummary]] = {}
            for lease in self.peers():
                for r in lease.relays:
                    known = index.get(r.id)
                    if known is None or known[1].connected_at < r.connected_at:
                        index[r.id] = (lease, r)  # a relay that moved: its newer link
            self._index, self._indexed = index, version
            self._digests = frozenset(r.auth_digest for _, r in index.values())
        return self._index

    def knows_token(self, digest: str) -> bool:
        """Whether a relay linked here, or one the others' leases as last read list, has the
        AUTH_TOKEN of this digest (memory only: no Redis read)."""
        if self.local.knows_token(digest):
            return True
        self.elsewhere()
        return bool(digest) and digest in self._digests

    def remote(self, relay_id: str) -> RemoteRelay | None:
        """The relay with this id linked to another instance, if a live lease lists it."""
        found = self.elsewhere().get(relay_id)
        if found is None:
            return None
        lease, r = found
        return RemoteRelay(r.id, lease.id, lease.address, r.auth_digest, self.client)

    async def locate(self, relay_id: str) -> RemoteRelay | None:
        """`remote`, else (a relay linked a moment ago) its home's lease read from Redis once:
        the id's holder, then the holder's header (None when Redis cannot tell). Callers asking
        for one id at once share one read; an id found nowhere is answered None without asking
        Redis for UNKNOWN_TTL, unless the leases read list it meanwhile."""
        found = self.remote(relay_id)
        if found is not None:
            self._unknown.pop(relay_id, None)  # listed now: no longer remembered as unknown
            return found
        if not VALID_ID.match(relay_id) or self._known_unknown(relay_id):
            return None
        reading = self._reading.get(relay_id)
        if reading is None:
            reading = asyncio.create_task(self._read_home(relay_id), name="mcp-relay-locate")
            self._reading[relay_id] = reading
            reading.add_done_callback(lambda done: self._read_ended(relay_id, done))
        return await asyncio.shield(reading)  # a caller leaving leaves the read to the others

    def _known_unknown(self, relay_id: str) -> bool:
        """Whether Redis placed the id at no other instance less than UNKNOWN_TTL ago."""
        until = self._unknown.get(relay_id)
        if until is None:
            return False
        if until > self.clock():
            return True
        del self._unknown[relay_id]
        return False

    def _read_ended(self, relay_id: str, done: asyncio.Task[RemoteRelay | None]) -> None:
        """A read of Redis ended: an id found nowhere is kept (the oldest beyond UNKNOWN_MAX
        forgotten)."""
        if self._reading.get(relay_id) is done:
            del self._reading[relay_id]
        if done.cancelled() or done.exception() is not None or done.result() is not None:
            return
        self._unknown[relay_id] = self.clock() + UNKNOWN_TTL
        self._unknown.move_to_end(relay_id)
        while len(self._unknown) > UNKNOWN_MAX:
            self._unknown.popitem(last=False)

    async def _read_home(self, relay_id: str) -> RemoteRelay | None:
        """The relay as its home's header in Redis describes it: the id's holder, then the
        holder's header (None when Redis cannot tell)."""
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                held = await self.redis.get(RELAY_PREFIX + relay_id)
                holder = held.partition(b"\n")[0].decode() if held else self.instance_id
                if holder == self.instance_id:
                    return None
                raw = await self.redis.get(PREFIX + "instance:" + holder)
            lease = Lease.load(raw) if raw is not None else None
        except (*REDIS_FAILURES, ValueError, KeyError, TypeError):
            return None
        relay = next((r for r in lease.relays if r.id == relay_id), None) if lease else None
        if lease is None or relay is None:
            return None  # its home has not written its header since: not reachable yet
        return RemoteRelay(relay.id, lease.id, lease.address, relay.auth_digest, self.client)

    def summaries(self) -> tuple[RelaySummary, ...]:
        """This instance's relays, for its lease."""
        return tuple(
            RelaySummary(
                id=r.id,
                name=r.name,
                version=r.version,
                status=client_status(r),
                inflight=r.inflight,
                connected_at=r.connected_at.timestamp(),
                auth_digest=r.auth_digest,
                calls_total=r.calls_total,
                errors_total=r.errors_total,
                last_error=r.last_error,
                last_error_at=r.last_error_at.timestamp() if r.last_error_at else None,
            )
            for r in self.local.relays.values()
            if not r.link.closed
        )

    def details(self) -> dict[str, RelayDetail]:
        """This instance's relays' sessions and per-method counts, bounded, for the others (the
        relays of `summaries`)."""
        sessions: dict[str, list[Session]] = {}
        for (relay_id, _), session in self.local.sessions.items():
            sessions.setdefault(relay_id, []).append(session)  # least recently active first
        return {
            r.id: _detail(r, sessions.get(r.id, []))
            for r in self.local.relays.values()
            if not r.link.closed
        }

    async def run(self) -> None:
        """Renew this instance's id leases every third of LEASE_TTL, until cancelled."""
        while True:
            await self.renew()
            await asyncio.sleep(self.ttl / 3)  # a timer: leases are due by the clock

    async def renew(self) -> None:
        """Renew (or re-write) the leases; close a link whose id another instance took over."""
        held = {i: v for i, v in self._held.items() if i in self.local.relays}
        if not held:
            return
        keys = [RELAY_PREFIX + i for i in held]
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                lost = await self._renew(keys=keys, args=[int(self.ttl * 1000), *held.values()])
        except REDIS_FAILURES:
            return  # membership reports the instance degraded; retried on the next round
        for key in lost:
            relay_id = (key.decode() if isinstance(key, bytes) else str(key))[len(RELAY_PREFIX) :]
            relay = self.local.relays.get(relay_id)
            self._held.pop(relay_id, None)
            if relay is not None:
                logger.warning(
                    "mcp relay %s: another instance holds its id now; closing this link",
                    relay_id,
                )
                relay.link.fail_exchanges("replaced by a new connection")
                await relay.link.close(1000, "replaced")

    async def close(self) -> None:
        """Release every id lease (at shutdown, all at once, within REDIS_TIMEOUT; best effort:
        they expire anyway)."""
        held, self._held = self._held, {}
        for reading in self._reading.values():
            reading.cancel()
        releases = (self._give_back(relay_id, value) for relay_id, value in held.items())
        await asyncio.gather(
            *self._tasks, *self._reading.values(), *releases, return_exceptions=True
        )

    # ---- RelayTable: this instance's relays ----------------------------------------------

    def lookup(self, relay_id: str) -> Relay | None:
        return self.local.lookup(relay_id)

    def limit(self, relay: Relay, broker_limit: int) -> int:
        return self.local.limit(relay, broker_limit)

    def start_call(self, relay: Relay, session_id: str | None, limit: int) -> bool:
        return self.local.start_call(relay, session_id, limit)

    def finish_call(self, relay: Relay, session_id: str | None, *, ok: bool) -> None:
        self.local.finish_call(relay, session_id, ok=ok)

    def call_failed(self, relay: Relay, error: str) -> None:
        self.local.call_failed(relay, error)

    async def open_exchange(self, relay: Relay, **request: Any) -> Exchange:
        """The exchange as this instance's table opens it (`RelayTable.open_exchange`)."""
        return await self.local.open_exchange(relay, **request)

    def forget(self, relay: Relay, exchange: Exchange) -> None:
        self.local.forget(relay, exchange)

    def session_seen(self, relay: Relay, session_id: str, method: str) -> None:
        self.local.session_seen(relay, session_id, method)

    def session_ended(self, relay: Relay, session_id: str) -> None:
        self.local.session_ended(relay, session_id)

    def gauges(self) -> RelayGauges:
        """The fleet's relays, live sessions and calls in flight: this instance's, plus the
        others' as their leases and shared details say (the same on every instance)."""
        mine = self.local.gauges()
        relays, sessions, inflight = mine.relays, mine.sessions, mine.inflight
        here = self.local.relays
        for relay_id, (lease, r) in self.elsewhere().items():
            if relay_id in here:
                continue  # it moved here: counted once, as ours
            relays += 1
            inflight += r.inflight
            detail = self.detail(lease.id, relay_id)
            if detail is not None:
                sessions += len(detail.sessions) + detail.unlisted
        return RelayGauges(relays, sessions, inflight)

    def state(self) -> McpState:
        """This instance's relays and sessions (the others' relays: `FederatedRows`)."""
        return self.local.state()

    def links(self) -> list[ConnectorLink]:
        return self.local.links()


def _detail(relay: Relay, sessions: list[Session]) -> RelayDetail:
    """What the other instances are told of a relay's sessions (`sessions`: least recently
    active first) and per-method counts."""
    shown = [s for s in sessions if len(s.id) <= SHARED_TEXT][-SHARED_SESSIONS:]
    functions = relay.functions
    named = [(m, n) for m, n in functions.most_common() if len(m) <= SHARED_TEXT]
    kept = dict(named[:SHARED_FUNCTIONS])
    rest = functions.total() - sum(kept.values())
    if rest:
        kept["other"] = kept.get("other", 0) + rest
    return RelayDetail(
        id=relay.id,
        functions=tuple(sorted(kept.items())),
        sessions=tuple(
            SessionSummary(
                id=s.id,
                started_at=s.started_at.timestamp(),
                last_activity=s.last_activity.timestamp(),
                inflight=s.inflight,
                method=s.method[:SHARED_TEXT],
            )
            for s in reversed(shown)
        ),
        unlisted=len(sessions) - len(shown),
    )
