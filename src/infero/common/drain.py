"""Drain, undrain, shutdown and signals of a connector: when to take work and when to leave.

- drain: take no new work, finish what is in flight, stay linked; `undrain` resumes.
- shutdown (also the first SIGTERM/SIGINT): drain, then leave once idle or when
  `DRAIN_TIMEOUT` runs out (0 leaves at once, a negative value waits as long as work is in
  flight); it cannot be undone. A second signal leaves at once.
- `EXIT_WHEN_DRAINED` (for scripts): a drain also leaves once idle, as a shutdown does, but
  may still be undone by an undrain until then.

The connector says how much work is in flight, what to do when its status changed (push it
to the server) and how to leave; `Drain` decides.
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
        exit_when_drained: bool = False,
    ) -> None:
        self.timeout = timeout
        self.exit_when_drained = exit_when_drained
        self._inflight = inflight
        self._changed = changed
        self._stop = stop
        self._unit = unit
        self.draining = False
        """True while no new work is taken."""
        self.shutting_down = False
        """True once a shutdown was asked for: the connector leaves when idle, for good."""
        self.leaving = False
        """True once the connector was told to leave (it cannot be undrained then)."""
        self._signals = 0
        self._timer: asyncio.Task[None] | None = None

    @property
    def exits_when_idle(self) -> bool:
        """A draining connector that leaves once its last work ended."""
        return self.draining and (self.shutting_down or self.exit_when_drained)

    def drain(self, *, by: str = "") -> None:
        """Take nothing new and let in-flight work finish; stay linked until `undrain`."""
        self._start_draining(by)
        if self.exit_when_drained:
            self._leave_when_idle()

    def undrain(self, *, by: str = "") -> bool:
        """Take work again; refused (False) after a shutdown or once leaving."""
        if self.shutting_down or self.leaving:
            logger.warning("undrain asked by %s refused: shutting down", by or "unknown")
            return False
        self._cancel_timer()
        if self.draining:
            self.draining = False
            logger.info("undrained (asked by %s)", by or "unknown")
            self._changed()
        return True

    def shutdown(self, *, by: str = "") -> None:
        """Drain, then leave once idle; unlike `drain`, it cannot be undone with `undrain`."""
        if not self.shutting_down:
            logger.info("shutdown asked by %s", by or "unknown")
            self.shutting_down = True
            if self.draining:
                self._changed()
        self._start_draining(by)
        self._leave_when_idle()

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
        """SIGTERM/SIGINT: the first shuts down (drain, then leave), the second leaves now."""
        self._signals += 1
        if self._signals == 1:
            self.shutdown(by=f"signal {name}")
        else:
            logger.info("second %s: exiting now", name)
            self.leave()

    def idle(self) -> None:
        """Call when the last in-flight work ended: a shutting-down connector leaves."""
        if self.exits_when_idle and self._inflight() == 0:
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

    def _start_draining(self, by: str) -> None:
        if self.draining:
            return
        self.draining = True
        logger.info(
            "draining (asked by %s): %d %s(s) in flight",
            by or "unknown",
            self._inflight(),
            self._unit,
        )
        self._changed()

    def _leave_when_idle(self) -> None:
        if self.timeout == 0 or self._inflight() == 0:
            self.leave()
            return
        if self.timeout > 0 and self._timer is None:
            self._timer = asyncio.create_task(self._deadline(self.timeout), name="drain-deadline")

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
