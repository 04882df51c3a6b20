"""`python -m bench.loadgen`: the load generator, in its own process.

Reads one job per line on stdin (JSON, see `Job`, or `Cycle` for several targets taking turns),
runs it with an aiohttp client and writes one result per line on stdout (JSON, see `Result`; a
cycle's is `{"results": [...]}`, one per job). Prints `{"ready": true}` first.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, TypedDict

import aiohttp

from bench._loop import announce, run

OVERHEAD_HEADER = "X-Infero-Overhead-Ms"
_DONE = b"data: [DONE]"


class Job(TypedDict):
    """What to send, how often and how many at once."""

    url: str
    body: str
    headers: dict[str, str]
    stream: bool
    concurrency: int
    count: int
    """Requests to measure; 0 means run for `duration` seconds instead."""
    duration: float
    warmup: int
    """Requests sent (and not measured) before the measured ones."""
    gaps: bool
    """Record the time between consecutive body chunks of streamed answers."""
    ramp: float
    """Seconds over which the workers' starts are spread evenly (0: all at once)."""


class Cycle(TypedDict):
    """Sequential requests taking turns between jobs: request i goes to `jobs[i % n]`.

    Every job is sampled at the same moments, so a drift of the machine (a neighbour's burst,
    CPU frequency, idle states) weighs on all alike instead of on the one whose round it hit.
    Each job's url, body, headers and stream apply; its concurrency (1), count, duration,
    warmup, gaps and ramp do not. Each job has its own keep-alive connection.
    """

    jobs: list[Job]
    count: int
    """Measured requests per job."""
    warmup: int
    """Unmeasured requests per job before the measured ones, taking turns the same way."""


class Result(TypedDict):
    """Counts and timing samples (milliseconds) of one job."""

    ok: int
    errors: int
    error_sample: str
    elapsed_s: float
    bytes: int
    ttfb_ms: list[float]
    """Time to the first body chunk holding `data:` (streams) or to the headers."""
    total_ms: list[float]
    gap_ms: list[float]
    """Time between consecutive body chunks of streamed answers (when asked)."""
    steady_gap_ms: list[float]
    """The gaps that fell while every stream of the job was open (after the last first
    chunk, before the first end)."""
    overhead_ms: list[float]
    """The `X-Infero-Overhead-Ms` header of each answer that had one."""


@dataclass
class _Record:
    measure: bool
    ok: int = 0
    errors: int = 0
    error_sample: str = ""
    bytes: int = 0
    ttfb: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    gaps: list[tuple[float, float]] = field(default_factory=list)
    """(end, length) of each gap between chunks."""
    firsts: list[float] = field(default_factory=list)
    lasts: list[float] = field(default_factory=list)
    overhead: list[float] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.errors += 1
        if not self.error_sample:
            self.error_sample = message[:300]


async def _one(session: aiohttp.ClientSession, job: Job, body: bytes, rec: _Record) -> None:
    clock = time.perf_counter
    start = clock()
    try:
        async with session.post(job["url"], data=body, headers=job["headers"]) as resp:
            overhead = resp.headers.get(OVERHEAD_HEADER)
            if job["stream"]:
                first = last = 0.0
                tail = b""
                size = 0
                async for chunk in resp.content.iter_any():
                    now = clock()
                    size += len(chunk)
                    if not first:
                        if b"data:" in chunk:
                            first = now
                    elif job["gaps"]:
                        rec.gaps.append((now, now - last))
                    last = now
                    tail = (tail + chunk)[-64:]
                ok = resp.status == 200 and _DONE in tail
                ttfb = first - start
            else:
                ttfb = clock() - start
                data = await resp.read()
                size = len(data)
                ok = resp.status == 200 and size > 0
                tail = data[-200:]
            end = clock()
    except (aiohttp.ClientError, TimeoutError) as exc:
        rec.fail(f"{type(exc).__name__}: {exc}")
        return
    if not ok:
        rec.fail(f"HTTP {resp.status}: {tail.decode(errors='replace')}")
        return
    rec.ok += 1
    rec.bytes += size
    if job["stream"] and job["gaps"]:
        rec.firsts.append(first)
        rec.lasts.append(last)
    if rec.measure:
        rec.ttfb.append(ttfb * 1000)
        rec.total.append((end - start) * 1000)
        if overhead is not None:
            rec.overhead.append(float(overhead))


