"""Routing rules: alias keys, exact before alias, least busy, atomic capacity, FIFO queue."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import pytest

from infero.protocol.link import Hello
from infero.server.changes import ChangeFeed
from infero.server.link import ConnectorLink
from infero.server.registry import Fleet, Worker, WorkerStats, alias_key
from infero.server.scheduler import Scheduler
from infero.server.shared import QueueFull


def _fleet(*workers: tuple[str, list[str], int, int]) -> tuple[Fleet, Scheduler]:
    """Workers as (id, models, inflight, capacity)."""
    fleet = Fleet(gone_retention=60, changes=ChangeFeed())
    scheduler = Scheduler(fleet, queue_max=2)
    fleet.on_capacity = scheduler.opened
    for wid, models, inflight, capacity in workers:
        worker = Worker(Hello(id=wid, models=models, max_concurrency=capacity), None, WorkerStats())
        worker.inflight = inflight
        fleet.register(worker)
    return fleet, scheduler


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("llama2:7b-q4_0", "llama2:7b"),
        ("llama2:7b", "llama2:7b"),
        ("mistral:7b-q5_k_m", "mistral:7b"),
        ("llama2-7b-q4_0", None),
        ("llama3", None),
        ("qwen2.5:14b-instruct-q4_K_M", "qwen2.5:14b"),
        ("a:b:c-d", "a:b:c"),
        ("m:tag x", None),
    ],
)
def test_alias_key_follows_the_reference_rule(model: str, key: str | None) -> None:
    assert alias_key(model) == key


def test_least_in_flight_ratio_wins() -> None:
    _, scheduler = _fleet(("w1", ["m"], 1, 2), ("w2", ["m"], 0, 1))
    worker = scheduler.try_acquire("m")
    assert worker is not None
    assert worker.id == "w2"


def test_exact_match_wins_even_when_busier() -> None:
    _, scheduler = _fleet(
        ("exact", ["llama2:7b-q4_0"], 10, 20), ("alias", ["llama2:7b-fp16"], 0, 1)
    )
    worker = scheduler.try_acquire("llama2:7b-q4_0")
    assert worker is not None
    assert worker.id == "exact"


def test_alias_fallback_when_only_another_quantization_exists() -> None:
    _, scheduler = _fleet(("w1", ["llama2:7b-fp16"], 0, 1))
    worker = scheduler.try_acquire("llama2:7b-q4_0")
    assert worker is not None
    assert worker.id == "w1"


def test_a_different_base_model_is_not_an_alias() -> None:
    _, scheduler = _fleet(("w1", ["mistral:7b-q4_0"], 0, 1))
    assert not scheduler.known("llama2:7b-q4_0")
    assert scheduler.try_acquire("llama2:7b-q4_0") is None


def test_bare_name_and_tag_uses_a_quantized_worker() -> None:
    _, scheduler = _fleet(("w1", ["mistral:7b-fp16"], 0, 1))
    worker = scheduler.try_acquire("mistral:7b")
    assert worker is not None
    assert worker.id == "w1"


def test_least_busy_alias_candidate_wins() -> None:
    _, scheduler = _fleet(("w1", ["llama2:7b-q4_0"], 2, 4), ("w2", ["llama2:7b-fp16"], 1, 4))
    worker = scheduler.try_acquire("llama2:7b-q5_0")
    assert worker is not None
    assert worker.id == "w2"


def test_capacity_is_taken_atomically_and_never_exceeded() -> None:
    fleet, scheduler = _fleet(("w1", ["m"], 0, 2), ("w2", ["m"], 0, 1))
    got = [scheduler.try_acquire("m") for _ in range(5)]
    assert [w.id if w else None for w in got].count(None) == 2
    assert fleet.workers["w1"].inflight == 2
    assert fleet.workers["w2"].inflight == 1


def test_draining_and_not_ready_workers_get_nothing_new_but_keep_the_model_known() -> None:
    fleet, scheduler = _fleet(("w1", ["m"], 0, 2), ("w2", ["m"], 0, 2))
    fleet.workers["w1"].link_status = "draining"
    fleet.workers["w2"].link_status = "not_ready"
    assert scheduler.known("m")
    assert scheduler.try_acquire("m") is None


def test_exact_worker_draining_lets_alias_workers_serve() -> None:
    fleet, scheduler = _fleet(("exact", ["x:1-a"], 0, 1), ("alias", ["x:1-b"], 0, 1))
    fleet.workers["exact"].link_status = "draining"
    worker = scheduler.try_acquire("x:1-a")
    assert worker is not None
    assert worker.id == "alias"


def test_target_pins_a_request_to_one_worker() -> None:
    _, scheduler = _fleet(("w1", ["m"], 0, 1), ("w2", ["m"], 0, 1))
    worker = scheduler.try_acquire("m", target="w2")
    assert worker is not None
    assert worker.id == "w2"
    assert not scheduler.known("m", target="w9")


async def test_queue_is_fifo_per_model_and_bounded() -> None:
    fleet, scheduler = _fleet(("w1", ["m"], 1, 1), ("w2", ["n"], 0, 1))
    first = scheduler.enqueue("m")
    second = scheduler.enqueue("m")
    with pytest.raises(QueueFull):
        scheduler.enqueue("m")
    assert (scheduler.position(first), scheduler.position(second)) == (1, 2)
    assert scheduler.acquire_now("m") is None, "a newcomer must not jump the queue"
    assert scheduler.acquire_now("n") is not None, "another model is not blocked"
    scheduler.release(fleet.workers["w1"])
    assert first.future.result().id == "w1"
    assert first.moved.is_set(), "the dispatched waiter is woken"
    assert second.moved.is_set()
    assert scheduler.position(second) == 1
    scheduler.leave(second)
    assert scheduler.queue_len("m") == 0


async def test_leaving_after_being_handed_a_worker_gives_the_slot_back() -> None:
    fleet, scheduler = _fleet(("w1", ["m"], 1, 1))
    waiter = scheduler.enqueue("m")
    scheduler.release(fleet.workers["w1"])
    assert waiter.future.done()
    scheduler.leave(waiter)
    assert fleet.workers["w1"].inflight == 0


def test_gone_workers_are_forgotten_in_the_order_they_left_and_a_returning_one_is_kept() -> None:
    now = [0.0]
    fleet = Fleet(gone_retention=60, changes=ChangeFeed(), clock=lambda: now[0])

    def connect(wid: str) -> ConnectorLink:
        link = cast(ConnectorLink, SimpleNamespace(id=wid))
        fleet.register(Worker(Hello(id=wid, models=["m"], max_concurrency=1), link, WorkerStats()))
        return link

    links = {wid: connect(wid) for wid in ("a", "b", "c")}
    for left, wid in ((0.0, "a"), (10.0, "b"), (20.0, "c")):
        now[0] = left
        fleet.detached(links[wid])
    now[0] = 30.0
    connect("b")  # b is back before its retention ran out
    now[0] = 75.0
    fleet.prune_gone()
    assert set(fleet.workers) == {"b", "c"}
    now[0] = 80.0
    connect("d")  # a connect prunes too
    assert set(fleet.workers) == {"b", "d"}
    assert fleet.workers["b"].live
