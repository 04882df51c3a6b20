"""Pieces the connector runtimes (`infero llm`, `infero mcp`) share around the link client.

`new_link_client` dials `SERVER_URL` as the settings say, `LinkStatus` tracks whether the
link is up and pushes a StatusUpdate as soon as the connector's state changes, and
`HttpPorts` serves the connector's own HTTP ports (status, metrics).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge

from infero.common.backoff import Backoff
from infero.common.linkclient import Link, LinkClient, LinkHandler
from infero.common.metrics import create_metrics_app
from infero.common.settings import ConnectorSettings
from infero.protocol import link

logger = logging.getLogger(__name__)


async def first_of(*waits: Awaitable[Any]) -> None:
    """Return when the first of `waits` finishes; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class StartupError(Exception):
    """The connector cannot start (a port, a file or a provider bridge cannot be opened)."""


def new_link_client(
    settings: ConnectorSettings,
    handler: LinkHandler,
    component: str,
    *,
    backoff: Backoff | None,
    sleep: Callable[[float], Awaitable[None]],
    clock: Callable[[], float],
) -> LinkClient:
    """The link client of a connector: `SERVER_URL`, `RECONNECT`, served by `handler`."""
    return LinkClient(
        settings.server_url,
        handler,
        component=component,
        reconnect=settings.reconnect,
        ca_file=settings.tls_ca_file,
        backoff=backoff,
        sleep=sleep,
        clock=clock,
    )


class LinkStatus:
    """Whether the link is up (`connected` and its gauge), and StatusUpdates pushed at once.

    `changed()` may be called at any time; while a link is up, the update built by
    `update()` is sent right away (several changes in a row are sent once). A new link
    starts clean: its hello already told the server the current state.
    """

    def __init__(self, update: Callable[[], link.StatusUpdate], gauge: Gauge) -> None:
        self.connected = asyncio.Event()
        """Set while the server has accepted our hello and the link is up."""
        self._update = update
        self._gauge = gauge
        self._dirty = asyncio.Event()
        self._pusher: asyncio.Task[None] | None = None

    def changed(self) -> None:
        """Something a StatusUpdate reports has changed."""
        self._dirty.set()

    def up(self, current: Link) -> None:
        """The server accepted us on `current`: push status changes on it."""
        self._dirty.clear()
        self._pusher = asyncio.create_task(self._push(current), name="status-pusher")
        self._gauge.set(1)
        self.connected.set()

    async def down(self) -> None:
        """The link closed: stop pushing."""
        self.connected.clear()
        self._gauge.set(0)
        pusher, self._pusher = self._pusher, None
        if pusher is not None:
            pusher.cancel()
            await asyncio.gather(pusher, return_exceptions=True)

    async def _push(self, current: Link) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await current.send(self._update())
            except ConnectionError:
                return


class HttpPorts:
    """The connector's own HTTP servers (status, metrics): started one by one, closed together."""

    def __init__(self) -> None:
        self._runners: list[web.AppRunner] = []

    async def serve(self, app: web.Application, host: str, port: int, setting: str) -> int:
        """Serve `app` on host:port (0: any free port) and return the bound port."""
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runners.append(runner)
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise StartupError(f"{setting}: cannot listen on {host}:{port}: {exc}") from None
        sockets = runner.addresses
        return int(sockets[0][1]) if sockets else port

    async def serve_metrics(self, registry: CollectorRegistry, port: int) -> str:
        """Serve `GET /metrics` on `METRICS_PORT`; returns its local URL."""
        bound = await self.serve(create_metrics_app(registry), "0.0.0.0", port, "METRICS_PORT")
        logger.info("metrics on port %d", bound)
        return f"http://127.0.0.1:{bound}/metrics"

    async def close(self) -> None:
        """Stop every server started."""
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()
