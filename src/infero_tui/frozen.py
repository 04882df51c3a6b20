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
from infero_tui.client import (
    Action,
    AuthRefused,
    ClientError,
    ControlAccepted,
    StreamLost,
    Target,
)

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
    """Every control call for a worker, in order (none is sent anywhere)."""
    relay_calls: list[tuple[str, Action]] = field(default_factory=list)
    """Every control call for an MCP relay."""
    target: str = "https://infero.example"
    """What the header shows (a made-up server for tests and demos)."""
    replay: bool = False
    """True for `infero tui --replay FILE`: the header says so and nothing is sent."""
    can_act: bool = True
    live_heartbeats: bool = True
    targets: list[str] = field(default_factory=list)
    """Every server `:ctx` switched to."""
    api_keys: list[str] = field(default_factory=list)
    control_error: ClientError | None = None
    loss_cause: str = "stream ended"
    """What a "lost" ending says went wrong (`connection refused`, `TLS error`)."""
    opened: int = 0
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once a connection has delivered all its snapshots."""
    control_called: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def holding(cls, snapshots: Sequence[StateSnapshot]) -> FrozenFeed:
        """One connection that plays `snapshots` and stays open."""
        return cls([(snapshots, "hold")])

    @classmethod
    def replaying(cls, path: Path) -> FrozenFeed:
        """`infero tui --replay FILE`: the file's snapshots, marked as a replay."""
        return cls([(load_snapshots(path), "hold")], target=str(path), replay=True, can_act=False)

    def with_target(self, base_url: str) -> FrozenFeed:
        if self.replay:
            raise ClientError("a replay has no server to switch")
        self.targets.append(base_url)
        self.target = base_url
        return self

    async def snapshots(self) -> AsyncIterator[StateSnapshot]:
        index = min(self.opened, len(self.connections) - 1)
        self.opened += 1
        snapshots, ending = self.connections[index]
        for snapshot in snapshots:
            yield snapshot
        self.settled.set()
        if ending == "lost":
            raise StreamLost(f"state stream lost ({self.loss_cause})", self.loss_cause)
        if ending == "401":
            raise AuthRefused("state stream: invalid API key", 401)
        await asyncio.Event().wait()

    async def control(
        self, connector_id: str, action: Action, target: Target = "worker"
    ) -> ControlAccepted:
        if self.replay:
            raise ClientError("replay: nothing is sent")
        (self.calls if target == "worker" else self.relay_calls).append((connector_id, action))
        self.control_called.set()
        if self.control_error is not None:
            raise self.control_error
        return ControlAccepted(id=connector_id, action=action, accepted=True)

    def set_api_key(self, key: str) -> None:
        self.api_keys.append(key)

    async def aclose(self) -> None:
        """Nothing to release."""


@dataclass
class FrozenLocal:
    """A local connector that answers a fixed `/status` (or is unreachable when None)."""

    status_doc: WorkerStatusDoc | None = None
    calls: list[Action] = field(default_factory=list)
    token_file: Path | None = None

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

    def use_token_file(self, path: Path) -> None:
        self.token_file = path

    async def aclose(self) -> None:
        """Nothing to release."""
