"""Parse durations the way the seed documents them: `90s`, `1m30s`, `-1`, `0`, `2.5`."""

from __future__ import annotations

import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str | float | int) -> float:
    """Seconds from a number (seconds) or a Go-style duration string; raise ValueError."""
    if isinstance(text, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1.5")
    if isinstance(text, int | float):
        return float(text)
    raw = text.strip()
    if not raw:
        raise ValueError("empty duration")
    try:
        return float(raw)
    except ValueError:
        pass
    sign = -1.0 if raw.startswith("-") else 1.0
    body = raw.lstrip("+-")
    total = 0.0
    pos = 0
    for match in _PART.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(body) or pos == 0:
        raise ValueError(f"{text!r} is not a duration (examples: 30s, 5m, 1h30m, 2.5, -1)")
    return sign * total


def format_duration(seconds: float) -> str:
    """Short human form used in help texts and printed settings: `90s`, `5m`, `-1`."""
    if seconds < 0:
        return "-1"
    if seconds and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds}s"
