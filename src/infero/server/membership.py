"""Fleet membership in Redis: this instance's lease and connectors, and a mirror of the others.

Keys (every one with the `{infero}` hash tag: one Cluster slot):

* `{infero}:instances`: the set of instance ids. An instance adds itself only when it writes
  itself whole (joining, after being degraded, when Redis lost its keys: restarted empty) or
  when its poll finds it missing; not at every renewal.
* `{infero}:instance:<id>`: the instance's header, its `Lease` without connectors, with a TTL
  of LEASE_TTL: the liveness truth. Its `nonce` names the process that wrote it: every write
  reads the header first (`GET`, same pipeline), and a header written by another live process
  under this id is a duplicate INSTANCE_ID (`_claimed`: the instance started first keeps
  the id, the other stops writing and tells `on_duplicate`).
* `{infero}:connectors:<id>`: a hash, `c:<connector id>` -> `ConnectorSummary` JSON and
  `m:<relay id>` -> `RelayDetail` JSON (an MCP relay's sessions and per-method counts), plus
  `gen` (the generation, new whenever the hash is written whole) and `seq` (its last change);
  same TTL.
* `{infero}:changes`: the change log, a stream trimmed to about CHANGE_LOG entries; an entry
  names an instance, its `gen` and `seq`, and carries the summaries that changed and the ids
  that left (`u`, `r`: at most ENTRY_MAX connectors an entry; `mu`, `mr`: relay details, at
  most RELAYS_PER_ENTRY an entry; a new generation's entry says `f`: read the whole hash).

An instance writes only the connectors whose summary changed (coalesced: at most
`1 / MIN_SPACING` times a second), the relay details that changed at most every
DETAIL_SPACING seconds (at once when a relay comes or goes), and renews its keys every third
of the TTL. Every instance
tails the change log (a blocking XREAD, at most TAIL_BLOCK s) into its mirrors of the others,
and reads their small headers every REFRESH s. A peer's hash is read whole only when the peer
appears, when its generation changed, or when its mirror missed an entry. Nothing here runs
per request or per chunk. When Redis is unreachable the instance is `degraded`: it keeps its
own links, forgets the others once their leases would have expired, and re-announces (a new
generation) when Redis answers again. See docs/scale-out.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from infero.server.changes import ChangeFeed
from infero.server.registry import alias_key

logger = logging.getLogger(__name__)

PREFIX = "{infero}:"
"""Every key shares the `{infero}` hash tag: one Cluster slot, so MGET works there too."""
MEMBERS = PREFIX + "instances"
CHANGES = PREFIX + "changes"
"""The change log (a stream)."""
MIN_SPACING = 0.25
"""Least seconds between two writes caused by local changes."""
REFRESH = 1.0
"""Most seconds between two reads of the other instances' headers."""
REDIS_TIMEOUT = 2.0
"""Seconds a Redis command or connection may take before the instance counts as degraded."""
REDIS_FAILURES = (RedisError, RedisClusterException, OSError, TimeoutError)
"""What a Redis call raises when Redis (or every Cluster node) cannot be reached or answer
(`RedisClusterException`, raised when no node can be reached, is no `RedisError`)."""
CHANGE_LOG = 1000
"""Entries the change log keeps (about: trimmed with `MAXLEN ~`); a mirror that falls further
behind reads the peer whole."""
ENTRY_MAX = 64
"""Connectors one entry carries; a larger change is logged as several entries."""
TAIL_BLOCK = 1.0
"""Most seconds one read of the change log blocks."""
TAIL_COUNT = 256
"""Most entries one read of the change log returns."""
DETAIL_SPACING = 1.0
"""Least seconds between two writes of relay details (sessions change with every MCP message)."""
RELAYS_PER_ENTRY = 4
"""Relay details one entry carries (each is bounded: `mcp/fleet.py`)."""


