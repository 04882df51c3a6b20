"""Text formatting shared by the console and `infero ctl` (no Textual): human units, ellipsis."""

from __future__ import annotations

from datetime import datetime

from rich.cells import cell_len


def age(now: datetime, then: datetime | None, *, compact: bool = False) -> str:
    """`now - then` in human units (`4 s`, `3 min`, `2 h 5 min`); `-` when unknown."""
    if then is None:
        return "-"
    return duration(max(int((now - then).total_seconds()), 0), compact=compact)


def age_seconds(now: datetime, then: datetime | None) -> float | None:
    """`now - then` in seconds (never negative), None when unknown."""
    if then is None:
        return None
    return max((now - then).total_seconds(), 0.0)


def duration(seconds: int, *, compact: bool = False) -> str:
    """Whole seconds in the two largest units: `59 s`, `12 min`, `3 h 5 min`, `2 d 3 h`.

    `compact` drops the spaces (`3h5min`), for `infero ctl` tables that scripts split."""
    if compact:
        return duration(seconds).replace(" ", "")
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        hours, minutes = divmod(seconds // 60, 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(seconds // 3600, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def millis(value: float, *, compact: bool = False) -> str:
    """A duration given in milliseconds: `310 ms`, `8.9 s`, `2 min`; `-` for zero (unmeasured)."""
    if compact:
        return millis(value).replace(" ", "")
    if value <= 0:
        return "-"
    if value < 1000:
        return f"{value:.0f} ms"
    if value < 60_000:
        return f"{value / 1000:.1f} s"
    return duration(int(value / 1000))


def rate(value: float) -> str:
    """A per-second rate with one decimal (`-` when nothing happened)."""
    return f"{value:.1f}" if value > 0 else "-"


def count(value: int) -> str:
    """A count, shortened above ten thousand: `9999`, `12.3k`, `4.1M`."""
    if value < 10_000:
        return str(value)
    if value < 1_000_000:
        return f"{value / 1000:.1f}k"
    return f"{value / 1_000_000:.1f}M"


_CONTROL = dict.fromkeys((*range(32), *range(127, 160)), "�")


def printable(text: str) -> str:
    """`text` with control characters (escape sequences, newlines) replaced by `\ufffd`:
    names come from connectors and must not steer the terminal."""
    return text.translate(_CONTROL)


def ellipsis(text: str, width: int) -> str:
    """`text` cut to `width` terminal cells, ending in `…` when it was longer."""
    if cell_len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    out = ""
    for char in text:
        if cell_len(out + char) > width - 1:
            break
        out += char
    return out + "…"


def middle_ellipsis(text: str, width: int) -> str:
    """`text` cut to `width` cells keeping both ends (`w-fr…ra-2`): ids differ at either end."""
    if cell_len(text) <= width or width < 3:
        return ellipsis(text, width)
    head = (width - 1 + 1) // 2
    tail = width - 1 - head
    return text[:head] + "…" + (text[-tail:] if tail else "")
