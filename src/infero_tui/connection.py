"""The state of the console's link to the server, as the header tells it (no Textual)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from infero_tui.format import duration

LinkState = Literal["connecting", "live", "reconnecting", "key refused", "replay", "stopped"]


@dataclass
class Connection:
    """Where the console looks, whether data flows, and if not why and when it retries."""

    target: str
    replay: bool = False
    state: LinkState = "connecting"
    cause: str = ""
    """Why the last attempt failed, in a few words (`connection refused`, `TLS error`)."""
    attempt: int = 0
    """Failed attempts in a row."""
    retry_at: datetime | None = None
    last_received: datetime | None = None

    def received(self, now: datetime) -> None:
        """A snapshot arrived: live (or replaying), no failure pending."""
        self.state = "replay" if self.replay else "live"
        self.cause, self.attempt, self.retry_at = "", 0, None
        self.last_received = now

    def failed(self, now: datetime, cause: str, attempt: int, retry_in: float) -> None:
        self.state = "reconnecting"
        self.cause, self.attempt = cause, attempt
        self.retry_at = now + timedelta(seconds=retry_in)

    def refused(self, cause: str) -> None:
        self.state = "key refused"
        self.cause, self.retry_at = cause, None

    def describe(self, now: datetime) -> tuple[str, str]:
        """The connection in words and its colour, e.g. `connection refused · attempt 3 ·
        retry in 5 s · data 12 s old`."""
        if self.state == "live":
            return "● live", "green"
        if self.state == "replay":
            return "◼ replay (recorded data, nothing is sent)", "bold magenta"
        if self.state == "connecting":
            return "… connecting", "yellow"
        if self.state == "key refused":
            return f"✗ {self.cause or 'key refused'} (a: enter a key)", "bold red"
        if self.state == "stopped":
            return f"✗ {self.cause}", "bold red"
        parts = [f"✗ {self.cause or 'disconnected'}", f"attempt {self.attempt}"]
        if self.retry_at is not None:
            wait = max(int((self.retry_at - now).total_seconds() + 0.999), 0)
            parts.append(f"retry in {duration(wait)}" if wait else "retrying")
        if self.last_received is not None:
            old = max(int((now - self.last_received).total_seconds()), 0)
            parts.append(f"data {duration(old)} old")
        return " · ".join(parts), "bold red"
