"""Process entry of `infero llm`: logging, event loop, signals, then the `Connector`."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from infero.common.buildinfo import BUILD
from infero.common.logs import setup_logging
from infero.worker.runtime import COMPONENT, Connector
from infero.worker.settings import WorkerSettings

logger = logging.getLogger(__name__)

LOG_FILE = "infero-llm.log"


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def serve_with_signals(connector: Connector) -> int:
    """Run `connector` with SIGTERM/SIGINT wired to its drain (first) and stop (second)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, connector.signal_received, sig.name)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix platforms
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(connector.request_stop))
    try:
        return await connector.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run_worker(settings: WorkerSettings, *, config_path: str | None) -> int:
    """Run the connector until it leaves; returns the process exit code."""
    log_file = Path(settings.log_dir).expanduser() / LOG_FILE if settings.log_dir else None
    setup_logging(settings.log_level, settings.log_format, log_file=log_file)
    logger.info("%s", BUILD.line(COMPONENT))
    connector = Connector(settings, config_path=config_path)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        try:
            code = runner.run(serve_with_signals(connector))
        except Exception:  # outermost supervisor: a bug must still end with a clear status
            logger.exception("connector failed")
            code = 1
    logger.info("connector exited with status %d", code)
    return code
