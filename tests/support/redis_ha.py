"""Redis that changes under the instances: Sentinels failing a master over to its replica, and
the `{infero}` slot of a Cluster moving to another node (resharding).

Everything is real (`redis-server`, `redis-server --sentinel`); waits poll Redis with a bound,
since Redis pushes no event for "this node is master now".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis import asyncio as aioredis

from support.fleet import STARTUP, RedisProcess, free_port

SERVICE = "mymaster"
DOWN_AFTER_MS = 1000
"""How long a silent master is `sdown` for a Sentinel (a killed one fails over within about
this plus an election)."""
FAILOVER_TIMEOUT_MS = 3000
"""A Sentinel's failover bounds (a failed election is tried again after twice this)."""


async def _until(check: Callable[[], Awaitable[bool]]) -> None:
    """Return once `check()` holds; Redis errors count as 'not yet' (bound it with a timeout)."""
    while True:
        with contextlib.suppress(OSError, aioredis.RedisError):
            if await check():
                return
        await asyncio.sleep(0.05)  # polling Redis with a bound: no event to wait on


def _client(port: int) -> Any:
    return aioredis.Redis(host="127.0.0.1", port=port, socket_timeout=2.0)


def _sentinel_config(folder: Path, port: int, master_port: int, quorum: int) -> Path:
    folder.mkdir(exist_ok=True)
    config = folder / f"sentinel-{port}.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
        f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} {quorum}\n"
        f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
        f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
    )
    return config


