"""A versioned change notification that any number of waiters can follow."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class ChangeFeed:
    """`bump()` on every change; waiters await a version newer than the one they saw.

    `bump()` is on the request path (dispatch and release bump too), so it costs an integer
    increment when nobody waits.
    """

    def __init__(self) -> None:
        self.version = 0
        self._event: asyncio.Event | None = None

    def bump(self) -> None:
        """Record a change and wake every waiter."""
        self.version += 1
        event = self._event
        if event is not None:
            self._event = None
            event.set()

    async def wait(self, seen: int) -> int:
        """Return the current version once it differs from `seen`."""
        while self.version == seen:
            if self._event is None:
                self._event = asyncio.Event()
            await self._event.wait()
        return self.version

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once `predicate()` holds (checked after each change); bound it with a timeout."""
        seen = self.version
        while not predicate():
            seen = await self.wait(seen)
