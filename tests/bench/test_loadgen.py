"""The load generator's cycle (`bench.loadgen.run_cycle`): targets taking turns request by
request, each on its own keep-alive connection, warm-up left out of the samples.

The cycle runs in the test's own loop against a real loopback aiohttp server that records
which path each request asked for and from which client port.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]

WAIT = 30.0
"""Seconds the whole cycle may take on a loaded machine."""
SSE = b'data: {"choices": []}\n\ndata: [DONE]\n\n'


@pytest.fixture
def loadgen(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """`bench.loadgen`: bench/ is a folder of the checkout, not an installed package."""
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("bench.loadgen")


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, list[tuple[str, int]]]]:
    """A server on a free port: (port, the (path, client port) of every request in order).
    `/json` answers a body, `/sse` a stream, `/busy` 503."""
    seen: list[tuple[str, int]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        assert request.transport is not None
        seen.append((request.path, request.transport.get_extra_info("peername")[1]))
        if request.path == "/busy":
            return web.Response(status=503, text="busy")
        if request.path == "/json":
            return web.json_response({"choices": []})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(SSE)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/{name}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        assert runner.addresses
        yield runner.addresses[0][1], seen
    finally:
        await runner.cleanup()


def _job(port: int, name: str, *, stream: bool) -> dict[str, Any]:
    return {
        "url": f"http://127.0.0.1:{port}/{name}",
        "body": "{}",
        "headers": {"Content-Type": "application/json"},
        "stream": stream,
        "concurrency": 1,
        "count": 0,
        "duration": 0.0,
        "warmup": 0,
        "gaps": False,
        "ramp": 0.0,
    }


async def test_targets_take_turns_each_on_its_own_connection_warmup_not_sampled(
    loadgen: ModuleType, server: tuple[int, list[tuple[str, int]]]
) -> None:
    """Request i goes to job i mod 3, warm-up included; each job reuses one connection of its
    own; each result holds only its job's measured requests (and errors)."""
    port, seen = server
    jobs = [
        _job(port, "json", stream=False),
        _job(port, "busy", stream=False),
        _job(port, "sse", stream=True),
    ]
    async with asyncio.timeout(WAIT):
        results = await loadgen.run_cycle({"jobs": jobs, "count": 5, "warmup": 2})
    assert [path for path, _ in seen] == ["/json", "/busy", "/sse"] * 7
    ports = {path: {p for q, p in seen if q == path} for path, _ in seen}
    assert all(len(used) == 1 for used in ports.values())  # one keep-alive connection each
    assert len(set.union(*ports.values())) == 3  # and not shared between jobs
    plain, busy, sse = results
    assert (plain["ok"], plain["errors"], len(plain["total_ms"])) == (5, 0, 5)
    assert (busy["ok"], busy["errors"], busy["total_ms"]) == (0, 5, [])
    assert busy["error_sample"].startswith("HTTP 503")
    assert (sse["ok"], sse["errors"], len(sse["ttfb_ms"]), len(sse["total_ms"])) == (5, 0, 5, 5)
    assert all(t <= total for t, total in zip(sse["ttfb_ms"], sse["total_ms"], strict=True))
    assert plain["elapsed_s"] > 0  # the time in its own requests
    assert sse["elapsed_s"] > 0
