"""The fleet of LLM connectors: who is connected, what they serve, how busy they are.

Routing rules (exact model, else alias) live here too; the queue is in scheduler.py.
See docs/routing.md.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from infero.protocol.link import Hello, Refused, Status, StatusUpdate
from infero.protocol.state import WorkerStatus
from infero.server.changes import ChangeFeed
from infero.server.events import Outcome
from infero.server.link import ConnectorLink, duplicate_refusal

_ALIAS = re.compile(r"^([^:]+):([^-\s]+)(-.+)?$")


def alias_key(model: str) -> str | None:
    """`name:tag-quant` -> `name:tag` (reference 2.9); `None` when the id has no such shape."""
    match = _ALIAS.match(model)
    return f"{match.group(1)}:{match.group(2)}" if match else None


@dataclass(slots=True)
class Counters:
    """Request counters for one model (on a worker or for the whole fleet)."""

    requests_total: int = 0
    success_total: int = 0
    error_total: int = 0
    cancelled_total: int = 0
    """Requests the client gave up on (disconnect, stall): neither success nor error."""
    tokens_in_total: int = 0
    tokens_out_total: int = 0
    ttft_s_total: float = 0.0
    ttft_count: int = 0
    duration_s_total: float = 0.0

    def record(
        self,
        *,
        outcome: Outcome,
        duration_s: float,
        ttft_s: float | None,
        tokens_in: int,
        tokens_out: int,
    ) -> None:
        """Count one finished request."""
        self.requests_total += 1
        if outcome == "success":
            self.success_total += 1
        elif outcome == "error":
            self.error_total += 1
        else:
            self.cancelled_total += 1
        self.tokens_in_total += tokens_in
        self.tokens_out_total += tokens_out
        self.duration_s_total += duration_s
        if ttft_s is not None:
            self.ttft_s_total += ttft_s
            self.ttft_count += 1


@dataclass(slots=True)
class WorkerStats:
    """Cumulative numbers of one connector id; they survive reconnects and replacements."""

    processed_total: int = 0
    failures_total: int = 0
    processing_s_total: float = 0.0
    last_error: str = ""
    total: Counters = field(default_factory=Counters)
    per_model: dict[str, Counters] = field(default_factory=dict)


class Worker:
    """One LLM connector as the scheduler sees it (one live link, or gone)."""

    __slots__ = (
        "alias_keys",
        "backend",
        "build_date",
        "build_sha",
        "capacity",
        "connected_at",
        "disconnected_at",
        "full_at",
        "id",
        "inflight",
        "link",
        "link_error",
        "link_status",
        "models",
        "name",
        "protocol",
        "stats",
        "version",
    )

    def __init__(self, hello: Hello, link: ConnectorLink | None, stats: WorkerStats) -> None:
        self.id = hello.id
        self.name = hello.name or hello.id
        self.version = hello.version
        self.build_sha = hello.build_sha
        self.build_date = hello.build_date
        self.protocol = hello.protocol
        self.backend = hello.backend
        self.link = link
        self.stats = stats
        self.inflight = 0
        self.full_at = -math.inf
        """When it last had no free slot, or may have gained room unseen elsewhere: linked or
        changed its status (the scheduler's clock)."""
        self.connected_at = time.time()
        self.disconnected_at: float | None = None
        self.models: frozenset[str] = frozenset()
        self.alias_keys: frozenset[str] = frozenset()
        self.capacity = 0
        self.link_status: Status = "ready"
        self.link_error = ""
        self.set_models(hello.models)
        self.capacity = hello.max_concurrency
        self.link_status = hello.status
        self.link_error = hello.last_error

    def set_models(self, models: Iterable[str]) -> None:
        """Replace the advertised models."""
        self.models = frozenset(models)
        self.alias_keys = frozenset(k for k in map(alias_key, self.models) if k)

    @property
    def live(self) -> bool:
        """Connected (not gone)."""
        return self.disconnected_at is None

    @property
    def serving(self) -> bool:
        """Live, backend up and not draining: may be given new work."""
        return self.disconnected_at is None and self.link_status == "ready" and self.capacity > 0

    @property
    def status(self) -> WorkerStatus:
        """The status shown in `/api/state`."""
        if self.disconnected_at is not None:
            return "gone"
        if self.link_status == "draining":
            return "draining"
        if self.link_status == "not_ready" or self.capacity == 0:
            return "not_ready"
        return "busy" if self.inflight else "idle"


@dataclass(slots=True)
class Pending:
    """A link whose WebSocket is open but whose hello is not accepted yet (`connecting`).

    Its id is a placeholder (`pending-<n>`): the connector has not said who it is.
    """

    id: str
    peer: str
    opened_at: float


@dataclass(slots=True)
class Candidates:
    """Workers that could serve a model: those serving now, and whether any exist at all."""

    serving: list[Worker]
    known: bool


class Fleet:
    """Every LLM connector by id (live and recently gone), plus per-model totals.

    It is the link handler of kind `llm`: a second live connector with the id of a live one is
    refused; the same connector instance reconnecting replaces its stale link.
    """

    def __init__(
        self,
        *,
        gone_retention: float,
        changes: ChangeFeed,
        on_capacity: Callable[[Worker], None] = lambda worker: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.workers: dict[str, Worker] = {}
        self.changes = changes
        self.model_first_seen: dict[str, int] = {}
        self.model_totals: dict[str, Counters] = {}
        self.gone_retention = gone_retention
        self.clock = clock
        self.by_model: dict[str, dict[str, Worker]] = {}
        """Live workers by advertised model id (then by worker id)."""
        self.by_alias: dict[str, dict[str, Worker]] = {}
        """Live workers by alias key of their models."""
        self.on_capacity = on_capacity
        """Called when capacity may have appeared (the scheduler dispatches its queues)."""
        self._stats: dict[str, WorkerStats] = {}
        self._gone: dict[str, float] = {}
        """When each gone worker left, in the order they left: pruning looks only at the
        front, so a connect costs the same at 10 or 10,000 connectors."""
        self.pending: dict[str, Pending] = {}
        """Links in their handshake, oldest first."""
        self._pending_seq = 0

    # ---- link handler (kind llm) -------------------------------------------------------

    @contextmanager
    def connecting(self, peer: str) -> Iterator[None]:
        """A link from `peer` is in its handshake: listed as `connecting` until it ends."""
        self._pending_seq += 1
        pending = Pending(f"pending-{self._pending_seq}", peer, self.clock())
        self.pending[pending.id] = pending
        self.changes.bump()
        try:
            yield
        finally:
            del self.pending[pending.id]
            self.changes.bump()

    def admit(self, hello: Hello) -> Refused | str:
        """Accept a hello with an id no other live connector holds; the id is the connector's."""
        if not hello.id:
            return Refused(reason="invalid", message="an llm connector needs an id")
        holder = self.workers.get(hello.id)
        if holder is not None and holder.link is not None and not holder.link.replaceable_by(hello):
            return duplicate_refusal(hello.id)
        return hello.id

    def attached(self, hello: Hello, link: ConnectorLink) -> ConnectorLink | None:
        """Register the link; return a link it replaces (the caller closes it)."""
        worker = Worker(hello, link, self._stats.setdefault(hello.id, WorkerStats()))
        old = self.register(worker)
        return old.link if old is not None and old.live else None

    def register(self, worker: Worker) -> Worker | None:
        """Make `worker` the live holder of its id; return the previous holder."""
        self.prune_gone()
        old = self.workers.get(worker.id)
        if old is not None:
            self._unindex(old)
        self._gone.pop(worker.id, None)
        self.workers[worker.id] = worker
        self._index(worker)
        self._see_models(worker.models)
        self.changes.bump()
        self.on_capacity(worker)
        return old

    def _holder(self, link: ConnectorLink) -> Worker | None:
        """The worker whose live link is `link` (looked up by the link's id)."""
        worker = self.workers.get(link.id)
        return worker if worker is not None and worker.link is link else None

    def status(self, link: ConnectorLink, update: StatusUpdate) -> None:
        """Apply a connector's status update at once."""
        worker = self._holder(link)
        if worker is None:
            return
        if update.models is not None:
            self._unindex(worker)
            worker.set_models(update.models)
            self._index(worker)
            self._see_models(worker.models)
        worker.capacity = update.max_concurrency
        worker.link_status = update.status
        worker.link_error = update.last_error
        if update.last_error:
            worker.stats.last_error = update.last_error
        self.changes.bump()
        self.on_capacity(worker)

    def detached(self, link: ConnectorLink) -> None:
        """The link closed: its worker becomes `gone` (unless a newer link replaced it)."""
        worker = self._holder(link)
        if worker is None:
            return
        worker.disconnected_at = self.clock()
        worker.link = None
        self._unindex(worker)
        self._gone.pop(worker.id, None)
        self._gone[worker.id] = worker.disconnected_at
        self.changes.bump()

    # ---- routing ---------------------------------------------------------------------------

    def candidates(self, model: str, target: str | None = None) -> Candidates:
        """Exact-model workers serving now, else alias ones; `known` if anyone advertises it."""
        exact = self._matching(self.by_model, model, target)
        serving = [w for w in exact if w.serving]
        if serving:
            return Candidates(serving, True)
        key = alias_key(model)
        alias = self._matching(self.by_alias, key, target) if key else []
        return Candidates([w for w in alias if w.serving], bool(exact or alias))

    @staticmethod
    def _matching(
        index: dict[str, dict[str, Worker]], key: str, target: str | None
    ) -> list[Worker]:
        found = index.get(key)
        if not found:
            return []
        if target is None:
            return list(found.values())
        worker = found.get(target)
        return [worker] if worker is not None else []

    def _index(self, worker: Worker) -> None:
        for model in worker.models:
            self.by_model.setdefault(model, {})[worker.id] = worker
        for key in worker.alias_keys:
            self.by_alias.setdefault(key, {})[worker.id] = worker

    def _unindex(self, worker: Worker) -> None:
        for index, keys in ((self.by_model, worker.models), (self.by_alias, worker.alias_keys)):
            for key in keys:
                holders = index.get(key)
                if holders is not None and holders.get(worker.id) is worker:
                    del holders[worker.id]
                    if not holders:
                        del index[key]

    def live_links(self) -> list[ConnectorLink]:
        """Links of every live worker."""
        return [w.link for w in self.workers.values() if w.link is not None]

    def get_live(self, worker_id: str) -> Worker | None:
        """A connected worker by id."""
        worker = self.workers.get(worker_id)
        return worker if worker is not None and worker.live else None

    # ---- accounting ------------------------------------------------------------------------

    def record(
        self,
        worker: Worker,
        model: str,
        *,
        outcome: Outcome,
        error: str,
        duration_s: float,
        ttft_s: float | None,
        tokens_in: int,
        tokens_out: int,
    ) -> None:
        """Count one finished request on the worker and on the model.

        Only an `error` is the connector's failure (`failures_total`, `last_error`); a client
        that gave up (`cancelled`) is counted apart.
        """
        stats = worker.stats
        stats.processed_total += 1
        stats.processing_s_total += duration_s
        if outcome == "error":
            stats.failures_total += 1
            stats.last_error = error
        per_model = stats.per_model.get(model)
        if per_model is None:
            per_model = stats.per_model[model] = Counters()
        totals = self.model_totals.get(model)
        if totals is None:
            totals = self.model_totals[model] = Counters()
        for counters in (stats.total, per_model, totals):
            counters.record(
                outcome=outcome,
                duration_s=duration_s,
                ttft_s=ttft_s,
                tokens_in=tokens_in,
                tokens_out=tokens_out,
            )

    def prune_gone(self) -> None:
        """Forget workers gone for longer than GONE_RETENTION (only those are looked at)."""
        cutoff = self.clock() - self.gone_retention
        stale: list[str] = []
        for wid, left in self._gone.items():
            if left > cutoff:
                break
            stale.append(wid)
        for wid in stale:
            del self._gone[wid]
            worker = self.workers.get(wid)
            if worker is not None and worker.disconnected_at is not None:
                del self.workers[wid]
        if stale:
            self.changes.bump()

    def _see_models(self, models: Iterable[str]) -> None:
        now = int(self.clock())
        for model in models:
            self.model_first_seen.setdefault(model, now)
