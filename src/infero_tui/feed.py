"""What the console needs from the network, as small Protocols (tests inject frozen feeds)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from infero.protocol.state import StateSnapshot
from infero.protocol.status import VersionDoc, WorkerStatusDoc
from infero_tui.client import Action, ControlAccepted


class FleetFeed(Protocol):
    """The server side: a stream of snapshots and fleet control (`FleetClient` is one)."""

    def snapshots(self) -> AsyncIterator[StateSnapshot]:
        """Snapshots until the stream ends; raises `ClientError` subclasses on failure."""
        ...

    async def control(self, worker_id: str, action: Action) -> ControlAccepted:
        """Send one drain/undrain/shutdown for a worker."""
        ...

    def set_api_key(self, key: str) -> None:
        """Use this API key from the next request on."""
        ...

    async def aclose(self) -> None:
        """Release connections (the console calls this when it exits)."""
        ...


class LocalFeed(Protocol):
    """One local connector's status port (`LocalClient` is one)."""

    async def status(self) -> WorkerStatusDoc:
        """Current `/status`."""
        ...

    async def version(self) -> VersionDoc:
        """`/version`."""
        ...

    async def control(self, action: Action) -> None:
        """`POST /control/{action}`."""
        ...

    async def aclose(self) -> None:
        """Release connections (the console calls this when it exits)."""
        ...
