"""App-level messages posted by the feed workers and handled by the main screen."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from infero.protocol.state import StateSnapshot
from infero.protocol.status import WorkerStatusDoc
from infero_tui.client import Action


@dataclass
class SnapshotReceived(Message):
    """A fresh `/api/state` snapshot arrived."""

    snapshot: StateSnapshot


@dataclass
class FeedLost(Message):
    """The state stream failed; the console shows it as stale and reconnects."""

    reason: str


@dataclass
class AuthRequired(Message):
    """The server refused the API key (401/403)."""

    reason: str


@dataclass
class LocalStatusReceived(Message):
    """A fresh `/status` from the local connector."""

    status: WorkerStatusDoc


@dataclass
class LocalLost(Message):
    """The local connector's status port did not answer."""

    reason: str


@dataclass
class ActionRequested(Message):
    """The operator asked for an action on a fleet worker (before confirmation)."""

    worker_id: str
    action: Action
