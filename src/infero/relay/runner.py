"""Process entry of `infero mcp`: logging, then the `McpRelay` until it leaves."""

from __future__ import annotations

import logging

from infero.common.buildinfo import BUILD
from infero.common.process import run_until_exit, start_logging
from infero.relay.runtime import COMPONENT, McpRelay
from infero.relay.settings import RelaySettings

logger = logging.getLogger(__name__)

LOG_FILE = "infero-mcp.log"


def run_relay(settings: RelaySettings, *, config_path: str | None) -> int:
    """Run the relay until it leaves; returns the process exit code."""
    start_logging(settings, LOG_FILE)
    logger.info("%s (config %s)", BUILD.line(COMPONENT), config_path)
    if settings.transport() != "http" or settings.mcp_oauth_token_file:
        try:
            import mcp  # noqa: F401  (the stdio/SSE bridge and OAuth need the SDK)
        except ImportError:
            logger.error(
                "stdio and SSE providers and OAuth need the MCP SDK: pip install 'infero[mcp]'"
            )
            return 2
    return run_until_exit(McpRelay(settings, config_path=config_path), "relay")
