"""Drain, undrain, shutdown and signals of a connector: when to take work and when to leave.

The connector says how much work is in flight, what to do when its status changed (push it
to the server) and how to leave; `Drain` decides. `DRAIN_TIMEOUT`: 0 leaves at once, a
negative value waits as long as work is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from infero.protocol import link

logger = logging.getLogger(__name__)


class Drain:
    """The drain state machine of one connector."""

    def __init__(
        self,
        *,
        timeout: float,
        inflight: Callable[[], int],
        changed: Callable[[], None],
        stop: Callable[[], None],
        unit: str = "request",
    ) -> None:
        self.timeout = timeout
        self._inflight = inflight
        self._changed = changed
        self._stop = stop
        self._unit = unit
        self.draining = False
        """True while no new work is taken."""
        self.leaving = False
        """True once the connector was told to leave (it cannot be undrained then)."""
        self._shutdown = False
        self._signals = 0
        self._timer: asyncio.Task[None] | None = None

    def drain(self, *, by: str = "") -> None:
        """Take nothing new, let in-flight work finish, then leave (within the timeout)."""
        if not self.draining:
            self.draining = True
            logger.info(
                "draining (asked by %s): %d %s(s) in flight",
                by or "unknown",
                self._inflight(),
                self._unit,
            )
            self._changed()
        if self.timeout == 0 or self._inflight() == 0:
            self.leave()
            return
        if self.timeout > 0 and self._timer is None:
            self._timer = asyncio.create_task(self._deadline(self.timeout), name="drain-deadline")

    def undrain(self, *, by: str = "") -> bool:
        """Take work again; refused (False) after a shutdown or once leaving."""
        if self._shutdown or self.leaving:
            logger.warning("undrain asked by %s refused: shutting down", by or "unknown")
            return False
        self._cancel_timer()
        if self.draining:
            self.draining = False
            logger.info("undrained (asked by %s)", by or "unknown")
            self._changed()
        return True

    def shutdown(self, *, by: str = "") -> None:
        """Drain and leave; unlike `drain`, it cannot be undone with `undrain`."""
        logger.info("shutdown asked by %s", by or "unknown")
        self._shutdown = True
        self.drain(by=by)

    def control(self, frame: link.Control) -> None:
        """A Control frame: the server relays an operator's request."""
        by = f"server operator {frame.by!r}" if frame.by else "server operator"
        logger.info("the server asks to %s (by %s)", frame.action, by)
        if frame.action == "drain":
            self.drain(by=by)
        elif frame.action == "undrain":
            self.undrain(by=by)
        else:
            self.shutdown(by=by)

    def signal(self, name: str) -> None:
        """SIGTERM/SIGINT: the first drains, the second leaves at once."""
        self._signals += 1
        if self._signals == 1:
            self.drain(by=f"signal {name}")
        else:
            logger.info("second %s: exiting now", name)
            self.leave()

    def idle(self) -> None:
        """Call when the last in-flight work ended: a draining connector leaves."""
        if self.draining and self._inflight() == 0:
            logger.info("drained: no %s in flight", self._unit)
            self.leave()

    def leave(self) -> None:
        """Leave now (whatever is in flight is aborted)."""
        self.leaving = True
        self._cancel_timer()
        self._stop()

    async def close(self) -> None:
        """Cancel the deadline timer (the connector is shutting down)."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer is not asyncio.current_task():
            self._timer.cancel()
        self._timer = None

    async def _deadline(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        logger.warning(
            "drain timeout (%gs) reached with %d %s(s) in flight",
            seconds,
            self._inflight(),
            self._unit,
        )
        self.leave()
