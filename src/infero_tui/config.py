"""Console options that are not network endpoints (tests set them for determinism)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from infero.common.backoff import CEILING, SCHEDULE

Clock = Callable[[], datetime]
"""Where the console reads the time (tests pass a fixed one)."""


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    """How the console behaves; defaults suit operators, tests pass `ConsoleConfig.frozen()`."""

    read_only: bool = False
    refresh_interval: float | None = 1.0
    """Seconds between local status polls, log polls and header redraws; None = never."""
    reconnect_schedule: tuple[float, ...] = SCHEDULE
    reconnect_ceiling: float = CEILING
    animation_level: Literal["none", "basic", "full"] = "basic"
    theme: str = "textual-dark"
    cursor_blink: bool = True
    filter_debounce: float = 0.15
    """Seconds of typing pause before the `/` filter is applied to the tables."""
    min_redraw_interval: float = 0.25
    """Snapshots are drawn at most this often (the newest one; older ones are skipped)."""
    settle_heap: bool = False
    """Once the first state is drawn, move every object alive then out of the cyclic GC's way
    (`gc.freeze()`): a full collection then scans the fleet's rows, not all of Textual, 3 ms
    instead of about 55 ms at 1,000 rows. `infero tui` sets it; tests leave it off (frozen
    objects are never collected, and a test process builds many consoles)."""

    @classmethod
    def frozen(cls, *, read_only: bool = False) -> ConsoleConfig:
        """No timers, no animation, instant reconnects: for snapshot and pilot tests."""
        return cls(
            read_only=read_only,
            refresh_interval=None,
            reconnect_schedule=(0.0,),
            reconnect_ceiling=0.0,
            animation_level="none",
            cursor_blink=False,
            filter_debounce=0.0,
            min_redraw_interval=0.0,
        )
