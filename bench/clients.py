"""`python -m bench.clients`: aiohttp vs httpx as the connector's backend client.

The connector's hot path is one HTTP call per relayed request to a local backend, read chunk
by chunk. This micro-benchmark makes the same calls with both libraries against the mock
backend (in its own process) and prints one JSON line of results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import TypedDict

import aiohttp
import httpx

from bench._loop import run
from bench.stats import Summary, summarize

Call = Callable[[bytes], Awaitable[int]]
"""Sends one request body and returns the number of body bytes read."""


class ClientFigures(TypedDict):
    """One library's figures."""

    latency_ms: Summary | None
    stream_latency_ms: Summary | None
    rps_c32: float
    stream_rps_c32: float


def _bodies(model: str, tokens: int) -> tuple[bytes, bytes]:
    base = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    plain = json.dumps({**base, "max_tokens": 16}).encode()
    stream = json.dumps({**base, "max_tokens": tokens, "stream": True}).encode()
    return plain, stream


async def _latencies(call: Call, body: bytes, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        await call(body)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


async def _rps(call: Call, body: bytes, concurrency: int, duration: float) -> float:
    done = 0
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await call(body)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - start)


async def _measure(
    plain: Call, streamed: Call, bodies: tuple[bytes, bytes], count: int, duration: float
) -> ClientFigures:
    await _latencies(plain, bodies[0], max(1, count // 10))  # warm the pool up
    return ClientFigures(
        latency_ms=summarize(await _latencies(plain, bodies[0], count)),
        stream_latency_ms=summarize(await _latencies(streamed, bodies[1], count)),
        rps_c32=await _rps(plain, bodies[0], 32, duration),
        stream_rps_c32=await _rps(streamed, bodies[1], 32, duration),
    )


async def _with_aiohttp(url: str, bodies: tuple[bytes, bytes], n: int, d: float) -> ClientFigures:
    headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
    ) as session:

        async def plain(body: bytes) -> int:
            async with session.post(url, data=body, headers=headers) as resp:
                return len(await resp.read())

        async def streamed(body: bytes) -> int:
            size = 0
            async with session.post(url, data=body, headers=headers) as resp:
                async for chunk in resp.content.iter_any():
                    size += len(chunk)
            return size

        return await _measure(plain, streamed, bodies, n, d)


async def _with_httpx(url: str, bodies: tuple[bytes, bytes], n: int, d: float) -> ClientFigures:
    headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(limits=limits, timeout=60, trust_env=False) as client:

        async def plain(body: bytes) -> int:
            resp = await client.post(url, content=body, headers=headers)
            return len(resp.content)

        async def streamed(body: bytes) -> int:
            size = 0
            async with client.stream("POST", url, content=body, headers=headers) as resp:
                async for chunk in resp.aiter_raw():
                    size += len(chunk)
            return size

        return await _measure(plain, streamed, bodies, n, d)


async def compare(
    base_url: str, model: str, *, count: int, duration: float, tokens: int
) -> dict[str, ClientFigures]:
    """Figures for both libraries, aiohttp first, against `{base_url}/chat/completions`."""
    url = base_url.rstrip("/") + "/chat/completions"
    bodies = _bodies(model, tokens)
    return {
        "aiohttp": await _with_aiohttp(url, bodies, count, duration),
        "httpx": await _with_httpx(url, bodies, count, duration),
    }


def main() -> None:
    """Parse the flags, compare, print one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench.clients", description=__doc__)
    parser.add_argument("--base-url", required=True, help="http://127.0.0.1:PORT/v1")
    parser.add_argument("--model", default="bench")
    parser.add_argument("--count", type=int, default=500, help="sequential calls per figure")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per c=32 figure")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per streamed answer")
    args = parser.parse_args()

    async def go() -> None:
        figures = await compare(
            args.base_url, args.model, count=args.count, duration=args.duration, tokens=args.tokens
        )
        print(json.dumps(figures), flush=True)

    run(go())


if __name__ == "__main__":
    main()
