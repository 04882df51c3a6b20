"""Drain, undrain, shutdown, signals and server Control frames, against a scripted server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from infero.protocol import link
from support.linkfakes import CHAT, ServerFactory, Stack


@pytest.fixture
async def stack(aiohttp_server: ServerFactory) -> AsyncIterator[Stack]:
    s = Stack(aiohttp_server)
    yield s
    await s.close()


async def _start_held_request(stack: Stack, sid: int = 1) -> None:
    """One request that the backend holds until `stack.backend.release` is set."""
    stack.backend.hold = True
    await stack.server.request(sid, "/chat/completions", CHAT)
    async with asyncio.timeout(5):
        await stack.backend.entered.wait()


async def test_drain_when_idle_stays_linked_and_shutdown_exits_zero(stack: Stack) -> None:
    connector = await stack.start()
    await stack.connected()
    connector.drain(by="test")
    async with asyncio.timeout(5):
        update = await stack.server.next_frame(link.StatusUpdate)
    assert (update.status, update.shutting_down) == ("draining", False)
    assert connector.connected.is_set()
    assert not connector.stopped.is_set()
    assert connector.status_doc().state == "draining"
    connector.shutdown(by="test")
    assert await stack.exit_code() == 0


async def test_exit_when_drained_makes_an_idle_drain_exit_zero(stack: Stack) -> None:
    connector = await stack.start(exit_when_drained=True)
    await stack.connected()
    connector.drain(by="script")
    assert await stack.exit_code() == 0


async def test_drain_finishes_inflight_refuses_new_work_and_tells_the_server(
    stack: Stack,
) -> None:
    connector = await stack.start(drain_timeout=-1)
    await stack.connected()
    await _start_held_request(stack)
    connector.drain(by="test")
    async with asyncio.timeout(5):
        update = await stack.server.next_frame(link.StatusUpdate)
        assert update.status == "draining"
        await stack.server.request(2, "/chat/completions", CHAT)
        refused = await stack.server.next_frame(link.End)
    assert refused.id == 2
    assert refused.error is not None
    assert refused.error.code == "draining"
    assert connector.status_doc().state == "draining"
    stack.backend.release.set()
    async with asyncio.timeout(5):
        finished = await stack.server.next_frame(link.End)
    assert (finished.id, finished.error) == (1, None)
    assert len(stack.backend.bodies) == 1
    assert connector.connected.is_set()
    assert not connector.stopped.is_set()


async def test_second_signal_exits_at_once_with_work_in_flight(stack: Stack) -> None:
    connector = await stack.start(drain_timeout=-1)
    await stack.connected()
    await _start_held_request(stack)
    connector.signal_received("SIGTERM")
    async with asyncio.timeout(5):
        update = await stack.server.next_frame(link.StatusUpdate)
    assert (update.status, update.shutting_down) == ("draining", True)
    assert not connector.undrain(by="test")
    assert not connector.stopped.is_set()
    connector.signal_received("SIGTERM")
    assert await stack.exit_code() == 0
    async with asyncio.timeout(5):
        await stack.backend.cancelled.wait()


async def test_drain_timeout_zero_exits_at_once(stack: Stack) -> None:
    connector = await stack.start(drain_timeout=0)
    await stack.connected()
    await _start_held_request(stack)
    connector.signal_received("SIGINT")
    assert await stack.exit_code() == 0


async def test_drain_timeout_ends_a_shutdown_that_takes_too_long(stack: Stack) -> None:
    connector = await stack.start(drain_timeout=0.05)
    await stack.connected()
    await _start_held_request(stack)
    connector.shutdown(by="test")
    assert await stack.exit_code() == 0
    async with asyncio.timeout(5):
        await stack.backend.cancelled.wait()


async def test_undrain_takes_requests_again(stack: Stack) -> None:
    connector = await stack.start(drain_timeout=-1)
    await stack.connected()
    await _start_held_request(stack)
    connector.drain(by="test")
    async with asyncio.timeout(5):
        first = await stack.server.next_frame(link.StatusUpdate)
        assert connector.undrain(by="test")
        second = await stack.server.next_frame(link.StatusUpdate)
    assert (first.status, second.status) == ("draining", "ready")
    stack.backend.release.set()
    async with asyncio.timeout(5):
        end = await stack.server.next_frame(link.End)
        assert end.error is None
        await stack.server.request(2, "/chat/completions", CHAT)
        end = await stack.server.next_frame(link.End)
    assert (end.id, end.error) == (2, None)
    assert not connector.stopped.is_set()


async def test_shutdown_drains_then_exits_and_cannot_be_undrained(stack: Stack) -> None:
    connector = await stack.start(drain_timeout=-1)
    await stack.connected()
    await _start_held_request(stack)
    connector.shutdown(by="test")
    assert not connector.undrain(by="test")
    stack.backend.release.set()
    assert await stack.exit_code() == 0


async def test_control_frames_from_the_server_drain_and_undrain_and_name_who_asked(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    connector = await stack.start(drain_timeout=-1)
    await stack.connected()
    await _start_held_request(stack)
    await stack.server.send(link.Control(action="drain", by="ops-alice"))
    async with asyncio.timeout(5):
        update = await stack.server.next_frame(link.StatusUpdate)
    assert update.status == "draining"
    assert connector.draining
    assert "ops-alice" in caplog.text
    await stack.server.send(link.Control(action="undrain", by="ops-bob"))
    async with asyncio.timeout(5):
        update = await stack.server.next_frame(link.StatusUpdate)
    assert update.status == "ready"
    await stack.server.send(link.Control(action="shutdown", by="ops-carol"))
    stack.backend.release.set()
    assert await stack.exit_code() == 0
    assert "ops-carol" in caplog.text
