"""Test doubles for the console: frozen feeds over tests/data fixtures and a fixed clock."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from infero.protocol.state import StateSnapshot
from infero.protocol.status import VersionDoc, WorkerStatusDoc
from infero_tui.client import Action, AuthRefused, ClientError, ControlAccepted, StreamLost

DATA = Path(__file__).resolve().parents[1] / "data"
FIXED_NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


def load_snapshot(name: str) -> StateSnapshot:
    """One snapshot from tests/data/<name>.json."""
    return StateSnapshot.model_validate_json((DATA / f"{name}.json").read_text(encoding="utf-8"))


def load_series(name: str) -> list[StateSnapshot]:
    """A list of snapshots from tests/data/<name>.json."""
    raw = json.loads((DATA / f"{name}.json").read_text(encoding="utf-8"))
    return [StateSnapshot.model_validate(item) for item in raw]


def load_status() -> WorkerStatusDoc:
    text = (DATA / "local_status.json").read_text(encoding="utf-8")
    return WorkerStatusDoc.model_validate_json(text)


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, now: datetime = FIXED_NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class FrozenFeed:
    """Plays scripted connections: each is a list of snapshots then an ending.

    Ending "hold" keeps the stream open forever, "lost" raises `StreamLost`, "401" refuses.
    """

    connections: list[tuple[Sequence[StateSnapshot], str]]
    calls: list[tuple[str, Action]] = field(default_factory=list)
    api_keys: list[str] = field(default_factory=list)
    control_error: ClientError | None = None
    opened: int = 0
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    """Set whenever the feed has delivered everything of a connection and holds or fails."""
    control_called: asyncio.Event = field(default_factory=asyncio.Event)

    async def snapshots(self) -> AsyncIterator[StateSnapshot]:
        index = min(self.opened, len(self.connections) - 1)
        self.opened += 1
        snapshots, ending = self.connections[index]
        for snapshot in snapshots:
            yield snapshot
        self.settled.set()
        if ending == "lost":
            raise StreamLost("state stream ended")
        if ending == "401":
            raise AuthRefused("state stream: invalid API key", 401)
        await asyncio.Event().wait()

    async def control(self, worker_id: str, action: Action) -> ControlAccepted:
        self.calls.append((worker_id, action))
        self.control_called.set()
        if self.control_error is not None:
            raise self.control_error
        return ControlAccepted(id=worker_id, action=action, accepted=True)

    def set_api_key(self, key: str) -> None:
        self.api_keys.append(key)


def holding(*names: str) -> FrozenFeed:
    """A feed that plays the named fixtures and then holds the stream open."""
    return FrozenFeed([([load_snapshot(n) for n in names], "hold")])


@dataclass
class FakeLocal:
    """A local connector status port that answers from a fixture and records control calls."""

    status_doc: WorkerStatusDoc | None = None
    calls: list[Action] = field(default_factory=list)

    async def status(self) -> WorkerStatusDoc:
        if self.status_doc is None:
            raise ClientError("connector at 127.0.0.1:4555 unreachable")
        return self.status_doc

    async def version(self) -> VersionDoc:
        return VersionDoc(version="0.1.0", build_sha="abc1234", build_date="2026-11-27")

    async def control(self, action: Action) -> None:
        self.calls.append(action)
