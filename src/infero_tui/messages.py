"""App-level messages posted by the feed workers and the panes, handled by the main screen."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from textual.message import Message

from infero.protocol.status import WorkerStatusDoc
from infero_tui.client import Action

Kind = Literal["worker", "model", "relay", "instance"]
"""What a row or a detail view is about."""


@dataclass
class FeedLost(Message):
    """The state stream failed; the console shows why and reconnects."""

    reason: str
    cause: str
    attempt: int
    retry_in: float


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
    """The operator asked for an action on a connector or relay (before confirmation)."""

    kind: Kind
    key: str
    action: Action


@dataclass
class DetailRequested(Message):
    """Enter on a row: open the full-screen detail of a worker, model, relay or instance."""

    kind: Kind
    key: str
