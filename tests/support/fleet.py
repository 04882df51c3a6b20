"""A real `redis-server` on a free port, and server instances sharing it (REDIS_ADDR)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
from aiohttp import web
from redis import asyncio as aioredis

from infero.server import tls
from infero.server.app import create_app
from infero.server.connections import server_runner
from infero.server.federated import FederatedState
from infero.server.membership import ConnectorSummary
from support.server import RunningServer, settings

PEER_KEY = "peer-secret"
STARTUP = 20.0
"""Seconds for a fresh process to start (busy 2-core machine)."""


def free_port() -> int:
    """A TCP port free right now on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RedisProcess:
    """A `redis-server` started by the test."""

    port: int
    folder: Path
    cluster: bool = False
    options: tuple[str, ...] = ()
    """More `redis-server` arguments (`--replicaof HOST PORT`)."""
    proc: asyncio.subprocess.Process | None = None
    _hold: socket.socket | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}" + ("" if self.cluster else "/0")

    def _reserve(self) -> None:
        """Hold the port from the first start to `close`: bound, not listening (connections
        are refused while Redis is stopped), so that no other socket of this busy machine takes
        it between a `stop` and a restart (redis-server would then fail to bind and exit).
        redis-server binds and listens beside it: both set SO_REUSEADDR."""
        if self._hold is not None:
            return
        hold = socket.socket()
        hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            hold.bind(("127.0.0.1", self.port))
        except OSError:
            hold.close()
            raise
        self._hold = hold

    async def start(self) -> None:
        """Start it and wait until it answers PING."""
        self._reserve()
        self.proc = await asyncio.create_subprocess_exec(
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.folder),
            *(
                ("--cluster-enabled", "yes", "--cluster-port", str(free_port()))
                if self.cluster
                else ()
            ),
            *self.options,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        client = aioredis.from_url(self.url)
        try:
            async with asyncio.timeout(STARTUP):
                while True:
                    with contextlib.suppress(OSError, aioredis.ConnectionError):
                        if await client.ping():
                            return
                    if self.proc.returncode is not None:
                        raise AssertionError(f"redis-server on port {self.port} exited at start")
                    await asyncio.sleep(0.05)  # polling a port with a bound: no event to wait on
        finally:
            await client.aclose()

    async def stop(self) -> None:
        """kill -9 (its data is gone: no persistence); the port stays reserved for a restart."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def close(self) -> None:
        """Stop it for good and free its port."""
        await self.stop()
        if self._hold is not None:
            self._hold.close()
            self._hold = None


@asynccontextmanager
async def redis_server(folder: Path) -> AsyncIterator[RedisProcess]:
    """A fresh, empty Redis for one test."""
    server = RedisProcess(free_port(), folder)
    try:
        await server.start()
        yield server
    finally:
        await server.close()


@asynccontextmanager
async def instance(
    redis_url: str, instance_id: str, **overrides: Any
) -> AsyncIterator[RunningServer]:
    """A server instance in this process on a real port (`port=`, else a free one), sharing
    `redis_url`."""
    port = int(overrides.pop("port", 0)) or free_port()
    values: dict[str, Any] = {
        "redis_addr": redis_url,
        "peer_key": PEER_KEY,
        "instance_id": instance_id,
        "instance_addr": f"http://127.0.0.1:{port}",
        "lease_ttl": 3.0,
        "client_key": "ck",
    }
    values.update(overrides)
    config = settings(**values)
    app = create_app(config)
    runner = server_runner(app, config, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls.context_of(app)).start()
    try:
        yield RunningServer(app=app, url=f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


def client_of(server: RunningServer) -> openai.AsyncOpenAI:
    """The official openai SDK calling the instance (no retries: a test sees every error)."""
    return openai.AsyncOpenAI(base_url=server.url + "/api/v1", api_key="k", max_retries=0)


def federated(server: RunningServer) -> FederatedState:
    """The instance's shared state (REDIS_ADDR set)."""
    shared = server.shared
    assert isinstance(shared, FederatedState)
    return shared


@dataclass
class ServerProcess:
    """A real `infero server` process."""

    url: str
    proc: asyncio.subprocess.Process

    @property
    def ws_url(self) -> str:
        """Where connectors link."""
        return "ws" + self.url.removeprefix("http") + "/api/workers/connect"

    async def started(self) -> None:
        """Return once it answers `/healthz` (bound it with a timeout)."""
        async with aiohttp.ClientSession() as http:
            while True:  # the process needs a moment to listen
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with http.get(self.url + "/healthz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)  # polling a port with a bound: no event to wait on


@asynccontextmanager
async def server_process(
    redis_url: str, instance_id: str, **env: str
) -> AsyncIterator[ServerProcess]:
    """`infero server` as a real process sharing `redis_url` (killed at exit)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    environ = {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "REDIS_ADDR": redis_url,
        "PEER_KEY": PEER_KEY,
        "INSTANCE_ID": instance_id,
        "INSTANCE_ADDR": url,
        "LEASE_TTL": "3s",
        "CLIENT_KEY": "ck",
        **env,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from infero.cli import main; main(['server'])",
        env={**os.environ, **environ},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield ServerProcess(url, proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@asynccontextmanager
async def redis_cluster(folder: Path) -> AsyncIterator[str]:
    """A real 3-node Redis Cluster (no replicas); yields the `redis+cluster://` REDIS_ADDR."""
    nodes: list[RedisProcess] = []
    try:
        for n in range(3):
            node_dir = folder / f"node{n}"
            node_dir.mkdir()
            node = RedisProcess(free_port(), node_dir, cluster=True)
            nodes.append(node)
            await node.start()
        create = await asyncio.create_subprocess_exec(
            "redis-cli",
            "--cluster",
            "create",
            *(f"127.0.0.1:{node.port}" for node in nodes),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(STARTUP):
            assert await create.wait() == 0
            for node in nodes:
                await _cluster_ok(node)
        yield f"redis+cluster://127.0.0.1:{nodes[0].port}"
    finally:
        for node in nodes:
            await node.close()


async def _cluster_ok(node: RedisProcess) -> None:
    """Return once the node says the cluster is ok (bound it with a timeout)."""
    client = aioredis.from_url(node.url)
    command = client.execute_command  # unannotated in redis-py
    try:
        while True:
            info = await command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
            if b"cluster_state:ok" in info:
                return
            await asyncio.sleep(0.05)  # polling Redis with a bound: no event to wait on
    finally:
        await client.aclose()


def remote_connector(server: RunningServer, connector_id: str) -> ConnectorSummary | None:
    """A connector of another instance, as this instance sees it (None: not seen)."""
    peers = federated(server).membership.peers.values()
    return next((c for lease in peers for c in lease.connectors if c.id == connector_id), None)


def sees(server: RunningServer, connector_id: str) -> bool:
    """The instance lists a connector of another instance."""
    return remote_connector(server, connector_id) is not None


def remote_inflight(server: RunningServer, connector_id: str) -> int:
    """Requests in flight on a connector of another instance, as this instance sees it (-1:
    not seen)."""
    connector = remote_connector(server, connector_id)
    return -1 if connector is None else connector.inflight


def remote_status(server: RunningServer, connector_id: str) -> str | None:
    """The status of a connector of another instance, as this instance sees it."""
    connector = remote_connector(server, connector_id)
    return None if connector is None else connector.status


def queue_depth(server: RunningServer, model: str = "m") -> int:
    """Waiters for `model` in the fleet queue, as this instance mirrors it."""
    return len(federated(server).queue.mirror.get(model, ()))
