"""Typed application keys shared by the server's modules (aiohttp `AppKey`s)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from infero.protocol.state import StateSnapshot
from infero.server.auth import KeyRing
from infero.server.bodies import BodyBudget
from infero.server.events import EventBus
from infero.server.lifecycle import Lifecycle
from infero.server.settings import ServerSettings
from infero.server.shared import SharedState

SETTINGS = web.AppKey("settings", ServerSettings)
"""The server's resolved settings."""

EVENTS = web.AppKey("events", EventBus)
"""Request events for metrics and logs."""

SnapshotFn = Callable[[], StateSnapshot]

SNAPSHOT: web.AppKey[SnapshotFn] = web.AppKey("snapshot")
"""Builds the current `/api/state` document (also used by metrics and the dashboard)."""

KEYRING = web.AppKey("keyring", KeyRing)
"""Client API keys (`match(token) -> ApiKey | None`); the MCP broker checks callers with it."""

SHARED: web.AppKey[SharedState] = web.AppKey("shared")
"""The fleet's shared state (registry, scheduler, queues, relays, control, change feed)."""

LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
"""Draining flag and in-flight accounting (the MCP broker counts its calls here too)."""

BODIES = web.AppKey("bodies", BodyBudget)
"""Bytes of request bodies held at once (MAX_HELD_BODY_BYTES): OpenAI routes and MCP broker."""
