"""The receive side of one relayed exchange, fed by hand like the link reader does."""

from __future__ import annotations

import asyncio

import pytest

from infero.protocol import link as lp
from infero.server.exchange import JOIN_LIMIT, Exchange, ExchangeFailed


class _Sent:
    def __init__(self) -> None:
        self.frames: list[lp.Cancel | lp.Credit] = []

    async def send(self, frame: lp.Cancel | lp.Credit) -> None:
        self.frames.append(frame)


def _exchange(window: int = lp.DEFAULT_WINDOW) -> tuple[Exchange, _Sent]:
    sent = _Sent()
    return Exchange(sent, 1, window), sent


async def test_chunks_that_arrived_together_come_back_as_one() -> None:
    exchange, _ = _exchange()
    exchange.on_head(lp.Head(id=1, status=200))
    for part in (b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"):
        exchange.on_body(memoryview(part))
    await exchange.head(1)
    assert await exchange.chunk(1) == b"data: 1\n\ndata: 2\n\ndata: 3\n\n"
    assert not exchange.at_clean_end()


async def test_joining_stops_at_the_join_limit() -> None:
    exchange, _ = _exchange(window=4 * JOIN_LIMIT)
    big = b"x" * JOIN_LIMIT
    for part in (big, b"a", b"b"):
        exchange.on_body(memoryview(part))
    assert await exchange.chunk(1) == big
    assert await exchange.chunk(1) == b"ab"


async def test_a_clean_end_right_after_the_body_is_seen_and_consumed() -> None:
    exchange, sent = _exchange()
    exchange.on_body(memoryview(b"{}"))
    exchange.on_end(lp.End(id=1, usage=lp.Usage(prompt_tokens=1, completion_tokens=2)))
    assert await exchange.chunk(1) == b"{}"
    assert exchange.at_clean_end()
    assert exchange.finished
    await exchange.cancel()
    assert sent.frames == []


async def test_an_end_with_an_error_is_not_a_clean_end_and_still_raises() -> None:
    exchange, _ = _exchange()
    exchange.on_body(memoryview(b"partial"))
    exchange.on_end(lp.End(id=1, error=lp.LinkError(code="backend_error", message="broke")))
    assert await exchange.chunk(1) == b"partial"
    assert not exchange.at_clean_end()
    with pytest.raises(ExchangeFailed) as caught:
        await exchange.chunk(1)
    assert caught.value.code == "backend_error"


async def test_waiting_for_a_chunk_times_out_and_a_late_chunk_is_still_delivered() -> None:
    exchange, _ = _exchange()
    with pytest.raises(TimeoutError):
        await exchange.chunk(0.01)
    exchange.on_body(memoryview(b"late"))
    async with asyncio.timeout(5):
        assert await exchange.chunk(1) == b"late"


async def test_a_shorter_wait_after_a_long_one_still_times_out_in_time() -> None:
    exchange, _ = _exchange()
    exchange.on_body(memoryview(b"first"))
    assert await exchange.chunk(300) == b"first"
    long_wait = asyncio.create_task(exchange.chunk(300))
    await asyncio.sleep(0)  # let it park on its waiter
    exchange.on_body(memoryview(b"second"))
    async with asyncio.timeout(5):
        assert await long_wait == b"second"
        with pytest.raises(TimeoutError):
            await exchange.chunk(0.01)


async def test_a_wait_outliving_an_earlier_deadline_times_out_at_its_own() -> None:
    exchange, _ = _exchange()
    short_wait = asyncio.create_task(exchange.chunk(0.02))
    await asyncio.sleep(0)  # let it park on its waiter (arms the timer)
    exchange.on_body(memoryview(b"x"))
    async with asyncio.timeout(5):
        assert await short_wait == b"x"
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await exchange.chunk(0.1)
        assert loop.time() - started >= 0.09
    await exchange.cancel()
