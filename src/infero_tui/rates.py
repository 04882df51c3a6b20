"""Rates over a fixed window and per-second histories, from cumulative counters (no Textual).

Snapshots arrive at irregular times (on change, and every few seconds when idle). A counter's
increase between two snapshots is spread evenly over the seconds it covers, into per-second
buckets; a rate is the sum of the last `WINDOW_S` whole seconds divided by that window, so a
steady 4 req/s reads 4.0 whatever the snapshot rhythm. Sparklines draw the buckets of the last
`SPAN_S` seconds. Times are the server's clock (`server.now`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from infero.protocol.state import McpClientInfo, StateSnapshot, WorkerInfo

WINDOW_S = 10
"""Rates are averages over this many seconds."""
SPAN_S = 60
"""Sparklines show this many one-second buckets."""


class Clock:
    """The time of the latest snapshot, shared by the counters of one tracker."""

    __slots__ = ("t",)

    def __init__(self) -> None:
        self.t: float | None = None


class Counter:
    """One cumulative counter turned into per-second buckets.

    With a `clock`, the counter is fed only when its value changes: a value that did not
    change until the clock's time is accounted for when it is read or next changes (the same
    buckets as feeding it every snapshot, without touching every row of every snapshot).
    """

    __slots__ = ("_buckets", "_clock", "_last_t", "_last_total", "_span")

    def __init__(self, span: int = SPAN_S, clock: Clock | None = None) -> None:
        self._span = span
        self._clock = clock
        self._buckets: deque[float] = deque(maxlen=span)
        self._last_t: float | None = None
        self._last_total = 0

    def _catch_up(self) -> None:
        """Account for the unchanged value until the clock's time."""
        clock, last_t = self._clock, self._last_t
        if clock is not None and clock.t is not None and last_t is not None and clock.t > last_t:
            self._add(clock.t, self._last_total)

    def add(self, t: float, total: int) -> None:
        """Account for the counter's value `total` at time `t` (seconds); with a clock, the
        value it had until the clock's time (the previous snapshot's) first."""
        self._catch_up()
        self._add(t, total)

    def _add(self, t: float, total: int) -> None:
        last_t = self._last_t
        if last_t is None:
            self._last_t, self._last_total = t, total
            self._buckets.append(0.0)
            return
        if t <= last_t:
            self._last_total = max(self._last_total, total)
            return
        increase = max(total - self._last_total, 0)
        self._last_t, self._last_total = t, total
        first, last = math.floor(last_t), math.floor(t)
        seconds = min(last - first, self._span)
        per_second = increase / (t - last_t)
        if seconds == 0:
            self._buckets[-1] += increase
            return
        # the rest of the second that was open, whole seconds in between, the new one begun
        self._buckets[-1] += per_second * (first + 1 - last_t)
        for _ in range(seconds - 1):
            self._buckets.append(per_second)
        self._buckets.append(per_second * (t - last))

    def rate(self, window: int = WINDOW_S) -> float:
        """Average per second over the last `window` whole seconds (fewer when just started)."""
        self._catch_up()
        done = list(self._buckets)[:-1][-window:]
        return sum(done) / len(done) if done else 0.0

    def series(self) -> list[float]:
        """Per-second amounts of the last `span` seconds, oldest first (the open one last)."""
        self._catch_up()
        return list(self._buckets)


class Gauge:
    """A level sampled once per second (the latest value in each second wins)."""

    __slots__ = ("_buckets", "_last_second")

    def __init__(self, span: int = SPAN_S) -> None:
        self._buckets: deque[float] = deque(maxlen=span)
        self._last_second: int | None = None

    def add(self, t: float, value: float) -> None:
        second = math.floor(t)
        if self._last_second is None or second > self._last_second:
            gap = 0 if self._last_second is None else second - self._last_second - 1
            previous = self._buckets[-1] if self._buckets else value
            for _ in range(min(gap, self._buckets.maxlen or 0)):
                self._buckets.append(previous)
            self._buckets.append(value)
            self._last_second = second
        elif second == self._last_second:
            self._buckets[-1] = value

    def series(self) -> list[float]:
        return list(self._buckets)


@dataclass(slots=True)
class Activity:
    """Requests and output tokens of one thing (the fleet, a model, a connector, a relay)."""

    requests: Counter
    tokens: Counter

    @classmethod
    def new(cls, clock: Clock | None = None) -> Activity:
        return cls(Counter(clock=clock), Counter(clock=clock))

    def add(self, t: float, requests: int, tokens: int) -> None:
        self.requests.add(t, requests)
        self.tokens.add(t, tokens)


def _seconds(now: datetime) -> float:
    return now.timestamp()


class RateTracker:
    """Fed every snapshot the console receives; windowed rates and histories for everything.

    A connector's or relay's counters are fed only when its row is a new object: a state
    stream's unchanged rows are the same objects from one snapshot to the next, so a snapshot
    costs a dictionary lookup per unchanged row (the counters catch up when read)."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.fleet = Activity.new()
        self.queue = Gauge()
        self.models: dict[str, Activity] = {}
        self.workers: dict[str, Activity] = {}
        self.relays: dict[str, Counter] = {}
        self._worker_rows: dict[str, WorkerInfo] = {}
        self._relay_rows: dict[str, McpClientInfo] = {}

    def add(self, snapshot: StateSnapshot) -> None:
        """Account for one snapshot (counters are cumulative, so skipped ones lose nothing)."""
        t = _seconds(snapshot.server.now)
        self.queue.add(t, float(snapshot.server.scheduler_queue_len))
        requests = tokens = 0
        # get-then-create, not setdefault: a new Activity per row per snapshot costs milliseconds
        # at 1,000 connectors under churn
        models, workers, relays, clock = self.models, self.workers, self.relays, self.clock
        for model in snapshot.models:
            requests += model.requests_total
            tokens += model.tokens_out_total
            activity = models.get(model.name)
            if activity is None:
                activity = models[model.name] = Activity.new()
            activity.add(t, model.requests_total, model.tokens_out_total)
        self.fleet.add(t, requests, tokens)
        seen_workers, worker_rows = self._worker_rows, {}
        for worker in snapshot.workers:
            worker_rows[worker.id] = worker
            if seen_workers.get(worker.id) is worker:
                continue  # the same row: its counters did not move
            activity = workers.get(worker.id)
            if activity is None:
                activity = workers[worker.id] = Activity.new(clock)
            activity.add(t, worker.processed_total, worker.tokens_out_total)
        seen_relays, relay_rows = self._relay_rows, {}
        for relay in snapshot.mcp.clients:
            relay_rows[relay.id] = relay
            if seen_relays.get(relay.id) is relay:
                continue
            counter = relays.get(relay.id)
            if counter is None:
                counter = relays[relay.id] = Counter(clock=clock)
            counter.add(t, relay.calls_total)
        self._worker_rows, self._relay_rows = worker_rows, relay_rows
        clock.t = max(t, clock.t) if clock.t is not None else t
        _forget(self.models, (m.name for m in snapshot.models))
        _forget(self.workers, worker_rows)
        _forget(self.relays, relay_rows)

    def model(self, name: str) -> Activity:
        return self.models.get(name) or Activity.new()

    def worker(self, worker_id: str) -> Activity:
        return self.workers.get(worker_id) or Activity.new()


def _forget(
    table: dict[str, Activity] | dict[str, Counter], live: Iterable[str] | dict[str, Any]
) -> None:
    keep = live if isinstance(live, dict) else set(live)
    if len(keep) != len(table):
        for key in [k for k in table if k not in keep]:
            del table[key]
