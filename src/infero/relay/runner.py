"""Process entry of `infero mcp`: logging, event loop, signals, then the `McpRelay`."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from infero.common.buildinfo import BUILD
from infero.common.logs import setup_logging
from infero.relay.runtime import COMPONENT, McpRelay
from infero.relay.settings import RelaySettings
from infero.worker.runner import _loop_factory

logger = logging.getLogger(__name__)

LOG_FILE = "infero-mcp.log"


async def _serve(relay: McpRelay) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, relay.signal_received, sig.name)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix platforms
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(relay.request_stop))
    try:
        return await relay.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run_relay(settings: RelaySettings, *, config_path: str | None) -> int:
    """Run the relay until it leaves; returns the process exit code."""
    log_file = Path(settings.log_dir).expanduser() / LOG_FILE if settings.log_dir else None
    setup_logging(settings.log_level, settings.log_format, log_file=log_file)
    logger.info("%s (config %s)", BUILD.line(COMPONENT), config_path)
    if settings.transport() != "http":
        try:
            import mcp  # noqa: F401  (the stdio/SSE bridge needs the SDK)
        except ImportError:
            logger.error("stdio and SSE providers need the MCP SDK: pip install 'infero[mcp]'")
            return 2
    relay = McpRelay(settings)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        code = runner.run(_serve(relay))
    logger.info("relay exited with status %d", code)
    return code