@dataclass(frozen=True, slots=True)
class ConnectorSummary:
    """One LLM connector as its home instance advertises it."""

    id: str
    name: str
    models: tuple[str, ...]
    capacity: int
    inflight: int
    status: str
    """`idle`, `busy`, `draining` or `not_ready` (the `/api/state` status)."""
    connected_at: float
    version: str = ""
    backend: str = ""
    late: bool = False
    """Nothing heard from it for two heartbeat intervals (`heartbeat_late` in `/api/state`)."""

    @property
    def serving(self) -> bool:
        """May be given new work (its home decides for sure)."""
        return self.status in ("idle", "busy") and self.capacity > 0

    def dump(self) -> str:
        """The JSON stored in the change log and the instance's hash."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def load(cls, doc: dict[str, Any]) -> ConnectorSummary:
        """From parsed JSON; fields this version does not know are ignored (a newer peer)."""
        known = {k: v for k, v in doc.items() if k in _SUMMARY_FIELDS}
        return cls(**{**known, "models": tuple(doc["models"])})


@dataclass(frozen=True, slots=True)
class RelaySummary:
    """One MCP relay (`infero mcp`) as its home instance advertises it."""

    id: str
    name: str
    version: str
    status: str
    """`idle`, `active`, `not_ready` or `draining` (the `/api/state` status)."""
    inflight: int
    connected_at: float
    auth_digest: str
    """SHA-256 of the relay's AUTH_TOKEN ('' when none): callers are checked where they call."""
    calls_total: int = 0
    errors_total: int = 0
    last_error: str = ""
    last_error_at: float | None = None


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """One MCP session (`Mcp-Session-Id`) of a relay, as the relay's home shares it."""

    id: str
    started_at: float
    last_activity: float
    inflight: int = 0
    method: str = ""


@dataclass(frozen=True, slots=True)
class RelayDetail:
    """An MCP relay's sessions and per-method counts, as its home shares them (bounded by the
    home: `mcp/fleet.py`); written in the hash and the change log, not in the header."""

    id: str
    functions: tuple[tuple[str, int], ...] = ()
    """(JSON-RPC method, messages), sorted by method."""
    sessions: tuple[SessionSummary, ...] = ()
    unlisted: int = 0
    """Live sessions of the relay not in `sessions` (beyond the bound)."""

    def dump(self) -> str:
        """The JSON stored in the change log and the instance's hash."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def load(cls, doc: dict[str, Any]) -> RelayDetail:
        """From parsed JSON; fields this version does not know are ignored (a newer peer)."""
        known = {k: v for k, v in doc.items() if k in _DETAIL_FIELDS}
        sessions = tuple(
            SessionSummary(**{k: v for k, v in s.items() if k in _SESSION_FIELDS})
            for s in doc.get("sessions", ())
        )
        functions = tuple((str(name), int(n)) for name, n in doc.get("functions", ()))
        return cls(**{**known, "functions": functions, "sessions": sessions})


@dataclass(frozen=True, slots=True)
class Lease:
    """What an instance publishes about itself."""

    id: str
    address: str
    version: str
    started_at: float
    links: int
    """Links the instance holds: LLM connectors and MCP relays."""
    inflight: int
    connectors: tuple[ConnectorSummary, ...] = field(default=())
    relays: tuple[RelaySummary, ...] = field(default=())
    """The MCP relays linked to the instance (fleet-wide relay ids: `mcp/fleet.py`)."""
    nonce: str = ""
    """New in every process: tells the process that wrote the lease ("": an older version)."""

    def dump(self) -> str:
        """The JSON stored in Redis."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def load(cls, raw: bytes | str) -> Lease:
        """Parse a stored lease (raises ValueError, KeyError or TypeError when malformed);
        fields this version does not know are ignored (a newer peer)."""
        doc: dict[str, Any] = {k: v for k, v in json.loads(raw).items() if k in _LEASE_FIELDS}
        connectors = tuple(ConnectorSummary.load(c) for c in doc["connectors"])
        relays = tuple(
            RelaySummary(**{k: v for k, v in r.items() if k in _RELAY_FIELDS})
            for r in doc.get("relays", ())
        )
        return cls(**{**doc, "connectors": connectors, "relays": relays})


_SUMMARY_FIELDS = frozenset(f.name for f in fields(ConnectorSummary))
_RELAY_FIELDS = frozenset(f.name for f in fields(RelaySummary))
_LEASE_FIELDS = frozenset(f.name for f in fields(Lease))
_DETAIL_FIELDS = frozenset(f.name for f in fields(RelayDetail))
_SESSION_FIELDS = frozenset(f.name for f in fields(SessionSummary))


Change = tuple[ConnectorSummary | None, ConnectorSummary | None]
"""One connector of a peer before and after a change (None: absent)."""

Listener = Callable[[str, ConnectorSummary | None, ConnectorSummary | None], None]
"""Told `(instance id, before, after)` for every connector of a peer that changed."""