def _steady(rec: _Record) -> list[float]:
    if not rec.firsts:
        return []
    start, stop = max(rec.firsts), min(rec.lasts)
    return [g * 1000 for end, g in rec.gaps if end - g >= start and end <= stop]


async def _drive(session: aiohttp.ClientSession, job: Job, count: int, rec: _Record) -> float:
    body = job["body"].encode()
    remaining = count
    deadline = time.perf_counter() + job["duration"]

    async def worker(k: int) -> None:
        nonlocal remaining
        if job["ramp"]:
            await asyncio.sleep(job["ramp"] * k / job["concurrency"])  # load shape, not a wait
        while (remaining > 0) if count else (time.perf_counter() < deadline):
            remaining -= 1
            await _one(session, job, body, rec)

    start = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(job["concurrency"])))
    return time.perf_counter() - start


def session(limit: int = 0) -> aiohttp.ClientSession:
    """A client with one pool of keep-alive connections, at most `limit` open (0: no limit);
    the generator's own, without a limit, is shared by every `Job`."""
    connector = aiohttp.TCPConnector(limit=limit, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)


async def run_job(client: aiohttp.ClientSession, job: Job) -> Result:
    """Warm up, then measure; never raises for a failed request (it is counted)."""
    if job["warmup"]:
        warm = Job(**{**job, "gaps": False, "ramp": 0.0})
        await _drive(client, warm, job["warmup"], _Record(measure=False))
    rec = _Record(measure=True)
    return _result(rec, await _drive(client, job, job["count"], rec))


async def run_cycle(cycle: Cycle) -> list[Result]:
    """Warm up, then measure, request i to job i mod n, one at a time; one result per job,
    whose `elapsed_s` is the time spent in its own requests."""
    jobs = cycle["jobs"]
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(session(limit=1)) for _ in jobs]
        await _take_turns(clients, jobs, cycle["warmup"], measure=False)
        measured = await _take_turns(clients, jobs, cycle["count"], measure=True)
    return [_result(rec, spent) for rec, spent in measured]


async def _take_turns(
    clients: list[aiohttp.ClientSession], jobs: list[Job], count: int, *, measure: bool
) -> list[tuple[_Record, float]]:
    """`count` requests per job, request i to job i mod n; each job's record and seconds."""
    bodies = [job["body"].encode() for job in jobs]
    recs = [_Record(measure=measure) for _ in jobs]
    spent = [0.0] * len(jobs)
    clock = time.perf_counter
    for i in range(count * len(jobs)):
        k = i % len(jobs)
        start = clock()
        await _one(clients[k], jobs[k], bodies[k], recs[k])
        spent[k] += clock() - start
    return list(zip(recs, spent, strict=True))


def _result(rec: _Record, elapsed: float) -> Result:
    return Result(
        ok=rec.ok,
        errors=rec.errors,
        error_sample=rec.error_sample,
        elapsed_s=elapsed,
        bytes=rec.bytes,
        ttfb_ms=rec.ttfb,
        total_ms=rec.total,
        gap_ms=[g * 1000 for _, g in rec.gaps],
        steady_gap_ms=_steady(rec),
        overhead_ms=rec.overhead,
    )


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=256 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with session() as client:
        announce(json.dumps({"ready": True}))
        while line := await reader.readline():
            job: Any = json.loads(line)
            if "jobs" in job:
                reply: dict[str, Any] = {"results": await run_cycle(job)}
            else:
                reply = dict(await run_job(client, job))
            announce(json.dumps(reply))


def main() -> None:
    """Serve jobs until stdin closes."""
    run(_serve())


if __name__ == "__main__":
    main()
