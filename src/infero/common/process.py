"""Process entry shared by the connectors: logging, event loop, signals, exit code."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from infero.common.logs import setup_logging
from infero.common.settings import ConnectorSettings

logger = logging.getLogger(__name__)


class Runtime(Protocol):
    """A connector runtime as its process drives it."""

    connected: asyncio.Event
    """Set while the server has accepted the connector."""

    async def run(self) -> int:
        """Serve until it leaves; the exit code."""
        ...

    def signal_received(self, name: str) -> None:
        """SIGTERM/SIGINT arrived (the first drains, the second stops)."""
        ...

    def request_stop(self) -> None:
        """Leave now."""
        ...


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed, else None (asyncio's default)."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def settle_heap() -> None:
    """Move the objects that exist once the process is up out of the cyclic GC's way.

    Modules, classes and the app live as long as the process; without this every full
    collection scans them again, a pause in every open stream (see docs/performance.md)."""
    gc.collect()
    gc.freeze()


async def settle_heap_once_connected(runtime: Runtime) -> None:
    """`settle_heap` once, when the server first accepts the connector (it is started then)."""
    await runtime.connected.wait()
    settle_heap()


def start_logging(settings: ConnectorSettings, filename: str) -> None:
    """`LOG_LEVEL`, `LOG_FORMAT`, and a rotating `filename` in `LOG_DIR` when one is set."""
    log_file = Path(settings.log_dir).expanduser() / filename if settings.log_dir else None
    setup_logging(settings.log_level, settings.log_format, log_file=log_file)


async def serve_with_signals(runtime: Runtime) -> int:
    """Run `runtime` with SIGTERM/SIGINT wired to `signal_received`."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, runtime.signal_received, sig.name)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix platforms
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(runtime.request_stop))
    try:
        return await runtime.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def serve_process(runtime: Runtime) -> int:
    """`serve_with_signals`, and `settle_heap` once the connector is up (process only)."""
    settle = asyncio.create_task(settle_heap_once_connected(runtime), name="settle-heap")
    try:
        return await serve_with_signals(runtime)
    finally:
        settle.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await settle


def run_until_exit(runtime: Runtime, what: str) -> int:
    """Serve `runtime` on a new event loop with signals wired; the process exit code."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        try:
            code = runner.run(serve_process(runtime))
        except Exception:  # outermost supervisor: a bug must still end with a clear status
            logger.exception("%s failed", what)
            code = 1
    logger.info("%s exited with status %d", what, code)
    return code
