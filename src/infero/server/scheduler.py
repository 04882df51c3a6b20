"""Pick a connector for each request: least busy, atomic capacity, per-model FIFO queue.

`try_acquire` checks and increments a worker's in-flight count with no await in between,
so concurrent requests never exceed `max_concurrency`. See docs/routing.md.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from infero.server.registry import Fleet, Worker
from infero.server.shared import QueueFull


class Queued(Protocol):
    """Anything waiting in a queue, as the state shows it."""

    @property
    def enqueued_at(self) -> float:
        """When it joined (the scheduler's monotonic clock)."""
        ...

    @property
    def instance(self) -> str:
        """The instance its client called ('' for this one)."""
        ...


class QueueView(Protocol):
    """The queues `/api/state` shows: this scheduler's, or a fleet's (see fleetqueue.py)."""

    @property
    def queues(self) -> Mapping[str, Sequence[Queued]]:
        """The waiters per model, oldest first."""
        ...

    def queue_len(self, model: str) -> int: ...

    def oldest_wait_s(self, model: str) -> float: ...


class Waiter:
    """A request waiting in a model's queue; resolved with a worker already acquired."""

    __slots__ = ("enqueued_at", "exclude", "future", "model", "moved", "target")

    def __init__(self, model: str, exclude: frozenset[str], target: str | None, now: float) -> None:
        self.model = model
        self.exclude = exclude
        self.target = target
        self.enqueued_at = now
        self.future: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
        self.moved = asyncio.Event()
        """Set when the queue ahead of this waiter shrank (its position changed)."""

    @property
    def instance(self) -> str:
        """This instance's own queue: ''."""
        return ""


class Scheduler:
    """Routing on top of the `Fleet`, with one FIFO queue per requested model."""

    def __init__(
        self, fleet: Fleet, *, queue_max: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.fleet = fleet
        self.queue_max = queue_max
        self.clock = clock
        self.queues: dict[str, deque[Waiter]] = {}
        self.after_dispatch: Callable[[], None] | None = None
        """Called after each dispatch (capacity may have appeared): a fleet-wide queue's hook."""

    def known(self, model: str, target: str | None = None) -> bool:
        """Whether any live connector advertises `model` (exactly or by alias)."""
        return self.fleet.candidates(model, target).known

    def try_acquire(
        self, model: str, exclude: frozenset[str] = frozenset(), target: str | None = None
    ) -> Worker | None:
        """The least busy serving candidate with spare capacity, its in-flight count taken."""
        best: Worker | None = None
        best_load = 2.0
        for worker in self.fleet.candidates(model, target).serving:
            if worker.inflight >= worker.capacity or worker.id in exclude:
                continue
            load = worker.inflight / worker.capacity
            if load < best_load:
                best, best_load = worker, load
        if best is not None:
            best.inflight += 1
            if best.inflight >= best.capacity:
                best.full_at = self.clock()
            self.fleet.changes.bump()
        return best

    def acquire_now(
        self, model: str, exclude: frozenset[str] = frozenset(), target: str | None = None
    ) -> Worker | None:
        """Like `try_acquire`, but never jumps ahead of requests already queued for `model`."""
        if self.queues.get(model):
            return None
        return self.try_acquire(model, exclude, target)

    def release(self, worker: Worker) -> None:
        """A request on `worker` ended: free its slot and serve the queues."""
        if worker.inflight >= worker.capacity:
            worker.full_at = self.clock()
        worker.inflight -= 1
        self.fleet.changes.bump()
        self.dispatch()

    def opened(self, worker: Worker) -> None:
        """`worker` linked or changed its status: serve the queues. Its room may be new to
        instances that saw it full or not serving (`full_at`)."""
        worker.full_at = self.clock()
        self.dispatch()

    def enqueue(
        self,
        model: str,
        exclude: frozenset[str] = frozenset(),
        target: str | None = None,
        *,
        first: bool = False,
    ) -> Waiter:
        """Join `model`'s queue (raise `QueueFull`); the caller must `leave` it in the end.

        `first`: at the head, even beyond `queue_max` (a request dispatched from the head and
        refused `busy` by its connector takes its place back)."""
        queue = self.queues.setdefault(model, deque())
        if len(queue) >= self.queue_max and not first:
            if not queue:
                del self.queues[model]
            raise QueueFull(model)
        waiter = Waiter(model, exclude, target, self.clock())
        if first:
            queue.appendleft(waiter)
            for behind in queue:
                behind.moved.set()
        else:
            queue.append(waiter)
        self.fleet.changes.bump()
        self.dispatch()
        return waiter

    def position(self, waiter: Waiter) -> int:
        """1-based place in its queue (0 once dispatched)."""
        queue = self.queues.get(waiter.model)
        if not queue or waiter.future.done():
            return 0
        try:
            return queue.index(waiter) + 1
        except ValueError:
            return 0

    def leave(self, waiter: Waiter) -> None:
        """Give up waiting (timeout, client gone); a worker handed over meanwhile is released."""
        if waiter.future.done():
            if not waiter.future.cancelled():
                self.release(waiter.future.result())
            return
        waiter.future.cancel()
        queue = self.queues.get(waiter.model)
        if queue is not None and waiter in queue:
            self._remove(queue, waiter)
            if not queue:
                del self.queues[waiter.model]
            self.fleet.changes.bump()

    def dispatch(self) -> None:
        """Hand free capacity to the heads of the queues, in FIFO order per model."""
        for model in list(self.queues):
            queue = self.queues[model]
            while queue:
                head = queue[0]
                worker = self.try_acquire(head.model, head.exclude, head.target)
                if worker is None:
                    break
                self._remove(queue, head)
                head.future.set_result(worker)
                head.moved.set()
            if not queue:
                del self.queues[model]
        hook = self.after_dispatch
        if hook is not None:
            hook()

    def _remove(self, queue: deque[Waiter], waiter: Waiter) -> None:
        index = queue.index(waiter)
        del queue[index]
        for behind in list(queue)[index:]:
            behind.moved.set()

    def queue_len(self, model: str) -> int:
        """Requests waiting for `model`."""
        queue = self.queues.get(model)
        return len(queue) if queue else 0

    def oldest_wait_s(self, model: str) -> float:
        """How long the head of `model`'s queue has waited."""
        queue = self.queues.get(model)
        return self.clock() - queue[0].enqueued_at if queue else 0.0
