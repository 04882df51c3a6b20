"""The Redis client of REDIS_ADDR (redis-py's asyncio client): plain, Cluster or Sentinel.

A Sentinel client asks the Sentinels for the master again when a connection fails or the node
answers `READONLY` (redis-py), and a Cluster client follows `MOVED` and `ASK`. A plain
`redis://` address may be a DNS name or a virtual address that a failover moves to the new
primary: its connections are closed when the node answers `READONLY` (it was demoted to a
replica), so the next command reconnects and reaches whatever the address names now.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from redis import asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError

from infero.server.membership import REDIS_TIMEOUT


class _LeavesADemotedPrimary(AbstractConnection):
    """A connection closed, and counted as failed, when its node answers `READONLY`."""

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except ReadOnlyError as refused:
            await self.disconnect()
            raise RedisConnectionError("the Redis primary was demoted to a replica") from refused


class _PrimaryConnection(_LeavesADemotedPrimary, Connection):
    pass


class _PrimarySSLConnection(_LeavesADemotedPrimary, SSLConnection):
    pass


class _PrimaryUnixConnection(_LeavesADemotedPrimary, UnixDomainSocketConnection):
    pass


_PRIMARY: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: _PrimaryConnection,
    SSLConnection: _PrimarySSLConnection,
    UnixDomainSocketConnection: _PrimaryUnixConnection,
}


def connect(url: str) -> Any:
    """A redis-py asyncio client for REDIS_ADDR.

    `redis://` and `rediss://` (TLS) go to `from_url`; `redis+cluster://` (or
    `rediss+cluster://`) to `RedisCluster`; `redis+sentinel://[:password@]h1:p1,h2:p2/service`
    asks the Sentinels for the master of `service`. A plain client leaves a node that answers
    `READONLY` (module docstring). A command whose connection fails (a connection pooled while
    Redis was away is found closed at its first use; one closed for `READONLY`) is sent once
    more on a new connection, at once: one stale connection is no outage. Timeouts are not
    retried (`REDIS_TIMEOUT` stays the bound); the Cluster client retries by itself.
    """
    options: dict[str, Any] = {
        "socket_timeout": REDIS_TIMEOUT,
        "socket_connect_timeout": REDIS_TIMEOUT,
    }
    scheme, _, rest = url.partition("://")
    if scheme in ("redis+cluster", "rediss+cluster"):
        return RedisCluster.from_url(scheme.split("+")[0] + "://" + rest, **options)
    options["retry"] = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
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
    client = aioredis.from_url(url, **options)
    pool = client.connection_pool
    pool.connection_class = _PRIMARY.get(pool.connection_class, pool.connection_class)
    return client
