"""`GET /state`: the self-contained web dashboard (filled in by the operations work)."""

from __future__ import annotations

from aiohttp import web

from infero.server.settings import ServerSettings


def setup(app: web.Application, settings: ServerSettings) -> None:
    """Mount the dashboard routes on `app`."""
