"""Prometheus metrics of the server (filled in by the operations work)."""

from __future__ import annotations

from aiohttp import web

from infero.server.settings import ServerSettings


def setup(app: web.Application, settings: ServerSettings) -> None:
    """Create the registry, subscribe to events and mount `/metrics` on `app`."""
