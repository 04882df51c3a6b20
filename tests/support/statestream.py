"""A real `/api/state/stream` client for tests: reads SSE events, applies deltas."""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp

from infero.protocol.delta import EVENT_DELTA, EVENT_SNAPSHOT, StateDelta, apply_delta
from infero.protocol.state import StateSnapshot


@dataclass(frozen=True)
class Event:
    """One server-sent event (`name` is `message` when the event had none)."""

    name: str
    id: str
    data: str


async def next_event(resp: aiohttp.ClientResponse) -> Event:
    """The next complete event; comments (`: keepalive`) and `retry:` lines are skipped."""
    name, event_id = "message", ""
    data: list[str] = []
    while True:
        raw = await resp.content.readline()
        if not raw:
            raise EOFError("the stream ended")
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                return Event(name, event_id, "\n".join(data))
            name, event_id = "message", ""
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            data.append(line[6:])


@dataclass
class StateView:
    """What a delta viewer knows: the snapshot after every event, and the events seen."""

    resp: aiohttp.ClientResponse
    snapshot: StateSnapshot | None = None
    events: list[Event] = field(default_factory=list)

    @property
    def last_id(self) -> str:
        return self.events[-1].id

    async def step(self) -> Event:
        """Read one event and apply it."""
        event = await next_event(self.resp)
        self.events.append(event)
        if event.name == EVENT_SNAPSHOT:
            self.snapshot = StateSnapshot.model_validate_json(event.data)
        elif event.name == EVENT_DELTA:
            assert self.snapshot is not None, "a delta came before any snapshot"
            self.snapshot = apply_delta(self.snapshot, StateDelta.model_validate_json(event.data))
        else:
            raise AssertionError(f"unexpected event {event.name!r} in delta mode")
        return event

    async def until(self, predicate: object) -> StateSnapshot:
        """Read events until `predicate(snapshot)` holds (bound it with a timeout)."""
        assert callable(predicate)
        while self.snapshot is None or not predicate(self.snapshot):
            await self.step()
        return self.snapshot
