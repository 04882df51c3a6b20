"""Recent errors per connector, relay and model, with the server time they were first seen."""

from __future__ import annotations

from collections import deque
from datetime import datetime

from infero.protocol.state import StateSnapshot

KEEP = 5
"""Errors kept per entity."""


class ErrorHistory:
    """Remembers each new `last_error` text (the state only carries the latest one)."""

    def __init__(self, keep: int = KEEP) -> None:
        self._keep = keep
        self._errors: dict[str, deque[tuple[datetime, str]]] = {}

    def note(self, key: str, error: str, at: datetime) -> None:
        if not error:
            return
        seen = self._errors.setdefault(key, deque(maxlen=self._keep))
        if not seen or seen[-1][1] != error:
            seen.append((at, error))

    def add(self, snapshot: StateSnapshot) -> None:
        """Record the errors of one snapshot's workers and relays."""
        now = snapshot.server.now
        for worker in snapshot.workers:
            if worker.last_error:
                self.note(f"worker:{worker.id}", worker.last_error, now)
        for relay in snapshot.mcp.clients:
            if relay.last_error:
                self.note(f"relay:{relay.id}", relay.last_error, relay.last_error_at or now)

    def of(self, key: str) -> list[tuple[datetime, str]]:
        """Newest first."""
        return list(reversed(self._errors.get(key, ())))
