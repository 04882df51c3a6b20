"""Server lifecycle: draining flag and in-flight request accounting."""

from __future__ import annotations

import asyncio


class Lifecycle:
    """Whether the server drains, and how many requests are in flight (for a clean exit)."""

    def __init__(self) -> None:
        self.draining = False
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.stopping = asyncio.Event()
        """Set when the server shuts down: long-lived streams end."""
        self.failure = ""
        """Why the server must stop by itself (a duplicate INSTANCE_ID found while running)."""
        self.failed = asyncio.Event()
        """Set with `failure`: the runner drains and exits with an error."""

    def fail(self, reason: str) -> None:
        """The server must stop (drain, then exit non-zero): `reason` says why."""
        if not self.failed.is_set():
            self.failure = reason
            self.failed.set()

    def start_drain(self) -> None:
        """Refuse new work from now on."""
        self.draining = True

    def enter(self) -> None:
        """A request started."""
        self.inflight += 1
        self._idle.clear()

    def leave(self) -> None:
        """A request finished."""
        self.inflight -= 1
        if self.inflight <= 0:
            self.inflight = 0
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once nothing is in flight."""
        await self._idle.wait()
