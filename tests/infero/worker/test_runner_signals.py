"""Real signals reach the connector: the first drains, the second stops; a connector told to
stop while reconnecting dials no more."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from infero.common.backoff import Backoff
from infero.common.process import serve_with_signals
from infero.protocol import link
from support.linkfakes import CHAT, ServerFactory, Stack

BACKOFF = 3600.0
"""The link backoff delay in these tests: a connector that waits it out fails them."""


async def test_sigterm_drains_and_a_second_sigterm_exits(aiohttp_server: ServerFactory) -> None:
    stack = Stack(aiohttp_server)
    await stack.start(drain_timeout=-1, runner=serve_with_signals)
    try:
        await stack.connected()
        stack.backend.hold = True
        await stack.server.request(1, "/chat/completions", CHAT)
        async with asyncio.timeout(5):
            await stack.backend.entered.wait()
            os.kill(os.getpid(), signal.SIGTERM)
            update: Any = await stack.server.next_frame(link.StatusUpdate)
        assert update.status == "draining"
        os.kill(os.getpid(), signal.SIGTERM)
        assert await stack.exit_code() == 0
    finally:
        await stack.close()


async def test_sigterm_during_the_backoff_wait_exits_without_dialing_again(
    aiohttp_server: ServerFactory,
) -> None:
    stack = Stack(aiohttp_server)
    stack.server.refuse_upgrades = 503
    backing_off = asyncio.Event()

    async def sleep(delay: float) -> None:
        if delay == BACKOFF:
            backing_off.set()
        await asyncio.sleep(delay)

    await stack.start(
        reconnect=True,
        runner=serve_with_signals,
        connector_args={"link_backoff": Backoff((BACKOFF,), BACKOFF), "sleep": sleep},
    )
    try:
        async with asyncio.timeout(5):
            await backing_off.wait()
        assert stack.server.upgrades == 1
        stack.server.refuse_upgrades = 0  # reachable again: a dial now would link
        os.kill(os.getpid(), signal.SIGTERM)
        assert await stack.exit_code() == 0
        assert stack.server.upgrades == 1
        assert stack.server.hellos.empty()
    finally:
        await stack.close()


async def test_sigterm_during_a_dial_abandons_it_before_the_hello(
    aiohttp_server: ServerFactory,
) -> None:
    stack = Stack(aiohttp_server)
    release = asyncio.Event()
    stack.server.hold_upgrades = release
    await stack.start(reconnect=True, runner=serve_with_signals)
    try:
        async with asyncio.timeout(5):
            await stack.server.dialed.wait()
        os.kill(os.getpid(), signal.SIGTERM)
        # Well before the dial's own 10 s timeout: the stop abandoned it.
        assert await stack.exit_code() == 0
        assert stack.server.upgrades == 1
        release.set()
        async with asyncio.timeout(5):
            await stack.server.answered.wait()
        assert stack.server.hellos.empty()
        assert stack.server.connections == 0
    finally:
        await stack.close()
