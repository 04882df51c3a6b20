"""`infero-mcp` as a real process: the seed's docker-style environment, then SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import aiohttp

from support.server import running_server

STARTUP = 20.0
"""Seconds for a fresh Python process to import infero and register (busy 2-core machine)."""


async def test_infero_mcp_process_serves_the_seed_example_and_exits_cleanly_on_sigterm(
    stateless_url: Any,
) -> None:
    async with running_server(client_key="secret", api_key="test123") as server:
        registry = server.embedded.relays
        env = {
            **os.environ,
            "SERVER_URL": server.url.replace("http", "ws", 1) + "/api/mcp/connect",
            "CLIENT_KEY": "secret",
            "CLIENT_ID": "my-mcp-server-123",
            "PROVIDER_URL": stateless_url,
        }
        code = "from infero.cli import mcp_main; mcp_main()"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, env=env, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            async with asyncio.timeout(STARTUP):
                await server.wait_for(
                    lambda: (
                        "my-mcp-server-123" in registry.relays
                        and registry.relays["my-mcp-server-123"].status == "ready"
                    )
                )
            call = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "favorite/color", "arguments": {}},
            }
            headers = {
                "Authorization": "Bearer test123",
                "Accept": "application/json, text/event-stream",
            }
            url = f"{server.url}/api/mcp/id/my-mcp-server-123"
            async with (
                aiohttp.ClientSession() as http,
                http.post(url, json=call, headers=headers) as r,
            ):
                answer = await r.json()
            assert answer["result"]["content"][0]["text"] == "blue with a hint of green"
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                assert await proc.wait() == 0
            async with asyncio.timeout(5):
                await server.wait_for(lambda: "my-mcp-server-123" not in registry.relays)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
