"""Shared connector pieces: link status pushes, the connector's HTTP ports, build info."""

from __future__ import annotations

import asyncio
import socket
from typing import cast

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Gauge

from infero.common.buildinfo import BUILD
from infero.common.connector import HttpPorts, LinkStatus, StartupError
from infero.common.linkclient import Link, LinkClosed
from infero.common.metrics import register_build_info
from infero.protocol import link


class FakeLink:
    """Records the frames sent; `closed` makes `send` fail like a gone link."""

    def __init__(self) -> None:
        self.sent: asyncio.Queue[link.StatusUpdate] = asyncio.Queue()
        self.closed = False
        self.attempted = asyncio.Event()

    async def send(self, frame: link.StatusUpdate) -> None:
        self.attempted.set()
        if self.closed:
            raise LinkClosed("gone")
        self.sent.put_nowait(frame)


def status_and_gauge() -> tuple[LinkStatus, CollectorRegistry, list[int]]:
    registry = CollectorRegistry()
    gauge = Gauge("connected", "up", registry=registry)
    count = [0]

    def update() -> link.StatusUpdate:
        count[0] += 1
        return link.StatusUpdate(max_concurrency=count[0], status="ready")

    return LinkStatus(update, gauge), registry, count


async def test_a_change_while_the_link_is_up_is_pushed_at_once() -> None:
    status, registry, _ = status_and_gauge()
    current = FakeLink()
    status.up(cast(Link, current))
    assert status.connected.is_set()
    assert registry.get_sample_value("connected") == 1
    status.changed()
    async with asyncio.timeout(5):
        update = await current.sent.get()
    assert update.max_concurrency == 1
    await status.down()


async def test_changes_before_the_link_is_up_are_not_pushed_since_the_hello_carried_them() -> None:
    status, _, count = status_and_gauge()
    status.changed()
    current = FakeLink()
    status.up(cast(Link, current))
    status.changed()
    async with asyncio.timeout(5):
        await current.sent.get()
    assert count[0] == 1
    await status.down()


async def test_link_down_clears_connected_and_the_gauge_and_stops_pushing() -> None:
    status, registry, count = status_and_gauge()
    status.up(cast(Link, FakeLink()))
    await status.down()
    assert not status.connected.is_set()
    assert registry.get_sample_value("connected") == 0
    status.changed()
    assert count[0] == 0
    await status.down()  # a second down is harmless


async def test_pusher_ends_quietly_when_the_link_is_gone() -> None:
    status, _, count = status_and_gauge()
    current = FakeLink()
    current.closed = True
    status.up(cast(Link, current))
    status.changed()
    async with asyncio.timeout(5):
        await current.attempted.wait()
    await status.down()
    assert count[0] == 1


async def test_metrics_port_serves_the_registry_with_build_info() -> None:
    registry = CollectorRegistry()
    register_build_info(registry, "infero-test")
    ports = HttpPorts()
    try:
        url = await ports.serve_metrics(registry, 0)
        assert url.startswith("http://127.0.0.1:")
        assert url.endswith("/metrics")
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            text = await response.text()
    finally:
        await ports.close()
    assert response.status == 200
    expected = (
        f'infero_build_info{{component="infero-test",date="{BUILD.date}",'
        f'sha="{BUILD.sha}",version="{BUILD.version}"}} 1.0'
    )
    assert expected in text


async def test_a_busy_port_is_a_startup_error_naming_the_setting() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = HttpPorts()
        try:
            with pytest.raises(StartupError, match=f"^METRICS_PORT: cannot listen on .*:{port}"):
                await ports.serve(aiohttp.web.Application(), "127.0.0.1", port, "METRICS_PORT")
        finally:
            await ports.close()
