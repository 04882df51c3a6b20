"""`run_server(settings)`: serve until a signal, drain, exit. Used by `infero server`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from infero.common.buildinfo import BUILD
from infero.common.logs import setup_logging
from infero.common.process import loop_factory, settle_heap
from infero.common.settings import ConfigError
from infero.server import keys, tls
from infero.server.app import create_app
from infero.server.auth import KeyRing
from infero.server.connections import server_runner
from infero.server.settings import ServerSettings

logger = logging.getLogger(__name__)

LISTEN_BACKLOG = 1024
"""Pending TCP connections the kernel queues (aiohttp's default is 128): a reconnect storm of
a thousand connectors, or a burst of clients, must not overflow it and wait 1-3 s for SYN
retransmission. The kernel caps it at `net.core.somaxconn`."""


def warn_open_doors(settings: ServerSettings, keyring: KeyRing) -> None:
    """One WARNING per way in that needs no secret (see docs/security.md)."""
    if keyring.open:
        logger.warning("no API key configured: /api/* is open to anyone who can reach this port")
    if not settings.client_key:
        logger.warning("CLIENT_KEY is empty: any connector can register")


async def drain_then_stop(
    app: web.Application, drain_timeout: float, second_signal: asyncio.Event
) -> None:
    """Stop taking work, then return once nothing is in flight, at the timeout, or on a signal.

    `drain_timeout` 0 returns at once; a negative value waits without limit.
    """
    lifecycle = app[keys.LIFECYCLE]
    lifecycle.start_drain()
    app[keys.SHARED].changes.bump()
    if drain_timeout == 0:
        return
    timeout = None if drain_timeout < 0 else drain_timeout
    idle = asyncio.create_task(lifecycle.wait_idle())
    interrupted = asyncio.create_task(second_signal.wait())
    try:
        await asyncio.wait({idle, interrupted}, timeout=timeout, return_when="FIRST_COMPLETED")
    finally:
        for task in (idle, interrupted):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if lifecycle.inflight:
        logger.warning("stopping with %d request(s) still in flight", lifecycle.inflight)


async def serve(settings: ServerSettings) -> int:
    """Run the server until SIGTERM/SIGINT, or until it must stop by itself (a duplicate
    INSTANCE_ID: exit code 2), then drain, on the running loop."""
    app = create_app(settings)
    lifecycle = app[keys.LIFECYCLE]
    warn_open_doors(settings, app[keys.KEYRING])
    first, second = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if first.is_set():
            logger.warning("second signal %s: stopping now", signal.Signals(signum).name)
            second.set()
        else:
            logger.info(
                "signal %s: draining (up to %ss; again to stop now)",
                signal.Signals(signum).name,
                settings.drain_timeout,
            )
            first.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    certificate = app.get(tls.TLS)
    loop.add_signal_handler(
        signal.SIGHUP,
        certificate.reload
        if certificate is not None
        else lambda: logger.info("SIGHUP: nothing to reload (no TLS_CERT_FILE)"),
    )
    runner = server_runner(app, settings, handler_cancellation=True, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(
            runner,
            settings.host,
            settings.port,
            backlog=LISTEN_BACKLOG,
            ssl_context=tls.context_of(app),
        )
        await site.start()
        settle_heap()
        scheme = "https" if certificate is not None else "http"
        logger.info(
            "%s listening on %s:%s (%s)", BUILD.line("infero"), settings.host, settings.port, scheme
        )
        await _first_of(first.wait(), lifecycle.failed.wait())
        await drain_then_stop(app, settings.drain_timeout, second)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        await runner.cleanup()
    if lifecycle.failure:
        logger.error("server stopped: %s", lifecycle.failure)
        return 2
    logger.info("server stopped")
    return 0


async def _first_of(*waits: Coroutine[Any, Any, Any]) -> None:
    """Return once one of `waits` returned; the others are cancelled."""
    tasks = [asyncio.create_task(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when="FIRST_COMPLETED")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def run_server(settings: ServerSettings) -> int:
    """Entry point of `infero server`: logging, uvloop when available, serve, exit code."""
    setup_logging(settings.log_level, settings.log_format)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(serve(settings))
    except ConfigError as exc:
        print(f"infero: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"infero: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 1
