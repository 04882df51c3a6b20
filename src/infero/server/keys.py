"""Typed application keys shared by the server's modules (aiohttp `AppKey`s)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from infero.protocol.state import StateSnapshot
from infero.server.events import EventBus
from infero.server.settings import ServerSettings

SETTINGS = web.AppKey("settings", ServerSettings)
"""The server's resolved settings."""

EVENTS = web.AppKey("events", EventBus)
"""Request events for metrics and logs."""

SnapshotFn = Callable[[], StateSnapshot]

SNAPSHOT: web.AppKey[SnapshotFn] = web.AppKey("snapshot")
"""Builds the current `/api/state` document (also used by metrics and the dashboard)."""
