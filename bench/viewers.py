"""`python -m bench.viewers`: dashboard viewers and a liveness probe, in their own process.

Reads one command per line on stdin (JSON, see `Command`): `open` streams of
`/api/state/stream` (answered once each has its first event), `measure` a window (the bytes
every viewer receives, and a probe of `probe_url` meanwhile: a `ViewResult`), `close` them.
Prints `{"ready": true}` first.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any, TypedDict

import aiohttp

from bench._loop import announce, run

FIRST_EVENT_TIMEOUT = 60.0
"""Seconds a viewer may wait for its first event (1,000 rows on a loaded machine)."""


class Command(TypedDict, total=False):
    """One line on stdin: `open` viewers, `measure` a window, or `close` them."""

    open: OpenViewers
    measure: Measure
    close: bool


class OpenViewers(TypedDict):
    """Streams to open; answered with `{"opened": n}` once each has its first event."""

    url: str
    """The stream URL (with its query)."""
    headers: dict[str, str]
    viewers: int


class Measure(TypedDict):
    """A window of `seconds`, probing `probe_url` (if any) every `probe_period` s."""

    seconds: float
    probe_url: str
    probe_period: float


class ViewResult(TypedDict):
    """Bytes and events per viewer during the window, and probe latencies (ms)."""

    bytes: list[int]
    events: list[int]
    elapsed_s: float
    probe_ms: list[float]
    errors: int
    error_sample: str


class _Viewer:
    def __init__(self) -> None:
        self.bytes = 0
        self.events = 0
        self.first = asyncio.Event()
        self.error = ""

    async def watch(self, session: aiohttp.ClientSession, job: OpenViewers) -> None:
        try:
            async with session.get(job["url"], headers=job["headers"]) as resp:
                if resp.status != 200:
                    self.error = f"HTTP {resp.status}"
                    return
                async for chunk in resp.content.iter_any():
                    self.bytes += len(chunk)
                    self.events += chunk.count(b"\n\n")
                    if b"data:" in chunk:
                        self.first.set()
            self.error = "stream ended"
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.first.set()


async def _probe(session: aiohttp.ClientSession, url: str, period: float, out: list[float]) -> None:
    clock = time.perf_counter
    while True:
        start = clock()
        async with session.get(url) as resp:
            await resp.read()
        out.append((clock() - start) * 1000)
        await asyncio.sleep(max(0.0, period - (clock() - start)))  # probe cadence, not a wait


class Views:
    """The open viewers of this process."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.viewers: list[_Viewer] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def open(self, job: OpenViewers) -> dict[str, Any]:
        """Open the streams and wait for every first event."""
        fresh = [_Viewer() for _ in range(job["viewers"])]
        self.viewers += fresh
        self.tasks += [asyncio.create_task(v.watch(self.session, job)) for v in fresh]
        async with asyncio.timeout(FIRST_EVENT_TIMEOUT):
            for viewer in fresh:
                await viewer.first.wait()
        return {"opened": len(fresh), "errors": sum(1 for v in fresh if v.error)}

    async def measure(self, job: Measure) -> ViewResult:
        """Count what every viewer receives during the window; probe meanwhile."""
        for viewer in self.viewers:
            viewer.bytes = viewer.events = 0
        probe_ms: list[float] = []
        probe = None
        if job["probe_url"]:
            probe = asyncio.create_task(
                _probe(self.session, job["probe_url"], job["probe_period"], probe_ms)
            )
        start = time.perf_counter()
        await asyncio.sleep(job["seconds"])  # the measured window's length
        elapsed = time.perf_counter() - start
        if probe is not None:
            probe.cancel()
            await asyncio.gather(probe, return_exceptions=True)
        errors = [v.error for v in self.viewers if v.error]
        return ViewResult(
            bytes=[v.bytes for v in self.viewers],
            events=[v.events for v in self.viewers],
            elapsed_s=elapsed,
            probe_ms=probe_ms,
            errors=len(errors),
            error_sample=errors[0] if errors else "",
        )

    async def close(self) -> dict[str, Any]:
        """Disconnect every viewer."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        closed = len(self.viewers)
        self.viewers, self.tasks = [], []
        return {"closed": closed}


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        views = Views(session)
        announce(json.dumps({"ready": True}))
        while line := await reader.readline():
            command: Command = json.loads(line)
            if "open" in command:
                announce(json.dumps(await views.open(command["open"])))
            elif "measure" in command:
                announce(json.dumps(dict(await views.measure(command["measure"]))))
            else:
                announce(json.dumps(await views.close()))
        await views.close()


def main() -> None:
    """Serve jobs until stdin closes."""
    run(_serve())


if __name__ == "__main__":
    main()
