"""Backend health and model polling: ready while discovery works, `not_ready` while it fails."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from infero.common.backoff import Backoff
from infero.worker.backend import BackendDown, Discovery

logger = logging.getLogger(__name__)


class BackendMonitor:
    """Probe every `poll_interval` when healthy, with the backoff schedule when down.

    `on_change()` is called whenever health, the model list or the backend kind changes.
    While down, the last known models stay advertised (shown as unavailable by the server).
    A non-empty `static_models` replaces discovery's list (discovery still decides health).
    """

    def __init__(
        self,
        probe: Callable[[], Awaitable[Discovery]],
        *,
        poll_interval: float,
        on_change: Callable[[], None],
        static_models: tuple[str, ...] = (),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        backoff: Backoff | None = None,
    ) -> None:
        self._probe = probe
        self._interval = poll_interval
        self._on_change = on_change
        self._static = static_models
        self._sleep = sleep
        self.backoff = backoff or Backoff()
        self.healthy = False
        self.models: tuple[str, ...] = static_models
        self.kind = ""
        self.last_error = ""
        self.probed = asyncio.Event()
        """Set after the first probe, whatever its result."""

    async def probe_once(self) -> float:
        """Probe now, update the state; returns the delay before the next probe."""
        try:
            found = await self._probe()
        except BackendDown as exc:
            delay = self.backoff.next_delay()
            changed = self.healthy or not self.probed.is_set()
            if self.healthy or self.last_error != str(exc):
                logger.warning("backend not ready: %s (next try in %gs)", exc, delay)
            self.healthy = False
            self.last_error = str(exc)
        else:
            self.backoff.reset()
            models = self._static or found.models
            changed = (
                not self.healthy
                or models != self.models
                or found.kind != self.kind
                or not self.probed.is_set()
            )
            if not self.healthy:
                logger.info("backend ready (%s): %d model(s)", found.kind, len(models))
            elif models != self.models:
                logger.info("backend models changed: %s", ", ".join(models) or "(none)")
            self.healthy = True
            self.models = models
            self.kind = found.kind
            self.last_error = ""
            delay = self._interval
        self.probed.set()
        if changed:
            self._on_change()
        return delay

    async def run(self) -> None:
        """Probe forever (cancel to stop)."""
        while True:
            delay = await self.probe_once()
            await self._sleep(delay)
