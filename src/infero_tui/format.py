"""Small text formatting helpers shared by the console and `infero ctl` (no Textual)."""

from __future__ import annotations

from datetime import datetime


def age(now: datetime, then: datetime | None) -> str:
    """`now - then` as a short age: `4s`, `3m`, `2h`, `5d`; `-` when unknown."""
    if then is None:
        return "-"
    seconds = max(int((now - then).total_seconds()), 0)
    return duration(seconds)


def duration(seconds: int) -> str:
    """Seconds as the largest whole unit: `59s`, `12m`, `3h`, `2d`."""
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def millis(value: float) -> str:
    """Milliseconds, `-` for zero (not measured yet)."""
    if value <= 0:
        return "-"
    return f"{value / 1000:.1f}s" if value >= 10_000 else f"{value:.0f}ms"


def rate(value: float) -> str:
    """A per-second rate with one decimal."""
    return f"{value:.1f}"
