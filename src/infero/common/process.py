"""Process entry shared by the connectors: logging, event loop, signals, exit code."""

from __future__ import annotations

import asyncio
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


def run_until_exit(runtime: Runtime, what: str) -> int:
    """Serve `runtime` on a new event loop with signals wired; the process exit code."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        try:
            code = runner.run(serve_with_signals(runtime))
        except Exception:  # outermost supervisor: a bug must still end with a clear status
            logger.exception("%s failed", what)
            code = 1
    logger.info("%s exited with status %d", what, code)
    return code
