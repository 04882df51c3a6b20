"""Start the real server app on 127.0.0.1 port 0 (as `infero server` runs it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from infero.protocol.state import McpClientInfo, StateSnapshot, WorkerInfo
from infero.server import keys, tls
from infero.server.app import create_app
from infero.server.connections import server_runner
from infero.server.embedded import EmbeddedState
from infero.server.registry import Fleet
from infero.server.settings import ServerSettings
from infero.server.shared import SharedState


@dataclass
class RunningServer:
    """A server listening on loopback."""

    app: web.Application
    url: str
    """`http://127.0.0.1:<port>` (`https://` with TLS settings)."""

    @property
    def shared(self) -> SharedState:
        return self.app[keys.SHARED]

    @property
    def embedded(self) -> EmbeddedState:
        """The in-process implementation, for tests of its internals."""
        shared = self.shared
        assert isinstance(shared, EmbeddedState)
        return shared

    @property
    def fleet(self) -> Fleet:
        """The in-process registry, for tests of its internals."""
        return self.embedded.fleet

    def snapshot(self) -> StateSnapshot:
        return self.app[keys.SNAPSHOT]()

    def worker(self, worker_id: str) -> WorkerInfo | None:
        """The connector as `/api/state` lists it."""
        return next((w for w in self.snapshot().workers if w.id == worker_id), None)

    def status(self, worker_id: str) -> str | None:
        """The connector's status in `/api/state` (None when not listed)."""
        worker = self.worker(worker_id)
        return worker.status if worker is not None else None

    def relay(self, relay_id: str) -> McpClientInfo | None:
        """The MCP relay as `/api/state` lists it."""
        return next((r for r in self.snapshot().mcp.clients if r.id == relay_id), None)

    def queue_len(self, model: str) -> int:
        """Requests waiting for `model`, as `/api/state` shows."""
        found = next((m for m in self.snapshot().models if m.name == model), None)
        return found.queue_len if found is not None else 0

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http") + "/api/workers/connect"

    async def wait_for(self, predicate: Any) -> None:
        """Return once `predicate()` holds (re-checked on every fleet change); 10 s at most."""
        async with asyncio.timeout(10):
            await self.shared.changes.wait_for(predicate)


def settings(**overrides: Any) -> ServerSettings:
    """Server settings for tests: loopback, port 0, short timeouts where harmless."""
    values: dict[str, Any] = {"host": "127.0.0.1", "port": 0}
    values.update(overrides)
    return ServerSettings.model_validate(values)


@asynccontextmanager
async def running_server(
    config: ServerSettings | None = None, **overrides: Any
) -> AsyncIterator[RunningServer]:
    """Serve `create_app(config)` with the runner options `infero server` uses."""
    config = config or settings(**overrides)
    app = create_app(config)
    runner = server_runner(app, config, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    context = tls.context_of(app)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    scheme = "https" if context else "http"
    try:
        yield RunningServer(app=app, url=f"{scheme}://127.0.0.1:{port}")
    finally:
        await runner.cleanup()
