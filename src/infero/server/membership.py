"""Fleet membership in Redis: this instance's lease, and the view of the other instances.

Each instance keeps one key `{infero}:instance:<id>` with a TTL of LEASE_TTL, holding its
`Lease` (address, version, links, in flight and a summary of its connectors). It is rewritten
on change (coalesced: at most `1 / MIN_SPACING` times a second) and renewed every third of the
TTL; the view of the others is read on the same loop. Nothing here runs per request or per
chunk. When Redis is unreachable the instance is `degraded`: it keeps its own links, forgets
the others once their leases would have expired, and re-announces when Redis answers again.
See docs/scale-out.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from redis import asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from infero.server.changes import ChangeFeed

logger = logging.getLogger(__name__)

PREFIX = "{infero}:"
"""Every key shares the `{infero}` hash tag: one Cluster slot, so MGET works there too."""
MEMBERS = PREFIX + "instances"
MIN_SPACING = 0.25
"""Least seconds between two lease writes caused by local changes."""
REFRESH = 1.0
"""Most seconds between two reads of the other instances' leases."""
REDIS_TIMEOUT = 2.0
"""Seconds a Redis command or connection may take before the instance counts as degraded."""


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


@dataclass(frozen=True, slots=True)
class Lease:
    """What an instance publishes about itself."""

    id: str
    address: str
    version: str
    started_at: float
    links: int
    inflight: int
    connectors: tuple[ConnectorSummary, ...] = field(default=())

    def dump(self) -> str:
        """The JSON stored in Redis."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def load(cls, raw: bytes | str) -> Lease:
        """Parse a stored lease (raises ValueError, KeyError or TypeError when malformed)."""
        doc: dict[str, Any] = json.loads(raw)
        connectors = tuple(
            ConnectorSummary(**{**c, "models": tuple(c["models"])}) for c in doc["connectors"]
        )
        return cls(**{**doc, "connectors": connectors})


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


class Membership:
    """This instance's lease in Redis and the live leases of the others."""

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
        """The local change feed: what makes the lease worth rewriting."""
        self.clock = clock
        self.peers: dict[str, Lease] = {}
        """The other instances' live leases, by id."""
        self.version = 0
        """Bumped whenever `peers` or `degraded` changes."""
        self.degraded = False
        """The last Redis exchange failed."""
        self.on_view: Callable[[], None] = lambda: None
        """Called after the view of the others changed."""
        self._last_ok = clock()
        self._published = ""

    @property
    def key(self) -> str:
        """This instance's lease key."""
        return PREFIX + "instance:" + self.describe().id

    async def run(self) -> None:
        """Publish and read until cancelled (never raises on a Redis failure)."""
        renew_every = self.ttl / 3
        renewed = -renew_every
        while True:
            now = self.clock()
            try:
                lease = self.describe()
                text = lease.dump()
                if text != self._published or now - renewed >= renew_every or self.degraded:
                    await self._publish(lease.id, text)
                    self._published, renewed = text, now
                await self._read(lease.id)
                self._healthy()
            except (RedisError, OSError, TimeoutError) as failure:
                self._failed(failure)
            seen = self.changes.version  # after on_view's own bump: not a local change
            try:
                async with asyncio.timeout(min(REFRESH, renew_every)):
                    await self.changes.wait(seen)
            except TimeoutError:
                continue
            # A timer: local changes are written at most every MIN_SPACING seconds.
            await asyncio.sleep(MIN_SPACING)

    async def _publish(self, instance_id: str, text: str) -> None:
        ttl_ms = int(self.ttl * 1000)
        await self.redis.set(PREFIX + "instance:" + instance_id, text, px=ttl_ms)
        await self.redis.sadd(MEMBERS, instance_id)

    async def _read(self, own_id: str) -> None:
        ids = sorted(
            i.decode() if isinstance(i, bytes) else str(i)
            for i in await self.redis.smembers(MEMBERS)
        )
        others = [i for i in ids if i != own_id]
        values = await self.redis.mget([PREFIX + "instance:" + i for i in others]) if others else []
        peers: dict[str, Lease] = {}
        expired: list[str] = []
        for instance_id, raw in zip(others, values, strict=True):
            if raw is None:
                expired.append(instance_id)
                continue
            try:
                peers[instance_id] = Lease.load(raw)
            except (ValueError, KeyError, TypeError):
                logger.warning(
                    "instance %s published a lease this version cannot read", instance_id
                )
        if expired:
            await self.redis.srem(MEMBERS, *expired)
        self._set_view(peers)

    def _set_view(self, peers: dict[str, Lease]) -> None:
        if peers != self.peers:
            self.peers = peers
            self.version += 1
            self.on_view()

    def _healthy(self) -> None:
        self._last_ok = self.clock()
        if self.degraded:
            self.degraded = False
            self.version += 1
            logger.warning("Redis answers again: this instance rejoined the fleet")
            self.on_view()

    def _failed(self, failure: BaseException) -> None:
        if not self.degraded:
            self.degraded = True
            self.version += 1
            logger.warning(
                "Redis is unreachable (%s): degraded, serving this instance's own links only",
                failure,
            )
            self.on_view()
        if self.peers and self.clock() - self._last_ok >= self.ttl:
            self._set_view({})  # their leases may have expired meanwhile: never route to them

    async def leave(self) -> None:
        """Remove this instance's lease at shutdown (best effort) and close the client."""
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                own = self.describe().id
                await self.redis.delete(PREFIX + "instance:" + own)
                await self.redis.srem(MEMBERS, own)
        except (RedisError, OSError, TimeoutError):
            pass  # the lease expires by itself
        await self.redis.aclose()
