"""One publisher of state changes for every `/api/state/stream` viewer. See docs/state.md.

`StatePublisher` keeps the current rows of the state document (each serialised once, when it
changes), collects changes from a `RowSource` by comparing cheap fingerprints, and publishes
them as numbered `Batch`es. A batch is rendered once per distinct `Scope` and mode, and the
same bytes go to every viewer with that scope. Viewers have bounded buffers: one that falls
behind is marked for a resync (a fresh full document) and never holds the others up. A ring
of recent batches lets a reconnecting viewer resume from its `Last-Event-ID`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, Protocol

from pydantic import BaseModel

from infero.protocol.delta import EVENT_DELTA, EVENT_SNAPSHOT, Part, StreamMode
from infero.protocol.state import ServerInfo, WorkersSummary
from infero.server.changes import ChangeFeed

Kind = Literal["workers", "models", "mcp_clients", "mcp_sessions"]
KINDS: tuple[Kind, ...] = ("workers", "models", "mcp_clients", "mcp_sessions")
_PART_OF: dict[Kind, Part] = {
    "workers": "workers",
    "models": "models",
    "mcp_clients": "mcp",
    "mcp_sessions": "mcp",
}

RING = 512
"""Recent batches kept for viewers resuming with `Last-Event-ID`."""
RING_BYTES = 8 * 1024 * 1024
"""Serialised rows the ring may hold; older batches are dropped beyond it (busy fleets)."""
VIEWER_BUFFER_BYTES = 2 * 1024 * 1024
"""Bytes a viewer may have waiting; beyond them it is resynced with a full document."""


Offer = tuple[str, Hashable, Any]
"""One row as a source offers it: key, fingerprint (equal fingerprints mean an equal row, the
clock's fields aside), and what the source builds the row from when the fingerprint changed."""


class Built(NamedTuple):
    """A row built by the source, with where it goes in full documents."""

    model: BaseModel
    order: tuple[int, float] = (0, 0.0)
    """Position in full documents, then the key (workers: accepted ones by `connected_at`,
    then handshakes; models: by name)."""
    gone: bool = False
    """A departed connector (listed only with `gone=list`)."""


@dataclass(slots=True)
class Scan:
    """Everything a source offers at one moment."""

    offers: dict[Kind, list[Offer]]
    server_mark: Hashable
    """Fingerprint of `server` without its clock fields."""
    summary: WorkersSummary


class RowSource(Protocol):
    """Where rows come from: this instance's registries today, the shared state tomorrow."""

    def scan(self) -> Scan:
        """Fingerprints of every row (cheap: nothing is built here)."""
        ...

    def row(self, kind: Kind, what: Any) -> Built:
        """Build the row of `kind` from what `scan` offered with it."""
        ...

    def server(self, now: datetime) -> ServerInfo:
        """The `server` object at `now`, with the figures of the last scan."""
        ...


@dataclass(slots=True)
class Row:
    """A row as last published, serialised once."""

    key: str
    mark: Hashable
    json: str
    order: tuple[int, float]
    gone: bool


@dataclass(frozen=True, slots=True)
class Scope:
    """What a viewer reads: the parts, one connector, and whether `gone` rows are listed."""

    parts: frozenset[Part] = frozenset(("summary", "workers", "models", "mcp"))
    connector: str | None = None
    gone: bool = False

    def wants(self, kind: Kind, row: Row) -> bool:
        """Whether `row` of `kind` belongs to this scope."""
        if _PART_OF[kind] not in self.parts:
            return False
        if kind != "workers":
            return True
        if self.connector is not None and row.key != self.connector:
            return False
        return self.gone or not row.gone


@dataclass(slots=True)
class Batch:
    """Changes published together, under one event id."""

    id: int
    now: datetime
    server: str | None
    summary: str | None
    upsert: dict[Kind, list[Row]]
    remove: dict[Kind, list[str]]
    rendered: dict[Scope, bytes] = field(default_factory=dict)
    size: int = 0
    """Bytes of the serialised rows it carries."""


@dataclass(slots=True)
class _Pending:
    server: bool = False
    summary: bool = False
    upsert: dict[Kind, dict[str, Row]] = field(default_factory=lambda: {k: {} for k in KINDS})
    remove: dict[Kind, set[str]] = field(default_factory=lambda: {k: set() for k in KINDS})

    def __bool__(self) -> bool:
        return self.server or self.summary or any(self.upsert.values()) or any(self.remove.values())


class Viewer:
    """One stream client: its scope, mode and a bounded buffer of event bytes."""

    def __init__(self, scope: Scope, mode: StreamMode, *, limit: int) -> None:
        self.scope = scope
        self.mode = mode
        self.limit = limit
        self.buffer: list[bytes] = []
        self.size = 0
        self.resync = False
        self.stale = False
        """Full mode: a newer document exists than the one sent last."""
        self.ended = False
        """The server ends this stream (the viewer reconnects and resumes)."""
        self.wake = asyncio.Event()

    def push(self, data: bytes) -> None:
        """Queue an event; past the limit, drop the queue and ask for a resync."""
        if self.resync:
            return
        if self.size + len(data) > self.limit:
            self.buffer.clear()
            self.size = 0
            self.resync = True
        else:
            self.buffer.append(data)
            self.size += len(data)
        self.wake.set()

    def take(self) -> bytes:
        """Everything queued, as one write."""
        data = b"".join(self.buffer)
        self.buffer.clear()
        self.size = 0
        self.wake.clear()
        return data


def _event(name: str | None, event_id: str, data: str) -> bytes:
    head = f"event: {name}\n" if name else ""
    return f"{head}id: {event_id}\ndata: {data}\n\n".encode()


class StatePublisher:
    """Owns the published rows, the ring of recent batches and the viewers."""

    def __init__(
        self,
        source: RowSource,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        ring: int = RING,
        ring_bytes: int = RING_BYTES,
        viewer_buffer: int = VIEWER_BUFFER_BYTES,
        changes: ChangeFeed | None = None,
    ) -> None:
        """With `changes` (the feed every change of the source bumps), `refresh` scans the
        source only when the feed moved since the last scan."""
        self.source = source
        self.clock = clock
        self._changes = changes
        self._collected = -1
        """Version of `changes` at the last `collect`."""
        self.epoch = secrets.token_hex(4)
        """Prefix of event ids: ids of another server process never resume here."""
        self.last_id = 0
        self.rows: dict[Kind, dict[str, Row]] = {k: {} for k in KINDS}
        self.viewers: set[Viewer] = set()
        self._ring: deque[Batch] = deque(maxlen=ring)
        self._ring_bytes = ring_bytes
        self._ring_size = 0
        self._viewer_buffer = viewer_buffer
        self._server_mark: Hashable = None
        self._server_json = ""
        self._summary = WorkersSummary()
        self._summary_json = self._summary.model_dump_json()
        self._pending = _Pending()
        self._full: dict[Scope, tuple[int, bytes]] = {}
        self._watched = asyncio.Event()
        """Set while at least one viewer is attached (nobody watching: nothing is collected)."""
        self.closed = False

    # ---- collecting and publishing ---------------------------------------------------------

    def collect(self) -> None:
        """Compare the source with the published rows; changed rows join the pending batch."""
        if self._changes is not None:
            self._collected = self._changes.version
        pending = self._pending
        scan = self.source.scan()
        source = self.source
        for kind, offers in scan.offers.items():
            rows = self.rows[kind]
            seen: set[str] = set()
            upsert, remove = pending.upsert[kind], pending.remove[kind]
            for key, mark, what in offers:
                seen.add(key)
                row = rows.get(key)
                if row is not None and row.mark == mark:
                    continue
                built = source.row(kind, what)
                row = Row(key, mark, built.model.model_dump_json(), built.order, built.gone)
                rows[key] = row
                upsert[key] = row
                remove.discard(key)
            if len(seen) != len(rows):
                for key in rows.keys() - seen:
                    del rows[key]
                    upsert.pop(key, None)
                    remove.add(key)
        if scan.server_mark != self._server_mark:
            self._server_mark = scan.server_mark
            pending.server = True
        if scan.summary != self._summary:
            self._summary = scan.summary
            self._summary_json = scan.summary.model_dump_json()
            pending.summary = True

    def publish(self) -> Batch | None:
        """Number the pending changes and hand them to every viewer (none: nothing to do)."""
        pending = self._pending
        if not pending:
            return None
        self._pending = _Pending()
        now = self.clock()
        self.last_id += 1
        server = self.source.server(now).model_dump_json() if pending.server else None
        if server is not None:
            self._server_json = server
        batch = Batch(
            id=self.last_id,
            now=now,
            server=server,
            summary=self._summary_json if pending.summary else None,
            upsert={k: list(v.values()) for k, v in pending.upsert.items() if v},
            remove={k: sorted(v) for k, v in pending.remove.items() if v},
        )
        batch.size = sum(len(r.json) for rows in batch.upsert.values() for r in rows)
        if self._ring:
            self._ring[-1].rendered.clear()  # only a resuming viewer renders it again
        self._remember(batch)
        for viewer in self.viewers:
            if viewer.mode == "full":
                viewer.stale = True
                viewer.wake.set()
            else:
                viewer.push(self.delta_event(batch, viewer.scope))
        return batch

    def _remember(self, batch: Batch) -> None:
        """Keep `batch` in the ring, within its count and its bytes."""
        ring = self._ring
        if len(ring) == ring.maxlen:
            self._ring_size -= ring[0].size
        ring.append(batch)
        self._ring_size += batch.size
        while len(ring) > 1 and self._ring_size > self._ring_bytes:
            self._ring_size -= ring.popleft().size

    def refresh(self) -> None:
        """Collect and publish now (a new viewer sees the present). Without a change since the
        last scan there is nothing to collect: viewers connecting together (a dashboard
        reloaded by many operators, consoles reconnecting after a restart) cost one scan of
        the fleet and one full document between them, not one each."""
        if self._changes is None or self._changes.version != self._collected:
            self.collect()
        self.publish()

    async def run(self, changes: ChangeFeed, *, settle: float, spacing: float) -> None:
        """Publish while anyone watches: `settle` s after a change, batches `spacing` s apart.

        Request traffic changes counters all the time; this bounds the events it causes to
        one batch per `spacing`, whatever the request rate. Runs until cancelled.
        """
        loop = asyncio.get_running_loop()
        last = -spacing
        seen = changes.version
        while True:
            await self._watched.wait()
            seen = await changes.wait(seen)
            delay = max(settle, last + spacing - loop.time())
            await asyncio.sleep(delay)  # the coalescing window: a rate, not a wait for a state
            seen = changes.version
            if self.viewers:
                self.refresh()
            last = loop.time()

    # ---- viewers -------------------------------------------------------------------------

    def event_id(self, n: int | None = None) -> str:
        """The SSE id of batch `n` (default: the latest)."""
        return f"{self.epoch}-{self.last_id if n is None else n}"

    def attach(self, scope: Scope, mode: StreamMode, last_event_id: str = "") -> Viewer:
        """A new viewer, with what it must be sent first already queued.

        It resumes after `last_event_id` when that batch is still in the ring (only the newer
        batches are queued), otherwise it starts with a full document.
        """
        self.refresh()
        viewer = Viewer(scope, mode, limit=self._viewer_buffer)
        resumed = mode == "delta" and self._resume(viewer, last_event_id)
        if not resumed:
            viewer.push(self.snapshot_event(scope, mode))
        self.viewers.add(viewer)
        self._watched.set()
        return viewer

    def detach(self, viewer: Viewer) -> None:
        """The viewer left."""
        self.viewers.discard(viewer)
        if not self.viewers:
            self._watched.clear()

    def _resume(self, viewer: Viewer, last_event_id: str) -> bool:
        epoch, _, number = last_event_id.partition("-")
        if epoch != self.epoch or not number.isdigit():
            return False
        seen = int(number)
        if seen == self.last_id:
            return True
        first = self._ring[0].id if self._ring else self.last_id + 1
        if not first - 1 <= seen < self.last_id:
            return False
        for batch in self._ring:
            if batch.id > seen:
                viewer.push(self.delta_event(batch, viewer.scope))
        return True

    def next_event(self, viewer: Viewer) -> bytes:
        """What to write to `viewer` now (after its `wake`): queued deltas or a full document."""
        if viewer.resync:
            self.refresh()
            viewer.resync = False
            viewer.take()
            return self.snapshot_event(viewer.scope, viewer.mode)
        if viewer.stale:
            viewer.stale = False
            viewer.take()
            return self.snapshot_event(viewer.scope, viewer.mode)
        return viewer.take()

    def end_streams(self) -> None:
        """End every open stream now; the viewers reconnect and resume from their last id."""
        for viewer in self.viewers:
            viewer.ended = True
            viewer.wake.set()

    def close(self) -> None:
        """The server stops: end every stream, and new ones at once."""
        self.closed = True
        self.end_streams()

    # ---- rendering -----------------------------------------------------------------------

    def delta_event(self, batch: Batch, scope: Scope) -> bytes:
        """`event: delta` of `batch` for `scope` (rendered once per scope)."""
        data = batch.rendered.get(scope)
        if data is None:
            data = _event(EVENT_DELTA, self.event_id(batch.id), self._delta_json(batch, scope))
            batch.rendered[scope] = data
        return data

    def _delta_json(self, batch: Batch, scope: Scope) -> str:
        parts = [f'"now":{json.dumps(batch.now.isoformat().replace("+00:00", "Z"))}']
        if batch.server is not None:
            parts.append(f'"server":{batch.server}')
        if batch.summary is not None:
            parts.append(f'"workers_summary":{batch.summary}')
        for kind in KINDS:
            upserts = batch.upsert.get(kind, ())
            removes = list(batch.remove.get(kind, ()))
            if _PART_OF[kind] not in scope.parts or not (upserts or removes):
                continue
            kept = []
            for row in upserts:
                if scope.wants(kind, row):
                    kept.append(row.json)
                elif kind == "workers" and (scope.connector in (None, row.key)):
                    removes.append(row.key)
            if kind == "workers" and scope.connector is not None:
                removes = [key for key in removes if key == scope.connector]
            if kept or removes:
                parts.append(
                    f'"{kind}":{{"upsert":[{",".join(kept)}],"remove":{json.dumps(removes)}}}'
                )
        return "{" + ",".join(parts) + "}"

    def snapshot_event(self, scope: Scope, mode: StreamMode) -> bytes:
        """A full document for `scope` as of the latest batch (built once per batch)."""
        cached = self._full.get(scope)
        if cached is not None and cached[0] == self.last_id:
            body = cached[1]
        else:
            text = self.document(scope)
            body = _event(EVENT_SNAPSHOT, self.event_id(), text)
            self._full = {k: v for k, v in self._full.items() if v[0] == self.last_id}
            self._full[scope] = (self.last_id, body)
        if mode == "full":
            return body.split(b"\n", 1)[1]
        return body

    def document(self, scope: Scope, now: datetime | None = None) -> str:
        """The full JSON document for `scope` from the published rows (call `refresh` first)."""
        server = self.source.server(now or self.clock()).model_dump_json()
        parts = [f'"server":{server}', f'"workers_summary":{self._summary_json}']
        if "models" in scope.parts:
            parts.append(f'"models":[{",".join(self._listed("models", scope))}]')
        if "workers" in scope.parts:
            parts.append(f'"workers":[{",".join(self._listed("workers", scope))}]')
        if "mcp" in scope.parts:
            clients = ",".join(self._listed("mcp_clients", scope))
            sessions = ",".join(self._listed("mcp_sessions", scope))
            parts.append(f'"mcp":{{"clients":[{clients}],"sessions":[{sessions}]}}')
        return "{" + ",".join(parts) + "}"

    def _listed(self, kind: Kind, scope: Scope) -> Iterator[str]:
        rows = self.rows[kind]
        if kind == "workers" and scope.connector is not None:
            row = rows.get(scope.connector)
            chosen: Iterable[Row] = [row] if row is not None else []
        else:
            chosen = sorted(rows.values(), key=lambda r: (r.order, r.key))
        return (row.json for row in chosen if scope.wants(kind, row))
