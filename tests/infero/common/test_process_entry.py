"""The connector process entry: exit code, and the start-up heap frozen once connected."""

from __future__ import annotations

import asyncio

import pytest

from infero.common import process


class FakeRuntime:
    """A runtime whose `run` is a script; `settled` is set by the patched `settle_heap`."""

    def __init__(self, *, connects: bool, code: int = 0) -> None:
        self.connected = asyncio.Event()
        self.settled = asyncio.Event()
        self.settled_before_connect = False
        self._connects = connects
        self._code = code

    async def run(self) -> int:
        await asyncio.sleep(0)
        self.settled_before_connect = self.settled.is_set()
        if self._connects:
            self.connected.set()
            async with asyncio.timeout(5):
                await self.settled.wait()
            self.connected.clear()  # a reconnect must not settle again
            self.connected.set()
            for _ in range(5):
                await asyncio.sleep(0)
        return self._code

    def signal_received(self, name: str) -> None:
        raise AssertionError(f"unexpected signal {name}")

    def request_stop(self) -> None:
        raise AssertionError("unexpected stop")


def _count_settles(monkeypatch: pytest.MonkeyPatch, runtime: FakeRuntime) -> list[None]:
    calls: list[None] = []

    def settle() -> None:
        calls.append(None)
        runtime.settled.set()

    monkeypatch.setattr(process, "settle_heap", settle)
    return calls


def test_the_process_settles_the_heap_once_when_the_connector_is_first_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime = FakeRuntime(connects=True)
    calls = _count_settles(monkeypatch, runtime)
    assert process.run_until_exit(runtime, "test runtime") == 0
    assert not runtime.settled_before_connect
    assert len(calls) == 1


def test_a_connector_that_never_connects_exits_with_its_code_and_no_settling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime = FakeRuntime(connects=False, code=3)
    calls = _count_settles(monkeypatch, runtime)
    assert process.run_until_exit(runtime, "test runtime") == 3
    assert calls == []
