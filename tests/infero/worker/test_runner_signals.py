"""Real signals reach the connector: the first drains, the second stops."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from infero.common.process import serve_with_signals
from infero.protocol import link
from support.linkfakes import CHAT, ServerFactory, Stack


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
