"""OpenAPI document and offline Swagger UI under `/api/client/`."""

from __future__ import annotations

from aiohttp import web

from infero.server.settings import ServerSettings


def setup(app: web.Application, settings: ServerSettings) -> None:
    """Mount `/api/client/openapi.json` and `/api/client/` on `app`."""
