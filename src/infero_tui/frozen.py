"""Feeds that replay recorded data: `infero tui --replay FILE`, `just console-dev` and tests.

`FrozenFeed` plays scripted connections of snapshots and records control calls instead of
sending them; `FrozenLocal` answers a fixed `/status`. Nothing here touches the network.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import TypeAdapter

from infero.protocol.state import StateSnapshot
from infero.protocol.status import VersionDoc, WorkerStatusDoc
from infero_tui.client import Action, AuthRefused, ClientError, ControlAccepted, StreamLost

Ending = Literal["hold", "lost", "401"]
_SNAPSHOTS = TypeAdapter(list[StateSnapshot])


def load_snapshots(path: Path) -> list[StateSnapshot]:
    """Snapshots from a JSON file holding one snapshot or a list of them."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return _SNAPSHOTS.validate_python(data if isinstance(data, list) else [data])


@dataclass
class FrozenFeed:
    """Plays each connection's snapshots, then ends it: "hold" (stay open), "lost", "401"."""

    connections: list[tuple[Sequence[StateSnapshot], Ending]]
    calls: list[tuple[str, Action]] = field(default_factory=list)
    """Every control call, in order (none is sent anywhere)."""
    api_keys: list[str] = field(default_factory=list)
    control_error: ClientError | None = None
    opened: int = 0
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once a connection has delivered all its snapshots."""
    control_called: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def holding(cls, snapshots: Sequence[StateSnapshot]) -> FrozenFeed:
        """One connection that plays `snapshots` and stays open."""
        return cls([(snapshots, "hold")])

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

    async def aclose(self) -> None:
        """Nothing to release."""


@dataclass
class FrozenLocal:
    """A local connector that answers a fixed `/status` (or is unreachable when None)."""

    status_doc: WorkerStatusDoc | None = None
    calls: list[Action] = field(default_factory=list)

    async def status(self) -> WorkerStatusDoc:
        if self.status_doc is None:
            raise ClientError("connector unreachable")
        return self.status_doc

    async def version(self) -> VersionDoc:
        return VersionDoc(
            version=self.status_doc.version if self.status_doc else "",
            build_sha=self.status_doc.build_sha if self.status_doc else "",
            build_date=self.status_doc.build_date if self.status_doc else "",
        )

    async def control(self, action: Action) -> None:
        self.calls.append(action)

    async def aclose(self) -> None:
        """Nothing to release."""
