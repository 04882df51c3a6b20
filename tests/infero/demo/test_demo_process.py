"""`infero demo` as a real process: the whole answer arrives, Ctrl-C lets a stream finish."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import aiohttp

from infero.demo.backend import BANNER

STARTUP = 30.0
"""Seconds for a fresh Python process to start the whole demo stack (busy 2-core machine)."""


async def test_ctrl_c_during_a_stream_lets_it_end_with_done_and_the_whole_banner() -> None:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-c", "from infero.cli import main; main()"),
        *("demo", "--port", "0", "--token-delay", "0.05"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    try:
        found: dict[str, str] = {}
        async with asyncio.timeout(STARTUP):
            while "API key" not in found:
                line = (await proc.stdout.readline()).decode()
                assert line, "infero demo ended before printing its instructions"
                name, _, value = line.strip().partition(":")
                if name in ("API", "API key"):
                    found[name] = value.strip()
        body = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
        headers = {"Authorization": f"Bearer {found['API key']}"}
        text, events = "", []
        async with (
            asyncio.timeout(30),
            aiohttp.ClientSession() as http,
            http.post(found["API"] + "/chat/completions", json=body, headers=headers) as resp,
        ):
            assert resp.status == 200
            async for raw in resp.content:
                line = raw.decode().strip()
                if not line.startswith("data: "):
                    continue
                events.append(line)
                if len(events) == 1:
                    proc.send_signal(signal.SIGINT)
                if line != "data: [DONE]":
                    for choice in json.loads(line[6:]).get("choices", []):
                        text += choice["delta"].get("content") or ""
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert events[-1] == "data: [DONE]"
    assert text == " ".join(BANNER.split())
    assert text.endswith("to get real answers.")
