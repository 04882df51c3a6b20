"""What the console needs from the network, as small Protocols (tests inject frozen feeds)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from infero.protocol.state import StateSnapshot
from infero.protocol.status import VersionDoc, WorkerStatusDoc
from infero_tui.client import Action, ControlAccepted, Target


class FleetFeed(Protocol):
    """The server side: a stream of snapshots and fleet control (`FleetClient` is one)."""

    def snapshots(self) -> AsyncIterator[StateSnapshot]:
        """Snapshots until the stream ends; raises `ClientError` subclasses on failure."""
        ...

    @property
    def target(self) -> str:
        """The server URL (or the replayed file) shown in the header."""
        ...

    @property
    def replay(self) -> bool:
        """True for recorded data: never shown as live, never sends an action."""
        ...

    @property
    def live_heartbeats(self) -> bool:
        """Whether each snapshot carries fresh heartbeat times (False on a delta stream)."""
        ...

    @property
    def can_act(self) -> bool:
        """Whether actions can be sent at all (an operator key was given)."""
        ...

    def with_target(self, base_url: str) -> FleetFeed:
        """The same feed for another server (`:ctx URL`); `ClientError` if it cannot."""
        ...

    async def control(
        self, connector_id: str, action: Action, target: Target = "worker"
    ) -> ControlAccepted:
        """Send one drain/undrain/shutdown for a connector or an MCP relay."""
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

    def use_token_file(self, path: Path) -> None:
        """Read the control token from this file from now on (the connector reported it)."""
        ...

    async def aclose(self) -> None:
        """Release connections (the console calls this when it exits)."""
        ...
