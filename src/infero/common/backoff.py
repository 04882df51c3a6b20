"""The reconnect schedule shared by every connector: 1 s x3, 5 s x3, 15 s x3, then 30 s."""

from __future__ import annotations

SCHEDULE: tuple[float, ...] = (1, 1, 1, 5, 5, 5, 15, 15, 15)
CEILING = 30.0


class Backoff:
    """Delays for successive failed attempts; `reset()` after any success."""

    def __init__(self, schedule: tuple[float, ...] = SCHEDULE, ceiling: float = CEILING) -> None:
        self._schedule = schedule
        self._ceiling = ceiling
        self.attempt = 0

    def next_delay(self) -> float:
        """Delay before the next attempt; advances the attempt counter."""
        delay = (
            self._schedule[self.attempt] if self.attempt < len(self._schedule) else self._ceiling
        )
        self.attempt += 1
        return float(delay)

    def reset(self) -> None:
        """Start the schedule over (called after a successful connection or probe)."""
        self.attempt = 0
