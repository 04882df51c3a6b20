"""What the routing core reports as it works; metrics and logs subscribe here.

The core calls `EventBus` methods synchronously on the hot path, so listeners must be
cheap and must not await or raise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Outcome = Literal["success", "error", "cancelled"]
RejectReason = Literal[
    "unauthorized",
    "bad_request",
    "too_large",
    "body_timeout",
    "overloaded",
    "model_not_found",
    "response_not_found",
    "queue_full",
    "queue_timeout",
    "draining",
    "first_byte_timeout",
    "idle_timeout",
    "upstream_error",
]


@dataclass(frozen=True, slots=True)
class RequestFinished:
    """A relayed request ended (whatever the outcome) after reaching a connector."""

    model: str
    worker_id: str
    outcome: Outcome
    status: int
    duration_s: float
    ttft_s: float | None
    queue_wait_s: float
    tokens_in: int
    tokens_out: int
    error: str = ""
    """Why it failed (empty on success); the connector's `last_error`."""


@dataclass(frozen=True, slots=True)
class RequestRejected:
    """A request the server answered with an error before or instead of relaying it."""

    model: str
    reason: RejectReason


class Listener(Protocol):
    """Anything that wants to hear about requests."""

    def request_finished(self, event: RequestFinished) -> None: ...

    def request_rejected(self, event: RequestRejected) -> None: ...

    def request_relayed(self, event: RequestFinished) -> None: ...


class EventBus:
    """Fan-out to listeners; the core holds one per app."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        """Add a listener (at app setup, before serving)."""
        self._listeners.append(listener)

    def request_finished(self, event: RequestFinished) -> None:
        """Report a finished request."""
        for listener in self._listeners:
            listener.request_finished(event)

    def request_rejected(self, event: RequestRejected) -> None:
        """Report a rejected request."""
        for listener in self._listeners:
            listener.request_rejected(event)

    def request_relayed(self, event: RequestFinished) -> None:
        """Report a request this instance relayed to a connector of another instance (which
        counts it as finished: a request is counted once, by the instance that served it)."""
        for listener in self._listeners:
            listener.request_relayed(event)