Departure = Callable[[Lease], None]
"""Told the last lease of a peer that left the fleet."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RemoteIndex:
    """The other instances' connectors by advertised model and by alias key, kept up to date
    per change (a membership listener), so routing looks up candidates instead of walking the
    fleet."""

    def __init__(self) -> None:
        self.by_model: dict[str, dict[tuple[str, str], ConnectorSummary]] = {}
        self.by_alias: dict[str, dict[tuple[str, str], ConnectorSummary]] = {}

    def __call__(
        self, instance: str, before: ConnectorSummary | None, after: ConnectorSummary | None
    ) -> None:
        if before is not None:
            key = (instance, before.id)
            for index, names in self._keys(before):
                for name in names:
                    holders = index.get(name)
                    if holders is not None:
                        holders.pop(key, None)
                        if not holders:
                            del index[name]
        if after is not None:
            key = (instance, after.id)
            for index, names in self._keys(after):
                for name in names:
                    index.setdefault(name, {})[key] = after

    def _keys(
        self, c: ConnectorSummary
    ) -> tuple[tuple[dict[str, dict[tuple[str, str], ConnectorSummary]], set[str]], ...]:
        aliases = {k for k in map(alias_key, c.models) if k is not None}
        return (self.by_model, set(c.models)), (self.by_alias, aliases)

    def find(self, model: str, target: str | None) -> list[tuple[str, ConnectorSummary]]:
        """(instance, connector) advertising `model` exactly, else by alias (`target`: only it)."""
        exact = self._pick(self.by_model.get(model), target)
        if exact:
            return exact
        key = alias_key(model)
        return self._pick(self.by_alias.get(key), target) if key is not None else []

    @staticmethod
    def _pick(
        found: dict[tuple[str, str], ConnectorSummary] | None, target: str | None
    ) -> list[tuple[str, ConnectorSummary]]:
        if not found:
            return []
        return [(i, c) for (i, cid), c in found.items() if target is None or cid == target]


class PeerMirror:
    """What this instance knows of one other instance; fed headers, log entries and whole reads.

    No I/O: `apply` and `load` return the connectors that changed, or say that the hash must be
    read whole (`apply` returns None).
    """

    __slots__ = (
        "connectors",
        "details",
        "details_stamp",
        "expect",
        "gen",
        "header",
        "lease",
        "seq",
    )

    def __init__(self, header: Lease) -> None:
        self.header = header
        """The peer's lease without connectors."""
        self.gen = ""
        """Generation of the peer's hash the mirror holds ("" until it was read whole)."""
        self.seq = -1
        """Last change of that generation the mirror holds."""
        self.expect: int | None = None
        """The peer's `seq` at the previous read of its header: held by now, or an entry was
        missed."""
        self.connectors: dict[str, ConnectorSummary] = {}
        self.details: dict[str, RelayDetail] = {}
        """The peer's MCP relays' sessions and per-method counts, by relay id."""
        self.details_stamp = 0
        """Bumped whenever `details` changes."""
        self.lease = header
        """`header` with the connectors (what `Membership.peers` shows)."""

    def apply(self, gen: str, seq: int, fields: dict[bytes, bytes]) -> list[Change] | None:
        """A change-log entry of this peer: the connectors it changed; None: read it whole."""
        if gen != self.gen:
            return None
        if seq <= self.seq:
            return []  # already held (the whole read was newer)
        if seq != self.seq + 1 or b"f" in fields:
            return None
        upsert = [ConnectorSummary.load(doc) for doc in json.loads(fields[b"u"])]
        removed = [str(i) for i in json.loads(fields[b"r"])]
        details = [RelayDetail.load(doc) for doc in json.loads(fields.get(b"mu", b"[]"))]
        gone = [str(i) for i in json.loads(fields.get(b"mr", b"[]"))]
        self.seq = seq
        if details or gone:
            self.details_stamp += 1
            self.details.update((d.id, d) for d in details)
            for relay_id in gone:
                self.details.pop(relay_id, None)
        changes: list[Change] = []
        for summary in upsert:
            old = self.connectors.get(summary.id)
            if old != summary:
                self.connectors[summary.id] = summary
                changes.append((old, summary))
        for connector_id in removed:
            old = self.connectors.pop(connector_id, None)
            if old is not None:
                changes.append((old, None))
        return changes

    def load(
        self,
        gen: str,
        seq: int,
        connectors: dict[str, ConnectorSummary],
        details: dict[str, RelayDetail] | None = None,
    ) -> list[Change]:
        """The peer's hash read whole: the connectors that differ from what the mirror held
        (and its relay details, when it has a hash)."""
        self.gen, self.seq, self.expect = gen, seq, None
        if details is not None and details != self.details:
            self.details = details
            self.details_stamp += 1
        old = self.connectors
        self.connectors = connectors
        changes: list[Change] = [(c, None) for i, c in old.items() if i not in connectors]
        changes.extend((old.get(i), c) for i, c in connectors.items() if old.get(i) != c)
        return changes

    def missed(self, seq: int) -> bool:
        """At a read of the header: whether an entry logged before the previous read is missing
        (trimmed before it was read, or lost with Redis)."""
        missed = self.expect is not None and self.seq < self.expect
        self.expect = seq
        return missed


