"""The shared-state seam as the request path sees it: routes, tickets, control, relays.

Written against the `SharedState` protocol only (plus `attach`, which links a fake connector
the way the link endpoint does), so every implementation of the seam must pass it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from infero.common.liveness import Liveness
from infero.protocol import link as lp
from infero.server.embedded import EmbeddedState
from infero.server.events import EventBus, Outcome, RequestFinished, RequestRejected
from infero.server.exchange import Exchange, ExchangeFailed
from infero.server.lifecycle import Lifecycle
from infero.server.shared import Kind, QueueFull, Route, SharedState


class FakeLink:
    """A connector link of this instance that records what it is sent."""

    def __init__(self, link_id: str) -> None:
        self.id = link_id
        self.closed = False
        self.shutting_down = False
        self.late = False
        self.liveness = Liveness(interval=5.0, dead_after=15.0, now=0.0)
        self.sent: list[Any] = []
        self.opened: list[str] = []
        self.forgotten: list[Exchange] = []
        self.ending: list[Callable[[], None]] = []
        """Slots held until the connector ends a stream the server gave up on."""

    async def open_exchange(self, *, path: str, **_: Any) -> Exchange:
        if self.closed:
            raise ExchangeFailed("link_lost", "connector link closed", retryable=True)
        self.opened.append(path)
        return Exchange(self, len(self.opened), lp.DEFAULT_WINDOW)

    def forget(self, exchange: Exchange) -> None:
        self.forgotten.append(exchange)

    def release_after_end(self, exchange: Exchange, release: Callable[[], None]) -> None:
        self.forgotten.append(exchange)
        if exchange.end is not None or self.closed:
            release()
        else:
            self.ending.append(release)

    def release_at_next_end(self, release: Callable[[], None]) -> None:
        self.ending.append(release)

    async def send(self, frame: Any) -> None:
        self.sent.append(frame)

    def replaceable_by(self, hello: lp.Hello) -> bool:
        return self.closed

    def fail_exchanges(self, message: str) -> None:
        self.closed = True

    async def close(self, code: int = 1000, message: str = "") -> None:
        self.closed = True


class Finished:
    """Collects the request events the seam reports."""

    def __init__(self) -> None:
        self.events: list[RequestFinished] = []

    def request_finished(self, event: RequestFinished) -> None:
        self.events.append(event)

    def request_rejected(self, event: RequestRejected) -> None:
        pass

    def request_relayed(self, event: RequestFinished) -> None:
        pass


@pytest.fixture(params=["embedded"])
def shared(request: pytest.FixtureRequest, finished: Finished) -> SharedState:
    """Each implementation of the seam (today the one held in this process)."""
    assert request.param == "embedded"
    events = EventBus()
    events.subscribe(finished)
    return EmbeddedState(gone_retention=60, queue_max=2, lifecycle=Lifecycle(), events=events)


@pytest.fixture
def finished() -> Finished:
    return Finished()


def attach(
    shared: SharedState, connector_id: str, models: list[str], capacity: int, kind: Kind = "llm"
) -> FakeLink:
    """Link a connector as the endpoint does: admit, then attach."""
    hello = lp.Hello(kind=kind, id=connector_id, models=models, max_concurrency=capacity)
    handler = shared.link_handler(kind)
    assert handler.admit(hello) == connector_id
    fake = FakeLink(connector_id)
    handler.attached(hello, fake)
    return fake


def done(route: Route, outcome: Outcome = "success", error: str = "") -> RequestFinished:
    return RequestFinished(
        model="m",
        worker_id=route.connector_id,
        outcome=outcome,
        status=200,
        duration_s=0.1,
        ttft_s=0.01,
        queue_wait_s=0.0,
        tokens_in=1,
        tokens_out=2,
        error=error,
    )


async def test_routes_go_to_the_least_busy_connector_and_never_beyond_capacity(
    shared: SharedState,
) -> None:
    attach(shared, "a", ["m"], 2)
    attach(shared, "b", ["m"], 1)
    dispatcher = shared.dispatcher
    routes = [await dispatcher.acquire_now("m", frozenset(), None) for _ in range(4)]
    taken = [r.connector_id for r in routes if r is not None]
    assert sorted(taken) == ["a", "a", "b"]
    assert routes[3] is None, "three slots in all"
    assert shared.gauges().inflight == 3


async def test_finish_counts_the_outcome_once_and_frees_the_slot_when_the_connector_ended(
    shared: SharedState, finished: Finished
) -> None:
    fake = attach(shared, "a", ["m"], 1)
    route = await shared.dispatcher.acquire_now("m", frozenset(), None)
    assert route is not None
    exchange = await route.open_exchange(
        method="POST", path="/x", headers=[], body=b"{}", stream=False, model="m", request_id=""
    )
    await route.finish(done(route, "error", "boom"))
    assert fake.forgotten == [exchange]
    assert fake.sent == [lp.Cancel(id=exchange.id)]
    assert [e.error for e in finished.events] == ["boom"]
    assert shared.gauges().inflight == 1, "the connector has not ended the call yet"
    fake.ending.pop()()
    assert shared.gauges().inflight == 0
    fake.sent.clear()
    again = await shared.dispatcher.acquire_now("m", frozenset(), None)
    assert again is not None
    assert again.connector_id == "a"


async def test_queue_is_fifo_per_model_bounded_and_hands_over_on_release(
    shared: SharedState,
) -> None:
    attach(shared, "a", ["m"], 1)
    dispatcher = shared.dispatcher
    busy = await dispatcher.acquire_now("m", frozenset(), None)
    assert busy is not None
    first = await dispatcher.enqueue("m", frozenset(), None)
    second = await dispatcher.enqueue("m", frozenset(), None)
    with pytest.raises(QueueFull):
        await dispatcher.enqueue("m", frozenset(), None)
    assert (await first.position(), await second.position()) == (1, 2)
    assert await dispatcher.acquire_now("m", frozenset(), None) is None, "no jumping the queue"
    waiting = asyncio.create_task(first.wait())
    await busy.finish(done(busy))
    async with asyncio.timeout(5):
        handed = await waiting
    assert handed is not None
    assert handed.connector_id == "a"
    assert await second.position() == 1
    await first.leave()  # after a hand-over: nothing to give back
    await second.leave()
    await handed.finish(done(handed))
    assert shared.gauges().inflight == 0
    assert shared.gauges().queues["m"][0] == 0


async def test_a_route_handed_to_a_ticket_that_leaves_is_given_back(shared: SharedState) -> None:
    attach(shared, "a", ["m"], 1)
    busy = await shared.dispatcher.acquire_now("m", frozenset(), None)
    assert busy is not None
    ticket = await shared.dispatcher.enqueue("m", frozenset(), None)
    await busy.finish(done(busy))
    await ticket.leave()
    assert shared.gauges().inflight == 0
    assert await shared.dispatcher.acquire_now("m", frozenset(), None) is not None


async def test_known_models_alias_and_targeting(shared: SharedState) -> None:
    attach(shared, "a", ["llama2:7b-q4_0"], 1)
    dispatcher = shared.dispatcher
    assert dispatcher.known("llama2:7b-q4_0", None)
    assert dispatcher.known("llama2:7b-q5_0", None), "same base model by the alias rule"
    assert not dispatcher.known("llama2:7b-q4_0", "b")
    assert dispatcher.serving_beyond("llama2:7b-q4_0", frozenset(), None)
    assert not dispatcher.serving_beyond("llama2:7b-q4_0", frozenset({"a"}), None)
    assert [(m.id, m.owners) for m in shared.models()] == [("llama2:7b-q4_0", ("a",))]
    assert shared.ready()


async def test_steering_reaches_the_link_and_an_undrain_after_shutdown_is_refused(
    shared: SharedState,
) -> None:
    fake = attach(shared, "a", ["m"], 1)
    control = shared.control
    assert await control.steer("llm", "nobody", "drain", "op") == "not_linked"
    assert await control.steer("llm", "a", "shutdown", "op") == "accepted"
    assert await control.steer("llm", "a", "undrain", "op") == "shutting_down"
    assert fake.sent == [lp.Control(action="shutdown", by="op")]


async def test_relay_exchanges_and_calls_counted_atomically_up_to_the_limit(
    shared: SharedState,
) -> None:
    fake = attach(shared, "r1", [], 0, kind="mcp")
    relays = shared.relays
    relay = relays.lookup("r1")
    assert relay is not None
    exchange = await relays.open_exchange(
        relay, method="POST", path="/", headers=[], body=b"{}", stream=True, model="", request_id=""
    )
    relays.forget(relay, exchange)
    assert (fake.opened, fake.forgotten) == (["/"], [exchange])
    assert relays.start_call(relay, None, 1)
    assert not relays.start_call(relay, None, 1)
    relays.finish_call(relay, None, ok=True)
    assert relays.start_call(relay, None, 1)
    assert await shared.control.steer("mcp", "r1", "drain", "op") == "accepted"


async def test_every_change_bumps_the_feed(shared: SharedState) -> None:
    seen = shared.changes.version
    attach(shared, "a", ["m"], 1)
    assert shared.changes.version > seen
    seen = shared.changes.version
    route = await shared.dispatcher.acquire_now("m", frozenset(), None)
    assert route is not None
    assert shared.changes.version > seen
