"""The Redis client of REDIS_ADDR (redis-py's asyncio client): plain, Cluster or Sentinel.

A Sentinel client asks the Sentinels for the master again when a connection fails or the node
answers `READONLY` (redis-py), and a Cluster client follows `MOVED` and `ASK`. A plain
`redis://` address may be a DNS name or a virtual address that a failover moves to the new
primary: its connections are closed when the node answers `READONLY` (it was demoted to a
replica), so the next command reconnects and reaches whatever the address names now.

While a slot moves between two Cluster nodes (resharding), a key already moved is answered
`ASK`: the client must send `ASKING` and the command on one connection to the importing node.
redis-py's asyncio Cluster client sends them as two calls, each on a connection taken from the
node's pool, and with more than one free connection there the command goes out on another one:
the importing node answers `MOVED` back to the source, which answers `ASK` again, until redis-py
gives up (`TTL exhausted`), closing every connection of the client on the way. `_AskingNode`
sends the two in one write on one connection (see `install_cluster_nodes`). And a node added
for the resharding serves no slot until the first one has moved, so redis-py does not know it
when it answers `ASK`: `_Cluster` adds it instead of failing with an `AttributeError`.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any
from urllib.parse import unquote, urlsplit

from redis import asyncio as aioredis
from redis.asyncio import cluster
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.cluster import PRIMARY
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError

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


_ASKED: ContextVar[ClusterNode | None] = ContextVar("infero_redis_asked", default=None)
"""The node this task sent `ASKING` to, whose next command of the task must carry it."""


class _AskingNode(ClusterNode):
    """A Cluster node that sends `ASKING` in one write with the command it allows, on one
    connection (module docstring). redis-py calls `execute_command("ASKING")`, then the
    redirected command, in the same task with nothing in between: the first is only noted,
    the second carries it."""

    __slots__ = ()

    async def execute_command(self, *args: Any, asking: bool = False, **kwargs: Any) -> Any:
        if args == ("ASKING",):
            _ASKED.set(self)
            return True
        if _ASKED.get() is self:
            _ASKED.set(None)
            return await self._asked(*args, **kwargs)
        if asking:  # redis-py's own one-connection ASKING (HIMPORT SET)
            kwargs["asking"] = True
        return await super().execute_command(*args, **kwargs)

    async def _asked(self, *args: Any, **kwargs: Any) -> Any:
        connection = self.acquire_connection()
        try:
            await self.disconnect_if_needed(connection)
            await connection.send_packed_command(connection.pack_commands([("ASKING",), args]))
            refused: ResponseError | None = None
            try:
                await self.parse_response(connection, "ASKING")
            except ResponseError as error:
                refused = error  # the command's answer is read all the same
            answer = await self.parse_response(connection, args[0], **kwargs)
            if refused is not None:
                raise refused
            return answer
        finally:
            try:
                await self.disconnect_if_needed(connection)
            finally:
                self.release(connection)


def install_cluster_nodes() -> None:
    """Make redis-py's asyncio Cluster clients build `_AskingNode`s (its nodes manager names
    the class directly; no option chooses it). Idempotent; done once at import."""
    cluster.ClusterNode = _AskingNode  # type: ignore[misc]  # rebinding the class the module builds


install_cluster_nodes()


class _Cluster(RedisCluster):
    """redis-py's asyncio Cluster client, knowing a node first named by an `ASK` redirection."""

    def get_node(
        self, host: str | None = None, port: int | None = None, node_name: str | None = None
    ) -> ClusterNode | None:
        node = super().get_node(host, port, node_name)
        if node is None and node_name:  # an ASK to a node that serves no slot yet
            name, _, number = node_name.rpartition(":")
            manager = self.nodes_manager
            node = _AskingNode(name, int(number), PRIMARY, **manager.connection_kwargs)
            manager.set_nodes(manager.nodes_cache, {node.name: node})  # closed with the rest
        return node


def connect(url: str) -> Any:
    """A redis-py asyncio client for REDIS_ADDR.

    `redis://` and `rediss://` (TLS) go to `from_url`; `redis+cluster://` (or
    `rediss+cluster://`) to `RedisCluster` (following `ASK` as the module docstring says);
    `redis+sentinel://[:password@]h1:p1,h2:p2/service`
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
        return _Cluster.from_url(scheme.split("+")[0] + "://" + rest, **options)
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
