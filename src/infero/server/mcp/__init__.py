"""The MCP broker: `/api/mcp/connect` for relays and `/api/mcp/id/{id}` for MCP clients."""

from __future__ import annotations

from aiohttp import web

from infero.server.settings import ServerSettings


def setup(app: web.Application, settings: ServerSettings) -> None:
    """Mount the MCP routes on `app` (filled in by the MCP work)."""
