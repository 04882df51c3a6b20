"""Two `infero server` instances sharing one `redis-server`, a connector linked only to A.

The scale-out benchmark's processes (`python -m bench --instances 2`): a fresh Redis on a free
port (Debian's `redis-server`, no persistence), instances A and B with `REDIS_ADDR`,
`PEER_KEY`, `INSTANCE_ID` and `INSTANCE_ADDR` set, one `infero llm` linked to A in front of the
fast mock backend, a byte forwarder in front of A (`bench.forwarder`) and the load generator.
Requests to A are served by A's own link; requests to B are relayed B -> A over the peer
channel (docs/scale-out.md); requests to the forwarder reach A through one more process that
does nothing else: the floor of any hop on this machine.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from bench import procs
from bench.presets import Preset
from bench.stack import (
    API_KEY,
    CLIENT_KEY,
    FAST_MODEL,
    POLL_INTERVAL,
    READY_TIMEOUT,
    Harness,
    Target,
)
from infero.server.fleetqueue import RACE_WINDOW

PEER_KEY = "bench-peer-key"
INSTANCES = ("a", "b")
"""Instance ids; the connector is linked to the first."""
CONNECTOR_ID = "bench-0"
OWN_COMMANDS = frozenset({"info", "ping"})
"""Redis commands the benchmark itself sends (readiness, counters), left out of the counts."""


class Fleet(Harness):
    """redis-server, instances A and B, a connector on A, the fast backend, the load generator."""

    def __init__(self, preset: Preset, work_dir: Path) -> None:
        super().__init__(preset, work_dir)
        self.redis_port = 0
        self.ports: dict[str, int] = {}
        self.fast_port = 0
        self.floor_port = 0
        self.children: dict[str, procs.Child] = {}
        """By role: redis, a, b, floor, connector, backend, loadgen."""
        self._redis: Any = None

    # ---- targets -------------------------------------------------------------------------

    @property
    def direct(self) -> Target:
        """The fast mock backend, no relay."""
        return Target("direct", f"http://127.0.0.1:{self.fast_port}/v1", {})

    def instance(self, name: str) -> Target:
        """infero's public OpenAI API on instance `name` (`a`: same instance, `b`: relayed)."""
        auth = {"Authorization": f"Bearer {API_KEY}"}
        return Target(name, f"http://127.0.0.1:{self.ports[name]}/api/v1", auth)

    @property
    def floor(self) -> Target:
        """Instance A through the byte forwarder: the same requests, one more process."""
        auth = {"Authorization": f"Bearer {API_KEY}"}
        return Target("floor", f"http://127.0.0.1:{self.floor_port}/api/v1", auth)

    # ---- lifecycle -----------------------------------------------------------------------

    async def _start(self) -> None:
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            raise procs.StackError("redis-server is not installed (Debian: apt install redis)")
        self.redis_port = procs.free_port()
        self.children["redis"] = await self._child(
            "redis",
            [
                redis_server,
                *("--port", str(self.redis_port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.work_dir)),
            ],
            stdout=False,
        )
        self.children["backend"] = backend = await self._child(
            "backend-fast", procs.python("bench.mock_backend", f"--models={FAST_MODEL}")
        )
        self.children["loadgen"] = loadgen = await self._start_loadgen()
        await self._wait_redis()
        redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        for name in INSTANCES:
            port = self.ports[name] = procs.free_port()
            self.children[name] = await self._child(
                f"server-{name}",
                procs.infero("server"),
                env=self._env(
                    HOST="127.0.0.1",
                    PORT=str(port),
                    API_KEY=API_KEY,
                    CLIENT_KEY=CLIENT_KEY,
                    DRAIN_TIMEOUT="0",
                    REDIS_ADDR=redis_url,
                    PEER_KEY=PEER_KEY,
                    INSTANCE_ID=name,
                    INSTANCE_ADDR=f"http://127.0.0.1:{port}",
                ),
                stdout=False,
            )
        self.fast_port = (await backend.read_json(READY_TIMEOUT))["port"]
        await loadgen.read_json(READY_TIMEOUT)
        for name in INSTANCES:
            url = f"http://127.0.0.1:{self.ports[name]}/healthz"
            await self._wait_http(url, self.children[name])
        home = INSTANCES[0]
        self.children["floor"] = floor = await self._child(
            "forwarder", procs.python("bench.forwarder", f"--target-port={self.ports[home]}")
        )
        self.floor_port = (await floor.read_json(READY_TIMEOUT))["port"]
        self.children["connector"] = await self._child(
            f"connector-{CONNECTOR_ID}",
            procs.infero("llm"),
            env=self._env(
                SERVER_URL=f"ws://127.0.0.1:{self.ports[home]}/api/llm/connect",
                CLIENT_KEY=CLIENT_KEY,
                CLIENT_ID=CONNECTOR_ID,
                CLIENT_NAME=CONNECTOR_ID,
                COMPLETION_BASE_URL=f"http://127.0.0.1:{self.fast_port}/v1",
                API_STYLE="openai",
                MAX_CONCURRENCY=str(self.preset.connector_capacity),
                DRAIN_TIMEOUT="0",
            ),
            stdout=False,
        )
        for name in INSTANCES:
            await self._wait_connector(name, home)
        # For RACE_WINDOW after a connector links, a request taking one of its slots first asks
        # Redis whether a waiter joined elsewhere (docs/scale-out.md): the figures are those of
        # the steady state that follows, as in a fleet whose connectors stay linked.
        await asyncio.sleep(RACE_WINDOW)

    async def _wait_redis(self) -> None:
        self._redis = aioredis.Redis(host="127.0.0.1", port=self.redis_port)
        self._exit.push_async_callback(self._redis.aclose)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            self.children["redis"].check_alive()
            try:
                if await self._redis.ping():
                    return
            except (RedisError, OSError):
                pass
            await asyncio.sleep(POLL_INTERVAL)
        raise procs.StackError(f"redis-server not answering PING after {READY_TIMEOUT:g}s")

    async def _wait_connector(self, name: str, home: str) -> None:
        """Until instance `name` lists the connector as ready, linked to `home`."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            self.children["connector"].check_alive()
            snap = await self.state_of(self.ports[name])
            if any(
                w.id == CONNECTOR_ID and w.status in ("idle", "busy") and w.instance == home
                for w in snap.workers
            ):
                return
            await asyncio.sleep(POLL_INTERVAL)
        raise procs.StackError(
            f"instance {name} does not list {CONNECTOR_ID} on {home} after {READY_TIMEOUT:g}s"
        )

    # ---- meters --------------------------------------------------------------------------

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by every process, by role."""
        return {role: child.cpu_seconds() for role, child in self.children.items()}

    async def redis_commands(self) -> Counter[str]:
        """Commands Redis has run so far by name (`INFO commandstats`), not the bench's own."""
        stats: dict[str, dict[str, Any]] = await self._redis.info("commandstats")
        calls: Counter[str] = Counter()
        for key, value in stats.items():
            name = key.removeprefix("cmdstat_")
            if name not in OWN_COMMANDS:
                calls[name] = int(value["calls"])
        return calls
