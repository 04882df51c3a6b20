"""The processes of one benchmark run, started on loopback and stopped in reverse order."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import aiohttp
from pydantic import ValidationError

from bench import procs
from bench.loadgen import Cycle, Job, Result
from bench.presets import Preset
from infero.protocol.state import StateSnapshot

API_KEY = "bench-api-key"
CLIENT_KEY = "bench-client-key"
FAST_MODEL = "bench"


def slow_model(delay: float) -> str:
    """The slow backend's model whose tokens come `delay` seconds apart."""
    return f"slow-{delay * 1000:g}ms"


READY_TIMEOUT = 30.0
"""Seconds any child gets to become ready (a busy 2-core machine starts Python slowly)."""
POLL_INTERVAL = 0.05
"""Readiness polling period; a harness may poll a real signal with a bounded deadline."""

_INHERITED_SETTINGS = (
    "CONFIG_FILE",
    "LOG_DIR",
    "METRICS_PORT",
    "STATUS_ADDR",
    "ALLOWED_ORIGINS",
    "API_KEYS_FILE",
    "OPERATOR_KEY",
    "REDIS_ADDR",
    "MODELS",
    "COMPLETION_API_KEY",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a load goes: the backend called directly, or infero's public API."""

    name: str
    base_url: str
    """OpenAI base URL (`.../v1` or `.../api/v1`)."""
    headers: dict[str, str]

    def job(self, path: str, body: str, *, stream: bool, **sizes: int | float | bool) -> Job:
        """A load-generator job against `base_url + path`."""
        return Job(
            url=self.base_url + path,
            body=body,
            headers={"Content-Type": "application/json", **self.headers},
            stream=stream,
            concurrency=int(sizes.get("concurrency", 1)),
            count=int(sizes.get("count", 0)),
            duration=float(sizes.get("duration", 0.0)),
            warmup=int(sizes.get("warmup", 0)),
            gaps=bool(sizes.get("gaps", False)),
            ramp=float(sizes.get("ramp", 0.0)),
        )


class Harness:
    """Children of one run on loopback, stopped in reverse order, and the load generator.

    A subclass starts its processes in `_start` and says whose CPU time counts in
    `cpu_seconds`; `run` sends jobs to the load generator (started with `_start_loadgen`).
    """

    def __init__(self, preset: Preset, work_dir: Path) -> None:
        self.preset = preset
        self.work_dir = work_dir
        self._exit = AsyncExitStack()
        self._loadgen: procs.Child | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        try:
            self._session = await self._exit.enter_async_context(aiohttp.ClientSession())
            await self._start()
        except BaseException:
            await self._exit.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._exit.aclose()

    async def _start(self) -> None:
        raise NotImplementedError

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by the processes a figure is about, by role."""
        raise NotImplementedError

    async def _child(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        stdin: bool = False,
        stdout: bool = True,
    ) -> procs.Child:
        child = await procs.start(
            name, argv, log_dir=self.work_dir, env=env, stdin=stdin, stdout=stdout
        )
        self._exit.push_async_callback(child.stop)
        return child

    def _env(self, **settings: str) -> dict[str, str]:
        home = self.work_dir / "home"
        env = {k: v for k, v in os.environ.items() if k not in _INHERITED_SETTINGS}
        env.update(
            XDG_CONFIG_HOME=str(home / "config"),
            XDG_STATE_HOME=str(home / "state"),
            NO_PROXY="*",
            **settings,
        )
        return env

    async def _start_loadgen(self) -> procs.Child:
        self._loadgen = await self._child("loadgen", procs.python("bench.loadgen"), stdin=True)
        return self._loadgen

    async def _wait_http(self, url: str, child: procs.Child) -> None:
        assert self._session is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            child.check_alive()
            try:
                async with self._session.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(POLL_INTERVAL)
        raise procs.StackError(f"{child.name} not ready at {url} after {READY_TIMEOUT:g}s")

    async def state_of(self, port: int) -> StateSnapshot:
        """`/api/state` of the server listening on `port`."""
        assert self._session is not None
        url = f"http://127.0.0.1:{port}/api/state"
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with self._session.get(url, headers=headers) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise procs.StackError(f"{url} answered {resp.status}: {text[:200]}")
        try:
            return StateSnapshot.model_validate_json(text)
        except ValidationError as exc:
            raise procs.StackError(f"{url} is not a StateSnapshot: {exc}") from None

    async def run(self, job: Job) -> Result:
        """Run one load-generator job and return its result."""
        assert self._loadgen is not None
        await self._loadgen.send_json(job)
        budget = 120.0 + job["duration"] + job["count"] * 2.0
        result: Result = await self._loadgen.read_json(budget)  # type: ignore[assignment]
        return result

    async def run_cycle(self, cycle: Cycle) -> list[Result]:
        """Run one load-generator cycle (jobs taking turns) and return a result per job."""
        assert self._loadgen is not None
        await self._loadgen.send_json(cycle)
        budget = 120.0 + (cycle["count"] + cycle["warmup"]) * len(cycle["jobs"]) * 2.0
        reply = await self._loadgen.read_json(budget)
        results: list[Result] = reply["results"]
        return results


class Stack(Harness):
    """Mock backends, `infero server`, `infero llm` connectors and the load generator."""

    def __init__(self, preset: Preset, work_dir: Path, *, connectors: int = 1) -> None:
        super().__init__(preset, work_dir)
        self.connectors = connectors
        self.server_port = 0
        self.fast_port = 0
        self.slow_port = 0
        self.server: procs.Child | None = None
        self._fast_backend: procs.Child | None = None
        self._slow_backend: procs.Child | None = None
        self.connector_children: list[procs.Child] = []

    # ---- targets -------------------------------------------------------------------------

    @property
    def direct(self) -> Target:
        """The fast mock backend, no relay."""
        return Target("direct", f"http://127.0.0.1:{self.fast_port}/v1", {})

    @property
    def slow_direct(self) -> Target:
        """The slow mock backend (inter-token delay), no relay."""
        return Target("direct", f"http://127.0.0.1:{self.slow_port}/v1", {})

    @property
    def infero(self) -> Target:
        """infero's public OpenAI API."""
        auth = {"Authorization": f"Bearer {API_KEY}"}
        return Target("infero", f"http://127.0.0.1:{self.server_port}/api/v1", auth)

    @property
    def slow_connector(self) -> procs.Child:
        """The connector relaying to the slow backend."""
        return self.connector_children[-1]

    @property
    def link_url(self) -> str:
        """The server's connector link endpoint."""
        return f"ws://127.0.0.1:{self.server_port}/api/llm/connect"

    async def _start(self) -> None:
        p = self.preset
        self._fast_backend = fast = await self._child(
            "backend-fast",
            procs.python(
                "bench.mock_backend",
                f"--models={FAST_MODEL}",
                f"--embedding-dim={p.embedding_dim}",
            ),
        )
        self._slow_backend = slow = await self._child(
            "backend-slow",
            procs.python(
                "bench.mock_backend",
                "--models=",
                *(f"--model-delay={slow_model(d)}={d}" for d, _ in p.slow_runs),
            ),
        )
        loadgen = await self._start_loadgen()
        self.server_port = procs.free_port()
        self.server = await self._child(
            "server",
            procs.infero("server"),
            env=self._env(
                HOST="127.0.0.1",
                PORT=str(self.server_port),
                API_KEY=API_KEY,
                CLIENT_KEY=CLIENT_KEY,
                DRAIN_TIMEOUT="0",
                QUEUE_MAX=str(max(100, 2 * p.slow_streams)),
            ),
            stdout=False,
        )
        self.fast_port = (await fast.read_json(READY_TIMEOUT))["port"]
        self.slow_port = (await slow.read_json(READY_TIMEOUT))["port"]
        await loadgen.read_json(READY_TIMEOUT)
        await self._wait_http(f"http://127.0.0.1:{self.server_port}/healthz", self.server)
        wanted = {f"bench-{i}": self.fast_port for i in range(self.connectors)}
        wanted["bench-slow"] = self.slow_port
        for client_id, port in wanted.items():
            child = await self._child(
                f"connector-{client_id}",
                procs.infero("llm"),
                env=self._env(
                    SERVER_URL=self.link_url,
                    CLIENT_KEY=CLIENT_KEY,
                    CLIENT_ID=client_id,
                    CLIENT_NAME=client_id,
                    COMPLETION_BASE_URL=f"http://127.0.0.1:{port}/v1",
                    API_STYLE="openai",
                    MAX_CONCURRENCY=str(p.connector_capacity),
                    DRAIN_TIMEOUT="0",
                ),
                stdout=False,
            )
            self.connector_children.append(child)
        await self._wait_workers(set(wanted))

    async def state(self) -> StateSnapshot:
        """The server's `/api/state`."""
        return await self.state_of(self.server_port)

    async def _wait_workers(self, ids: set[str]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        ready: set[str] = set()
        while time.monotonic() < deadline:
            for child in self.connector_children:
                child.check_alive()
            snap = await self.state()
            ready = {w.id for w in snap.workers if w.status in ("idle", "busy")}
            if ids <= ready:
                return
            await asyncio.sleep(POLL_INTERVAL)
        missing = ", ".join(sorted(ids - ready))
        raise procs.StackError(f"connectors not ready after {READY_TIMEOUT:g}s: {missing}")

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by the processes on the fast path, by role."""
        assert self.server is not None
        assert self._fast_backend is not None
        assert self._loadgen is not None
        fast = self.connector_children[: self.connectors]
        return {
            "server": self.server.cpu_seconds(),
            "connector": sum(c.cpu_seconds() for c in fast),
            "backend": self._fast_backend.cpu_seconds(),
            "loadgen": self._loadgen.cpu_seconds(),
        }

    def slow_cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by the processes on the slow-stream path, by role."""
        assert self.server is not None
        assert self._slow_backend is not None
        assert self._loadgen is not None
        return {
            "server": self.server.cpu_seconds(),
            "connector": self.slow_connector.cpu_seconds(),
            "backend": self._slow_backend.cpu_seconds(),
            "loadgen": self._loadgen.cpu_seconds(),
        }

    @asynccontextmanager
    async def idle_links(
        self, count: int, *, prefix: str = "idle", churn_per_s: float = 0.0
    ) -> AsyncIterator[dict[str, object]]:
        """`count` simulated idle connectors, connected for the duration of the block.

        With `churn_per_s`, that many leave and as many new ones join every second.
        """
        child = await procs.start(
            f"{prefix}-links",
            procs.python(
                "bench.idle_links",
                f"--url={self.link_url}",
                f"--client-key={CLIENT_KEY}",
                f"--count={count}",
                f"--prefix={prefix}",
                f"--churn-per-s={churn_per_s}",
            ),
            log_dir=self.work_dir,
        )
        try:
            yield await child.read_json(READY_TIMEOUT + count * 0.05)
        finally:
            await child.stop()