@asynccontextmanager
async def _sentinel(folder: Path, master_port: int, quorum: int) -> AsyncIterator[int]:
    """One real Sentinel watching the master at `master_port` as SERVICE; yields its port."""
    port = free_port()
    config = _sentinel_config(folder, port, master_port, quorum)
    proc = await asyncio.create_subprocess_exec(
        "redis-server",
        str(config),
        "--sentinel",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield port
    finally:
        proc.kill()
        await proc.wait()


@asynccontextmanager
async def sentinel_for(master: RedisProcess, folder: Path) -> AsyncIterator[str]:
    """One Sentinel watching `master` (no replica); yields the `redis+sentinel://` REDIS_ADDR."""
    async with _sentinel(folder, master.port, 1) as port:
        client = _client(port)
        try:
            async with asyncio.timeout(STARTUP):
                await _until(lambda: client.sentinel_get_master_addr_by_name(SERVICE))
        finally:
            await client.aclose()
        yield f"redis+sentinel://127.0.0.1:{port}/{SERVICE}"


@dataclass
class SentinelGroup:
    """A master, its replica and the Sentinels watching them."""

    nodes: dict[int, RedisProcess]
    """The two Redis servers by port (either may be the master)."""
    sentinels: list[int]

    @property
    def url(self) -> str:
        """The `redis+sentinel://` REDIS_ADDR naming every Sentinel."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}"

    async def ask(self, *command: str) -> Any:
        """A Sentinel command, at the first Sentinel."""
        client = _client(self.sentinels[0])
        try:
            return await client.execute_command(*command)
        finally:
            await client.aclose()

    async def master(self) -> RedisProcess:
        """The master, as the first Sentinel names it."""
        _, port = await self.ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return self.nodes[int(port)]

    async def promoted(self, old: RedisProcess) -> RedisProcess:
        """Return the new master once every Sentinel names another one than `old` and it says
        it is master (bound it with a timeout)."""
        found: list[int] = []

        async def switched() -> bool:
            ports = set()
            for sentinel in self.sentinels:
                client = _client(sentinel)
                try:
                    _, port = await client.sentinel_get_master_addr_by_name(SERVICE)
                finally:
                    await client.aclose()
                ports.add(int(port))
            if len(ports) != 1 or old.port in ports:
                return False
            found[:] = ports
            return await _role(found[0]) == "master"

        await _until(switched)
        return self.nodes[found[0]]


async def _role(port: int) -> str:
    client = _client(port)
    try:
        info = await client.info("replication")
    finally:
        await client.aclose()
    return str(info["role"])


@asynccontextmanager
async def sentinel_group(folder: Path, sentinels: int = 3) -> AsyncIterator[SentinelGroup]:
    """A master with one replica watched by `sentinels` Sentinels (quorum: a majority), ready
    to fail over: the replica in sync and every Sentinel knowing it and the other Sentinels."""
    master = RedisProcess(free_port(), folder / "master")
    replica = RedisProcess(
        free_port(),
        folder / "replica",
        options=("--replicaof", "127.0.0.1", str(master.port)),
    )
    group = SentinelGroup({master.port: master, replica.port: replica}, [])
    async with contextlib.AsyncExitStack() as stack:
        for node in (master, replica):
            node.folder.mkdir()
            stack.push_async_callback(node.close)
            await node.start()
        async with asyncio.timeout(STARTUP):
            await _until(lambda: _synced(replica.port))
            for _ in range(sentinels):
                port = await stack.enter_async_context(
                    _sentinel(folder / "sentinels", master.port, sentinels // 2 + 1)
                )
                group.sentinels.append(port)
            for port in group.sentinels:
                await _until(functools.partial(_knows, port, sentinels - 1))
        yield group


async def replicate(replica: RedisProcess, master: RedisProcess | None) -> None:
    """Make `replica` a replica of `master` and return once it is in sync (bound it with a
    timeout); `master` None: promote it (`REPLICAOF NO ONE`)."""
    client = _client(replica.port)
    try:
        if master is None:
            await client.replicaof("NO", "ONE")
            return
        await client.replicaof("127.0.0.1", master.port)
    finally:
        await client.aclose()
    await _until(lambda: _synced(replica.port))


async def _synced(port: int) -> bool:
    """The replica at `port` is in sync with its master."""
    client = _client(port)
    try:
        info = await client.info("replication")
    finally:
        await client.aclose()
    return str(info.get("master_link_status")) == "up"


async def _knows(port: int, others: int) -> bool:
    """The Sentinel at `port` knows the replica (in sync) and the other Sentinels."""
    client = _client(port)
    try:
        replicas = await client.sentinel_slaves(SERVICE)
        peers = await client.sentinel_sentinels(SERVICE)
    finally:
        await client.aclose()
    synced = [r for r in replicas if r.get("master-link-status") == "ok"]
    return bool(synced) and len(peers) >= others


@dataclass(frozen=True)
class ClusterNode:
    """A master of a Cluster: its id, port and slot ranges."""

    id: str
    port: int
    slots: tuple[tuple[int, int], ...]


async def cluster_nodes(port: int) -> list[ClusterNode]:
    """The masters of the Cluster that the node at `port` belongs to, as it sees them."""
    client = _client(port)
    try:
        text = await client.execute_command("CLUSTER", "NODES")
    finally:
        await client.aclose()
    nodes = []
    for line in text.decode().splitlines():
        node_id, address, flags, *_ = fields = line.split()
        if "master" not in flags:
            continue
        spans = tuple(
            (int(lo), int(hi or lo))
            for lo, _, hi in (r.partition("-") for r in fields[8:] if not r.startswith("["))
        )
        nodes.append(ClusterNode(node_id, int(address.split("@")[0].rpartition(":")[2]), spans))
    return nodes


def _first_port(cluster_url: str) -> int:
    return int(cluster_url.rpartition(":")[2].split("/")[0])


@asynccontextmanager
async def added_node(cluster_url: str, folder: Path) -> AsyncIterator[int]:
    """A new master joined to the Cluster, serving no slot yet (as `redis-cli --cluster
    add-node` leaves it before a resharding); yields its port once every node knows it."""
    node = RedisProcess(free_port(), folder / "added", cluster=True)
    node.folder.mkdir()
    try:
        await node.start()
        first = _first_port(cluster_url)
        ports = [n.port for n in await cluster_nodes(first)]
        client = _client(first)
        try:  # a node's bus port is its own (--cluster-port): MEET names both
            await client.execute_command("CLUSTER", "MEET", "127.0.0.1", *await _bus(node.port))
        finally:
            await client.aclose()
        async with asyncio.timeout(STARTUP):
            for port in (*ports, node.port):
                await _until(functools.partial(_knows_masters, port, len(ports) + 1))
            await _until(functools.partial(_cluster_ok, node.port))  # it knows every slot
        yield node.port
    finally:
        await node.close()


async def _bus(port: int) -> tuple[str, str]:
    """The node's port and cluster bus port, as it says."""
    client = _client(port)
    try:
        text = (await client.execute_command("CLUSTER", "NODES")).decode()
    finally:
        await client.aclose()
    mine = next(line.split()[1] for line in text.splitlines() if "myself" in line.split()[2])
    address, _, bus = mine.partition("@")
    return address.rpartition(":")[2], bus.partition(",")[0]


async def _cluster_ok(port: int) -> bool:
    client = _client(port)
    try:
        return b"cluster_state:ok" in await client.execute_command("CLUSTER", "INFO")
    finally:
        await client.aclose()


async def _knows_masters(port: int, count: int) -> bool:
    """The node at `port` knows `count` masters, none of them still in a handshake."""
    client = _client(port)
    try:
        text = (await client.execute_command("CLUSTER", "NODES")).decode()
    finally:
        await client.aclose()
    flags = [line.split()[2] for line in text.splitlines()]
    return sum("master" in f for f in flags) == count and not any("handshake" in f for f in flags)


async def move_slot(
    cluster_url: str,
    key: str = "{infero}",
    *,
    halfway: Callable[[], Awaitable[None]] | None = None,
    to: int | None = None,
) -> tuple[int, int]:
    """Reshard: move the slot of `key` to another master of the Cluster (`to`: the one at that
    port) (`SETSLOT IMPORTING` / `MIGRATING`, `MIGRATE ... KEYS` one key at a time, `SETSLOT
    NODE`), as `redis-cli --cluster reshard` does, the keys in name order, to a node without
    the Lua scripts. `halfway` runs once half of them moved (the slot is split: a key is served
    where it is, after an `ASK` redirection once moved, and a command on keys of both sides
    answers `TRYAGAIN`). Returns (source port, target port)."""
    first = _first_port(cluster_url)
    client = _client(first)
    try:
        slot = int(await client.execute_command("CLUSTER", "KEYSLOT", key))
    finally:
        await client.aclose()
    nodes = await cluster_nodes(first)
    source = next(n for n in nodes if any(lo <= slot <= hi for lo, hi in n.slots))
    target = next(n for n in nodes if n is not source and to in (None, n.port))
    src, dst = _client(source.port), _client(target.port)
    setslot = "CLUSTER", "SETSLOT", str(slot)
    migrate = "MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000", "REPLACE", "KEYS"
    try:
        await dst.script_flush()  # no scripts there, as on a node just added for a resharding
        await dst.execute_command(*setslot, "IMPORTING", source.id)
        await src.execute_command(*setslot, "MIGRATING", target.id)
        keys = sorted(await src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10_000))
        for n, name in enumerate(keys):
            if halfway is not None and n == len(keys) // 2:
                await halfway()
            await src.execute_command(*migrate, name)
        # Keys created meanwhile at the source (it serves the keys it still holds).
        while rest := await src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000):
            await src.execute_command(*migrate, *rest)
        for node in (target, source, *(n for n in nodes if n not in (source, target))):
            owner = _client(node.port)
            try:
                await owner.execute_command(*setslot, "NODE", target.id)
            finally:
                await owner.aclose()
    finally:
        await src.aclose()
        await dst.aclose()
    return source.port, target.port


class MovingAddress:
    """A TCP forwarder on loopback whose every new connection goes to the port `target` names
    at that moment: what a DNS name or a virtual address that moves to a new primary does (an
    open connection stays where it was)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            self._links.discard(task)
            return
        try:
            await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
        finally:
            for side in (writer, up_writer):
                side.close()
            self._links.discard(task)

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[MovingAddress]:
        server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            for task in list(self._links):
                task.cancel()
            await asyncio.gather(*self._links, return_exceptions=True)
            await server.wait_closed()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


class StallingProxy:
    """A TCP forwarder on loopback to Redis that, while stalled, holds every byte both ways
    (connections stay open): a Redis that hangs, or a network that drops packets without
    closing anything. Commands sent meanwhile time out."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._links: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stall(self) -> None:
        self._flowing.clear()

    def flow(self) -> None:
        self._flowing.set()

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
            try:
                await asyncio.gather(self._copy(reader, up_writer), self._copy(up_reader, writer))
            finally:
                up_writer.close()
        except OSError:
            pass
        finally:
            writer.close()
            self._links.discard(task)

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[StallingProxy]:
        server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            for task in list(self._links):
                task.cancel()
            await asyncio.gather(*self._links, return_exceptions=True)
            await server.wait_closed()
