"""Sans-I/O heartbeat bookkeeping for one side of a link (C4): fed timestamps, returns actions."""

from __future__ import annotations

import enum


class Action(enum.Enum):
    """What the I/O wrapper should do after a tick."""

    NOTHING = "nothing"
    PING = "ping"
    CLOSE = "close"


class Liveness:
    """Ping after `interval` of silence on our side; declare the peer dead after `dead_after`.

    `received(now)` on every inbound frame, `sent(now)` on every outbound frame,
    `tick(now)` periodically. No clock is read here.
    """

    def __init__(self, *, interval: float, dead_after: float, now: float) -> None:
        if interval <= 0 or dead_after <= interval:
            raise ValueError("need 0 < interval < dead_after")
        self.interval = interval
        self.dead_after = dead_after
        self.last_received = now
        self.last_sent = now

    def received(self, now: float) -> None:
        """Any frame from the peer proves it is alive."""
        self.last_received = now

    def sent(self, now: float) -> None:
        """Any frame we send counts as a heartbeat for the peer."""
        self.last_sent = now

    def tick(self, now: float) -> Action:
        """Decide: close a silent link, ping if we have been quiet, or do nothing."""
        if now - self.last_received >= self.dead_after:
            return Action.CLOSE
        if now - self.last_sent >= self.interval:
            self.last_sent = now
            return Action.PING
        return Action.NOTHING

    def next_deadline(self, now: float) -> float:
        """Seconds until the next tick could change anything."""
        return max(
            0.0,
            min(self.last_sent + self.interval, self.last_received + self.dead_after) - now,
        )
