"""Summaries of timing samples (pure functions, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict


class Summary(TypedDict):
    """Percentiles of a sample, in the sample's unit (milliseconds in this package)."""

    n: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile `q` (0..1) of an already sorted, non-empty sequence."""
    if not ordered:
        raise ValueError("percentile of an empty sample")
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summarize(values: Sequence[float]) -> Summary | None:
    """n, mean, p50, p90, p99 and max of `values`; `None` for an empty sample."""
    if not values:
        return None
    ordered = sorted(values)
    return Summary(
        n=len(ordered),
        mean=sum(ordered) / len(ordered),
        p50=percentile(ordered, 0.50),
        p90=percentile(ordered, 0.90),
        p99=percentile(ordered, 0.99),
        max=ordered[-1],
    )
