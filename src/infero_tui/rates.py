"""Rates from successive snapshots (requests/s, tokens/s) and short histories for sparklines."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from infero.protocol.state import StateSnapshot


@dataclass(frozen=True, slots=True)
class Rate:
    """Requests and output tokens per second over the last interval."""

    requests: float = 0.0
    tokens: float = 0.0


def _totals(snapshot: StateSnapshot) -> dict[str, tuple[int, int]]:
    return {m.name: (m.requests_total, m.tokens_out_total) for m in snapshot.models}


class RateTracker:
    """Fed every snapshot; keeps per-model and fleet rates plus `history` points for graphs."""

    def __init__(self, history: int = 60) -> None:
        self._previous: StateSnapshot | None = None
        self.per_model: dict[str, Rate] = {}
        self.fleet = Rate()
        self.requests_history: deque[float] = deque(maxlen=history)
        self.tokens_history: deque[float] = deque(maxlen=history)
        self.queue_history: deque[float] = deque(maxlen=history)

    def add(self, snapshot: StateSnapshot) -> None:
        """Account for one more snapshot (rates need two with distinct `server.now`)."""
        previous, self._previous = self._previous, snapshot
        self.queue_history.append(float(snapshot.server.scheduler_queue_len))
        if previous is None:
            return
        elapsed = (snapshot.server.now - previous.server.now).total_seconds()
        if elapsed <= 0:
            return
        before = _totals(previous)
        rates: dict[str, Rate] = {}
        for name, (requests, tokens) in _totals(snapshot).items():
            old_requests, old_tokens = before.get(name, (requests, tokens))
            rates[name] = Rate(
                max(requests - old_requests, 0) / elapsed, max(tokens - old_tokens, 0) / elapsed
            )
        self.per_model = rates
        self.fleet = Rate(
            sum(r.requests for r in rates.values()), sum(r.tokens for r in rates.values())
        )
        self.requests_history.append(self.fleet.requests)
        self.tokens_history.append(self.fleet.tokens)
