"""Fleet membership in Redis: this instance's lease and connectors, and a mirror of the others.

Keys (every one with the `{infero}` hash tag: one Cluster slot):

* `{infero}:instances`: the set of instance ids. An instance adds itself only when it writes
  itself whole (joining, after being degraded, when Redis lost its keys: restarted empty) or
  when its poll finds it missing; not at every renewal.
* `{infero}:instance:<id>`: the instance's header, its `Lease` without connectors, with a TTL
  of LEASE_TTL: the liveness truth.
* `{infero}:connectors:<id>`: a hash, `c:<connector id>` -> `ConnectorSummary` JSON, plus `gen`
  (the generation, new whenever the hash is written whole) and `seq` (its last change); same TTL.
* `{infero}:changes`: the change log, a stream trimmed to about CHANGE_LOG entries; an entry
  names an instance, its `gen` and `seq`, and carries the summaries that changed and the ids
  that left (at most ENTRY_MAX connectors an entry; a new generation's entry says `f`: read
  the whole hash).

An instance writes only the connectors whose summary changed (coalesced: at most
`1 / MIN_SPACING` times a second) and renews its keys every third of the TTL. Every instance
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
from typing import Any
from urllib.parse import unquote, urlsplit

from redis import asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel
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


def connect(url: str) -> Any:
    """A redis-py asyncio client for REDIS_ADDR.

    `redis://` and `rediss://` (TLS) go to `from_url`; `redis+cluster://` (or
    `rediss+cluster://`) to `RedisCluster`; `redis+sentinel://[:password@]h1:p1,h2:p2/service`
    asks the Sentinels for the master of `service`.
    """
    options: dict[str, Any] = {
        "socket_timeout": REDIS_TIMEOUT,
        "socket_connect_timeout": REDIS_TIMEOUT,
    }
    scheme, _, rest = url.partition("://")
    if scheme in ("redis+cluster", "rediss+cluster"):
        return RedisCluster.from_url(scheme.split("+")[0] + "://" + rest, **options)
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        parts = urlsplit("redis://" + rest)
        hosts = parts.netloc.rpartition("@")[2]
        sentinels = [
            (host, int(port or 26379))
            for host, _, port in (entry.partition(":") for entry in hosts.split(","))
        ]
        service = parts.path.strip("/").split("/")[0] or "mymaster"
        password = unquote(parts.password) if parts.password else None
        sentinel = Sentinel(sentinels, **options)  # type: ignore[no-untyped-call]  # unannotated in redis-py
        return sentinel.master_for(
            service, password=password, ssl=scheme.startswith("rediss"), **options
        )
    return aioredis.from_url(url, **options)


Change = tuple[ConnectorSummary | None, ConnectorSummary | None]
"""One connector of a peer before and after a change (None: absent)."""

Listener = Callable[[str, ConnectorSummary | None, ConnectorSummary | None], None]
"""Told `(instance id, before, after)` for every connector of a peer that changed."""


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

    __slots__ = ("connectors", "expect", "gen", "header", "lease", "seq")

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
        self.seq = seq
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

    def load(self, gen: str, seq: int, connectors: dict[str, ConnectorSummary]) -> list[Change]:
        """The peer's hash read whole: the connectors that differ from what the mirror held."""
        self.gen, self.seq, self.expect = gen, seq, None
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.ttl = ttl
        self.describe = describe
        """This instance's lease as of now (built from the local registry)."""
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
        self.degraded = False
        """The last Redis exchange failed."""
        self.index = RemoteIndex()
        """The other instances' connectors by model and alias."""
        self.listeners: list[Listener] = [self.index]
        """Told of every connector of a peer that changed (appeared, changed, left)."""
        self.whole_reads = 0
        """Peers' hashes read whole so far (the costly path; a figure for tests and benches)."""
        self._mirrors: dict[str, PeerMirror] = {}
        self._lock = asyncio.Lock()
        """Held while a mirror is changed across an await (a whole read, applying entries)."""
        self._last_ok = clock()
        self._id = ""
        self._gen = ""
        """Generation of this instance's hash ("": write it whole next)."""
        self._seq = 0
        self._published: dict[str, ConnectorSummary] = {}
        self._header = ""
        self._renewed = -ttl
        self._own_bumps = 0
        """Bumps of `changes` made here (a view change is not a local change)."""
        self._seen_local = -1
        self._recheck_place = False
        """A mirror missed entries: the tail checks that its place is not past the log's end."""

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
        if not self._gen:
            await self._write_whole(current, header)
            return
        published = self._published
        changed = [c for i, c in current.items() if (old := published.get(i)) is not c and old != c]
        removed = [i for i in published if i not in current]
        now = self.clock()
        renew = now - self._renewed >= renew_every
        if not (changed or removed or renew or header != self._header):
            return
        ttl_ms = int(self.ttl * 1000)
        hash_key = PREFIX + "connectors:" + lease.id
        pipe = self.redis.pipeline(transaction=False)
        pipe.pexpire(hash_key, ttl_ms)  # first: False when Redis lost the hash
        seq = self._seq
        if changed or removed:
            if removed:
                pipe.hdel(hash_key, *("c:" + i for i in removed))
            dumps = [c.dump() for c in changed]
            entries = _chunks(lease.id, self._gen, seq, dumps, removed)
            seq += len(entries)
            mapping = {"c:" + c.id: text for c, text in zip(changed, dumps, strict=True)}
            pipe.hset(hash_key, mapping={**mapping, "seq": str(seq)})
            for entry in entries:
                pipe.xadd(CHANGES, entry, maxlen=CHANGE_LOG, approximate=True)
        pipe.set(self.key, header, px=ttl_ms)  # no SADD: see `_write_whole` and `_poll`
        results = await pipe.execute()
        if not results[0]:
            logger.warning("this instance's connectors are missing in Redis: writing them again")
            await self._write_whole(current, header)
            return
        self._published, self._seq, self._header = current, seq, header
        if renew:
            self._renewed = now

    async def _write_whole(self, current: dict[str, ConnectorSummary], header: str) -> None:
        """A new generation: the whole hash, an `f` entry, the header and the membership."""
        gen = secrets.token_hex(6)
        ttl_ms = int(self.ttl * 1000)
        hash_key = PREFIX + "connectors:" + self._id
        mapping = {"c:" + c.id: c.dump() for c in current.values()}
        mapping.update(gen=gen, seq="0")
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(hash_key)
        pipe.hset(hash_key, mapping=mapping)
        pipe.pexpire(hash_key, ttl_ms)
        pipe.xadd(
            CHANGES, {"i": self._id, "g": gen, "n": "0", "f": "1"}, maxlen=CHANGE_LOG,
            approximate=True,
        )  # fmt: skip
        pipe.set(self.key, header, px=ttl_ms)
        pipe.sadd(MEMBERS, self._id)
        await pipe.execute()
        self._gen, self._seq, self._published, self._header = gen, 0, current, header
        self._renewed = self.clock()

    # ---- reading the others --------------------------------------------------------------

    async def _poll(self) -> None:
        """Read the others' headers: who lives, their figures, whether a mirror is behind."""
        ids = sorted(_text(i) for i in await self.redis.smembers(MEMBERS))
        if self._id and self._id not in ids:
            # Dropped by a peer that saw our lease expire, or Redis restarted empty: the whole
            # lease again, header and SADD together (a bare SADD would list a member without a
            # header until the next renewal, and a peer polling meanwhile drops it again).
            await self._write_whole(self._published, self._header)
        others = [i for i in ids if i != self._id]
        for gone in self._mirrors.keys() - set(others):
            self._drop(gone)
        if not others:
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
        for name, value in raw.items():
            if name.startswith(b"c:"):
                try:
                    summary = ConnectorSummary.load(json.loads(value))
                except (ValueError, KeyError, TypeError):
                    logger.warning("instance %s published a connector this version cannot read",
                                   instance_id)  # fmt: skip
                    continue
                connectors[summary.id] = summary
        seq = int(raw.get(b"seq") or 0)
        self._changed(instance_id, mirror.load(raw[b"gen"].decode(), seq, connectors))

    async def _apply(self, entries: list[tuple[Any, dict[bytes, bytes]]]) -> None:
        """Apply change-log entries in order (hold the lock); read peers whole when needed."""
        whole: set[str] = set()
        for _, entry in entries:
            instance_id = _text(entry.get(b"i", b""))
            mirror = self._mirrors.get(instance_id)
            if mirror is None or instance_id in whole:
                continue  # a peer not seen yet is read whole once its header is read
            try:
                changes = mirror.apply(entry[b"g"].decode(), int(entry[b"n"]), entry)
            except (ValueError, KeyError, TypeError):
                changes = None
            if changes is None:
                whole.add(instance_id)
            else:
                self._changed(instance_id, changes)
        for instance_id in whole:
            await self._read_whole(instance_id)

    # ---- the view ------------------------------------------------------------------------

    def _changed(self, instance_id: str, changes: list[Change]) -> None:
        """Connectors of a peer changed: rebuild its lease and tell the listeners."""
        if not changes:
            return
        mirror = self._mirrors[instance_id]
        mirror.lease = replace(mirror.header, connectors=tuple(mirror.connectors.values()))
        self.peers[instance_id] = mirror.lease
        for before, after in changes:
            for listener in self.listeners:
                listener(instance_id, before, after)
        self._view_changed()

    def _drop(self, instance_id: str) -> None:
        """A peer left (its header expired or Redis was unreachable for a TTL)."""
        mirror = self._mirrors.pop(instance_id, None)
        self.peers.pop(instance_id, None)
        if mirror is None:
            return
        for summary in mirror.connectors.values():
            for listener in self.listeners:
                listener(instance_id, summary, None)
        self.header_version += 1
        self._view_changed()

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
        if not self.degraded:
            self.degraded = True
            self.header_version += 1
            logger.warning(
                "Redis is unreachable (%s): degraded, serving this instance's own links only",
                failure,
            )
            self._view_changed()
        if self._mirrors and self.clock() - self._last_ok >= self.ttl:
            for instance_id in list(self._mirrors):
                self._drop(instance_id)  # their leases may have expired: never route to them

    async def leave(self) -> None:
        """Remove this instance's keys at shutdown (best effort) and close the client."""
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


def _chunks(
    instance_id: str, gen: str, seq: int, upserts: list[str], removed: list[str]
) -> list[dict[str, str]]:
    """Change-log entries for one write: at most ENTRY_MAX connectors each, numbered from
    `seq + 1`."""
    items: list[tuple[str, str]] = [("u", text) for text in upserts]
    items.extend(("r", json.dumps(i)) for i in removed)
    entries: list[dict[str, str]] = []
    for start in range(0, len(items), ENTRY_MAX):
        part = items[start : start + ENTRY_MAX]
        entries.append(
            {
                "i": instance_id,
                "g": gen,
                "n": str(seq + 1 + len(entries)),
                "u": "[" + ",".join(text for kind, text in part if kind == "u") + "]",
                "r": "[" + ",".join(text for kind, text in part if kind == "r") + "]",
            }
        )
    return entries


def _stream_id(value: bytes | str) -> tuple[int, int]:
    milliseconds, _, sequence = _text(value).partition("-")
    return int(milliseconds), int(sequence or 0)


def _entries(reply: Any) -> list[tuple[Any, dict[bytes, bytes]]]:
    """The entries of an XREAD reply on the change log (one stream)."""
    return list(reply[0][1]) if reply else []