class Membership:
    """This instance's lease and connectors in Redis, and mirrors of the other instances."""

    def __init__(
        self,
        *,
        redis: Any,
        ttl: float,
        describe: Callable[[], Lease],
        changes: ChangeFeed,
        details: Callable[[], dict[str, RelayDetail]] = dict,
        clock: Callable[[], float] = time.monotonic,
        on_duplicate: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.redis = redis
        self.on_duplicate = on_duplicate
        """Told (the error) when another process holds this instance's id and started first:
        this instance has stopped writing its lease and should stop."""
        self.duplicate: Lease | None = None
        """The header of the process that holds this instance's id, when this one yielded."""
        self._intruders: set[str] = set()
        """Nonces of later processes found writing this instance's id (each logged once)."""
        self._earlier: set[str] = set()
        """Nonces of earlier processes whose header this instance replaced once."""
        self.ttl = ttl
        self.describe = describe
        """This instance's lease as of now (built from the local registry)."""
        self.details = details
        """This instance's MCP relays' sessions and per-method counts as of now, by relay id
        (built at most every DETAIL_SPACING seconds, and when a relay comes or goes)."""
        self.changes = changes
        """The local change feed: what makes the lease worth rewriting; bumped when the view of
        the others changes."""
        self.clock = clock
        self.peers: dict[str, Lease] = {}
        """The other instances' live leases, by id."""
        self.own: Lease | None = None
        """This instance's header as last written (its lease without connectors)."""
        self.version = 0
        """Bumped whenever `peers` or `degraded` changes."""
        self.header_version = 0
        """Bumped whenever the instances, their headers or `degraded` change (not their
        connectors)."""
        self.details_version = 0
        """Bumped whenever the relay details of a peer change."""
        self.degraded = False
        """The last Redis exchange failed."""
        self.index = RemoteIndex()
        """The other instances' connectors by model and alias."""
        self.listeners: list[Listener] = [self.index]
        """Told of every connector of a peer that changed (appeared, changed, left)."""
        self.departures: list[Departure] = []
        """Told of every peer that left the fleet: at once when its lease expired; when it went
        missing from the member set (it said goodbye, or Redis restarted empty) or was
        forgotten while Redis was unreachable, once Redis has answered for a TTL without
        listing it again (a live peer renews its lease within a third of that)."""
        self.whole_reads = 0
        """Peers' hashes read whole so far (the costly path; a figure for tests and benches)."""
        self._mirrors: dict[str, PeerMirror] = {}
        self._missing: dict[str, tuple[Lease, float]] = {}
        """Peers dropped without proof that they left, with their last header and when."""
        self._answering_since: float | None = clock()
        """Since when Redis has answered without a failure (None: it failed last)."""
        self._lock = asyncio.Lock()
        """Held while a mirror is changed across an await (a whole read, applying entries)."""
        self._last_ok = clock()
        self._id = ""
        self._gen = ""
        """Generation of this instance's hash ("": write it whole next)."""
        self._seq = 0
        self._published: dict[str, ConnectorSummary] = {}
        self._details: dict[str, RelayDetail] = {}
        """This instance's relay details as last written."""
        self._details_at = -DETAIL_SPACING
        self._header = ""
        self._renewed = -ttl
        self._own_bumps = 0
        """Bumps of `changes` made here (a view change is not a local change)."""
        self._seen_local = -1
        self._recheck_place = False
        """A mirror missed entries: the tail checks that its place is not past the log's end."""

    def relay_detail(self, instance_id: str, relay_id: str) -> RelayDetail | None:
        """The sessions and per-method counts of a relay linked to another instance."""
        mirror = self._mirrors.get(instance_id)
        return mirror.details.get(relay_id) if mirror is not None else None

    @property
    def key(self) -> str:
        """This instance's header key."""
        return PREFIX + "instance:" + (self._id or self.describe().id)

    # ---- the loops -----------------------------------------------------------------------

    async def run(self) -> None:
        """Publish, read the headers and tail the change log until cancelled (never raises on a
        Redis failure)."""
        await asyncio.gather(self._loop(), self._tail())

    async def _loop(self) -> None:
        renew_every = self.ttl / 3
        while True:
            try:
                if self.duplicate is None:
                    await self._write(renew_every)
                await self._poll()
                self._healthy()
            except REDIS_FAILURES as failure:
                self._failed(failure)
            try:
                async with asyncio.timeout(min(REFRESH, renew_every)):
                    await self._local_change()
            except TimeoutError:
                continue
            # A timer: local changes are written at most every MIN_SPACING seconds.
            await asyncio.sleep(MIN_SPACING)

    async def _local_change(self) -> None:
        """Return after a change of the local fleet (not one made here)."""
        changes = self.changes
        while changes.version - self._own_bumps == self._seen_local:
            await changes.wait(changes.version)

    async def _tail(self) -> None:
        """Apply the change log to the mirrors, entry by entry, until cancelled."""
        cursor: bytes | str | None = None
        while True:
            try:
                if cursor is None or self._recheck_place:
                    self._recheck_place = False
                    last = await self.redis.xrevrange(CHANGES, count=1)
                    newest = last[0][0] if last else "0-0"
                    if cursor is None:
                        cursor = newest
                    elif _stream_id(newest) < _stream_id(cursor):
                        cursor = "0-0"  # a log restarted below our place: read it all once
                reply = await self.redis.xread(
                    {CHANGES: cursor}, count=TAIL_COUNT, block=int(TAIL_BLOCK * 1000)
                )
                entries = _entries(reply)
                if not entries:
                    continue
                cursor = entries[-1][0]
                async with self._lock:
                    await self._apply(entries)
            except REDIS_FAILURES:
                # The loop says `degraded`; no event tells that Redis is back: retry on a timer.
                await asyncio.sleep(REFRESH)

    # ---- writing this instance -----------------------------------------------------------

    async def _write(self, renew_every: float) -> None:
        self._seen_local = self.changes.version - self._own_bumps
        lease = self.describe()
        self._id = lease.id
        own = replace(lease, connectors=())
        if own != self.own:
            self.own = own
            self.header_version += 1
            self._notify()
        current = {c.id: c for c in lease.connectors}
        header = own.dump()
        now = self.clock()
        details = self._details
        if now - self._details_at >= DETAIL_SPACING or {r.id for r in own.relays} != details.keys():
            details, self._details_at = self.details(), now
        if not self._gen:
            await self._write_whole(current, header, details)
            return
        published = self._published
        changed = [c for i, c in current.items() if (old := published.get(i)) is not c and old != c]
        removed = [i for i in published if i not in current]
        shared = self._details
        detailed = [d for i, d in details.items() if shared.get(i) != d]
        undetailed = [i for i in shared if i not in details]
        renew = now - self._renewed >= renew_every
        if not (changed or removed or detailed or undetailed or renew or header != self._header):
            return
        ttl_ms = int(self.ttl * 1000)
        hash_key = PREFIX + "connectors:" + lease.id
        pipe = self.redis.pipeline(transaction=False)
        pipe.pexpire(hash_key, ttl_ms)  # first: False when Redis lost the hash
        seq = self._seq
        if changed or removed or detailed or undetailed:
            if removed or undetailed:
                pipe.hdel(hash_key, *("c:" + i for i in removed), *("m:" + i for i in undetailed))
            dumps = [c.dump() for c in changed]
            detail_dumps = [d.dump() for d in detailed]
            entries = _chunks(lease.id, self._gen, seq, dumps, removed, detail_dumps, undetailed)
            seq += len(entries)
            mapping = {"c:" + c.id: text for c, text in zip(changed, dumps, strict=True)}
            mapping.update(
                ("m:" + d.id, text) for d, text in zip(detailed, detail_dumps, strict=True)
            )
            pipe.hset(hash_key, mapping={**mapping, "seq": str(seq)})
            for entry in entries:
                pipe.xadd(CHANGES, entry, maxlen=CHANGE_LOG, approximate=True)
        pipe.get(self.key)  # who wrote it last: this process, else a duplicate id
        pipe.set(self.key, header, px=ttl_ms)  # no SADD: see `_write_whole` and `_poll`
        results = await pipe.execute()
        claimed = self._claimed(results[-2], lease)
        if claimed is False:
            return
        if claimed is None or not results[0]:
            if claimed:
                logger.warning("this instance's connectors are missing in Redis: writing again")
            await self._write_whole(current, header, details)
            return
        self._published, self._seq, self._header = current, seq, header
        self._details = details
        if renew:
            self._renewed = now

    async def _write_whole(
        self, current: dict[str, ConnectorSummary], header: str, details: dict[str, RelayDetail]
    ) -> None:
        """A new generation: the whole hash, an `f` entry, the header and the membership."""
        gen = secrets.token_hex(6)
        ttl_ms = int(self.ttl * 1000)
        hash_key = PREFIX + "connectors:" + self._id
        mapping = {"c:" + c.id: c.dump() for c in current.values()}
        mapping.update(("m:" + d.id, d.dump()) for d in details.values())
        mapping.update(gen=gen, seq="0")
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(self.key)  # who wrote it last (see `_claimed`)
        pipe.delete(hash_key)
        pipe.hset(hash_key, mapping=mapping)
        pipe.pexpire(hash_key, ttl_ms)
        pipe.xadd(
            CHANGES, {"i": self._id, "g": gen, "n": "0", "f": "1"}, maxlen=CHANGE_LOG,
            approximate=True,
        )  # fmt: skip
        pipe.set(self.key, header, px=ttl_ms)
        pipe.sadd(MEMBERS, self._id)
        results = await pipe.execute()
        self._gen, self._seq, self._published, self._header = gen, 0, current, header
        self._details = details
        self._renewed = self.clock()
        if self.own is not None and self._claimed(results[0], self.own) is None:
            self._gen = ""  # written over a moment ago: whole again at the next turn

    def _claimed(self, previous: bytes | None, lease: Lease) -> bool | None:
        """Whether the header this write replaced was this process's (or none, or the last
        write of a process that started earlier and has not written since: a previous run of
        this instance, dead).

        False: a process that started first (earlier `started_at`, else the smaller nonce)
        wrote the id again after this one replaced its header once: it lives, this instance
        stops writing (`duplicate`) and tells `on_duplicate`. None: a process that started
        later wrote it: this one keeps the id and must write its lease whole again (the other
        one stops at its next write)."""
        if previous is None:
            return True
        try:
            other = Lease.load(previous)
        except (ValueError, KeyError, TypeError):
            return True  # nothing this version can tell apart: its own write is what counts
        if other.nonce == lease.nonce:
            return True
        first = (other.started_at, other.nonce) < (lease.started_at, lease.nonce)
        if first and other.nonce not in self._earlier:
            self._earlier.add(other.nonce)  # a run of this instance that died, unless seen again
            logger.info(
                "replaced the lease of an earlier process with INSTANCE_ID %r at %s (started %s)",
                lease.id,
                other.address,
                _iso(other.started_at),
            )
            return True
        if first:
            self.duplicate = other
            message = duplicate_message(lease.id, other, self.ttl)
            logger.error("%s; this instance stops writing its lease and stops", message)
            self.on_duplicate(message)
            return False
        if other.nonce not in self._intruders:
            self._intruders.add(other.nonce)
            logger.error(
                "INSTANCE_ID %r was written over by another process at %s (started %s, after "
                "this instance): this instance keeps the id and writes its lease whole again; "
                "the other stops at its next write",
                lease.id,
                other.address,
                _iso(other.started_at),
            )
        return None

    # ---- reading the others --------------------------------------------------------------

    async def _poll(self) -> None:
        """Read the others' headers: who lives, their figures, whether a mirror is behind."""
        ids = sorted(_text(i) for i in await self.redis.smembers(MEMBERS))
        if self._answering_since is None:
            self._answering_since = self.clock()
        if self._id and self._id not in ids and self.duplicate is None:
            # Dropped by a peer that saw our lease expire, or Redis restarted empty: the whole
            # lease again, header and SADD together (a bare SADD would list a member without a
            # header until the next renewal, and a peer polling meanwhile drops it again).
            await self._write_whole(self._published, self._header, self._details)
        others = [i for i in ids if i != self._id]
        for gone in self._mirrors.keys() - set(others):
            self._drop(gone, left=False)  # a goodbye, or Redis restarted empty: not told yet
        if not others:
            self._settle()
            return
        pipe = self.redis.pipeline(transaction=False)  # no MGET: Cluster pipelines refuse it
        for i in others:
            pipe.get(PREFIX + "instance:" + i)
            pipe.hmget(PREFIX + "connectors:" + i, "gen", "seq")
        replies = await pipe.execute()
        headers, metas = replies[::2], replies[1::2]
        expired: list[str] = []
        whole: list[str] = []
        for instance_id, raw, (gen, seq) in zip(others, headers, metas, strict=True):
            if raw is None:
                expired.append(instance_id)
                self._drop(instance_id)
                continue
            try:
                lease = Lease.load(raw)
            except (ValueError, KeyError, TypeError):
                logger.warning(
                    "instance %s published a lease this version cannot read", instance_id
                )
                continue
            mirror = self._header_read(instance_id, lease)
            if gen is None:  # a lease carrying its connectors (no hash, no change log)
                self._changed(instance_id, mirror.load("", 0, {c.id: c for c in lease.connectors}))
            elif mirror.gen != _text(gen):
                whole.append(instance_id)
            elif mirror.missed(int(seq or 0)):
                whole.append(instance_id)
                self._recheck_place = True  # trimmed, or the log restarted below our place
        self._settle()
        if expired:
            await self.redis.srem(MEMBERS, *expired)
        for instance_id in whole:
            async with self._lock:
                await self._read_whole(instance_id)

    def _header_read(self, instance_id: str, lease: Lease) -> PeerMirror:
        header = replace(lease, connectors=())
        mirror = self._mirrors.get(instance_id)
        if mirror is None:
            mirror = self._mirrors[instance_id] = PeerMirror(header)
        elif mirror.header == header:
            return mirror
        else:
            mirror.header = header
            mirror.lease = replace(header, connectors=mirror.lease.connectors)
        self.peers[instance_id] = mirror.lease
        self.header_version += 1
        self._view_changed()
        return mirror

    async def _read_whole(self, instance_id: str) -> None:
        """Read a peer's hash whole into its mirror (hold the lock)."""
        mirror = self._mirrors.get(instance_id)
        if mirror is None:
            return
        self.whole_reads += 1
        raw: dict[bytes, bytes] = await self.redis.hgetall(PREFIX + "connectors:" + instance_id)
        if self._mirrors.get(instance_id) is not mirror or b"gen" not in raw:
            return  # it left meanwhile, or its hash expired (its header follows)
        connectors: dict[str, ConnectorSummary] = {}
        details: dict[str, RelayDetail] = {}
        for name, value in raw.items():
            if not name.startswith((b"c:", b"m:")):
                continue
            try:
                if name.startswith(b"c:"):
                    summary = ConnectorSummary.load(json.loads(value))
                    connectors[summary.id] = summary
                else:
                    detail = RelayDetail.load(json.loads(value))
                    details[detail.id] = detail
            except (ValueError, KeyError, TypeError):
                what = "connector" if name.startswith(b"c:") else "relay"
                logger.warning(
                    "instance %s published a %s this version cannot read", instance_id, what
                )
        seq = int(raw.get(b"seq") or 0)
        stamp = mirror.details_stamp
        changes = mirror.load(raw[b"gen"].decode(), seq, connectors, details)
        self._changed(instance_id, changes, mirror.details_stamp != stamp)

    async def _apply(self, entries: list[tuple[Any, dict[bytes, bytes]]]) -> None:
        """Apply change-log entries in order (hold the lock); read peers whole when needed."""
        whole: set[str] = set()
        for _, entry in entries:
            instance_id = _text(entry.get(b"i", b""))
            mirror = self._mirrors.get(instance_id)
            if mirror is None or instance_id in whole:
                continue  # a peer not seen yet is read whole once its header is read
            stamp = mirror.details_stamp
            try:
                changes = mirror.apply(entry[b"g"].decode(), int(entry[b"n"]), entry)
            except (ValueError, KeyError, TypeError):
                changes = None
            if changes is None:
                whole.add(instance_id)
            else:
                self._changed(instance_id, changes, mirror.details_stamp != stamp)
        for instance_id in whole:
            await self._read_whole(instance_id)

    # ---- the view ------------------------------------------------------------------------

    def _changed(self, instance_id: str, changes: list[Change], details: bool = False) -> None:
        """Connectors of a peer changed: rebuild its lease and tell the listeners (`details`:
        its relay details changed)."""
        if details:
            self.details_version += 1
            if not changes:
                self._view_changed()
        if not changes:
            return
        mirror = self._mirrors[instance_id]
        mirror.lease = replace(mirror.header, connectors=tuple(mirror.connectors.values()))
        self.peers[instance_id] = mirror.lease
        for before, after in changes:
            for listener in self.listeners:
                listener(instance_id, before, after)
        self._view_changed()

    def _drop(self, instance_id: str, left: bool = True) -> None:
        """A peer leaves the view (`left`: its header expired; else it is missing from the
        member set, or Redis was unreachable for a TTL, and its departure waits for
        `_settle`)."""
        mirror = self._mirrors.pop(instance_id, None)
        self.peers.pop(instance_id, None)
        if mirror is None:
            return
        self.details_version += 1
        for summary in mirror.connectors.values():
            for listener in self.listeners:
                listener(instance_id, summary, None)
        if left:
            for departure in self.departures:
                departure(mirror.header)
        else:
            self._missing[instance_id] = (mirror.header, self.clock())
        self.header_version += 1
        self._view_changed()

    def _settle(self) -> None:
        """After a good read of the headers: a missing peer that is back is no longer missing;
        one still missing after Redis answered for a TTL (since it went missing, and since
        Redis answers again) left: its departure is told."""
        if not self._missing:
            return
        now, answering = self.clock(), self._answering_since
        for instance_id, (header, since) in list(self._missing.items()):
            if instance_id in self._mirrors:
                del self._missing[instance_id]
            elif answering is not None and now - max(since, answering) >= self.ttl:
                del self._missing[instance_id]
                for departure in self.departures:
                    departure(header)

    def _view_changed(self) -> None:
        self.version += 1
        self._notify()

    def _notify(self) -> None:
        """Bump the change feed (viewers look again); not a local change to write."""
        self._own_bumps += 1
        self.changes.bump()

    def _healthy(self) -> None:
        self._last_ok = self.clock()
        if self.degraded:
            self.degraded = False
            self.header_version += 1
            logger.warning("Redis answers again: this instance rejoined the fleet")
            self._view_changed()

    def _failed(self, failure: BaseException) -> None:
        self._gen = ""  # what Redis holds of this instance is unknown: write it whole next
        self._answering_since = None
        if not self.degraded:
            self.degraded = True
            self.header_version += 1
            logger.warning(
                "Redis is unreachable (%s): degraded, serving this instance's own links only",
                failure,
            )
            self._view_changed()
        if self._mirrors and self.clock() - self._last_ok >= self.ttl:
            for instance_id in list(self._mirrors):  # their leases may have expired: never
                self._drop(instance_id, left=False)  # route to them

    async def leave(self) -> None:
        """Remove this instance's keys at shutdown (best effort) and close the client; not
        when another process holds its id (`duplicate`): the keys are that process's."""
        if self.duplicate is not None:
            await self.redis.aclose()
            return
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                own = self._id or self.describe().id
                pipe = self.redis.pipeline(transaction=False)
                pipe.delete(PREFIX + "instance:" + own)
                pipe.delete(PREFIX + "connectors:" + own)
                pipe.srem(MEMBERS, own)
                await pipe.execute()
        except REDIS_FAILURES:
            pass  # the keys expire by themselves
        await self.redis.aclose()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def duplicate_message(instance_id: str, holder: Lease, ttl: float) -> str:
    """The one-line error when a live instance `holder` holds this instance's id: the id, the
    other instance, since when it runs and what to do."""
    return (
        f"INSTANCE_ID {instance_id!r} is in use by another live instance at {holder.address} "
        f"(running since {_iso(holder.started_at)}): give this instance another INSTANCE_ID, "
        f"or stop the other one (a crashed instance's lease expires within LEASE_TTL, "
        f"{ttl:g}s)"
    )


def _chunks(
    instance_id: str,
    gen: str,
    seq: int,
    upserts: list[str],
    removed: list[str],
    details: list[str],
    undetailed: list[str],
) -> list[dict[str, str]]:
    """Change-log entries for one write, numbered from `seq + 1`: at most ENTRY_MAX connectors
    each (`u`, `r`, always present), then relay details, at most RELAYS_PER_ENTRY each (`mu`,
    `mr`, present when there are some: an older reader ignores them)."""
    items: list[tuple[str, str]] = [("u", text) for text in upserts]
    items.extend(("r", json.dumps(i)) for i in removed)
    parts = [items[start : start + ENTRY_MAX] for start in range(0, len(items), ENTRY_MAX)]
    relays: list[tuple[str, str]] = [("mu", text) for text in details]
    relays.extend(("mr", json.dumps(i)) for i in undetailed)
    parts.extend(
        relays[start : start + RELAYS_PER_ENTRY]
        for start in range(0, len(relays), RELAYS_PER_ENTRY)
    )
    entries: list[dict[str, str]] = []
    for part in parts:
        entry = {"i": instance_id, "g": gen, "n": str(seq + 1 + len(entries))}
        for kind in ("u", "r", "mu", "mr"):
            texts = [text for k, text in part if k == kind]
            if texts or kind in ("u", "r"):
                entry[kind] = "[" + ",".join(texts) + "]"
        entries.append(entry)
    return entries


def _stream_id(value: bytes | str) -> tuple[int, int]:
    milliseconds, _, sequence = _text(value).partition("-")
    return int(milliseconds), int(sequence or 0)


def _entries(reply: Any) -> list[tuple[Any, dict[bytes, bytes]]]:
    """The entries of an XREAD reply on the change log (one stream)."""
    return list(reply[0][1]) if reply else []
