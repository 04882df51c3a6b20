"""`python -m bench --views --instances 2`: state views of a fleet of two instances.

Redis, instances A and B (`bench.fleet`), 1,000 idle links on A and 20 `/api/state/stream`
viewers on B, in phases that add one load at a time: nothing changes, viewers on B, connectors
joining and leaving A without viewers, and with them. Each phase reports B's CPU (and A's and
Redis'), the `/healthz` p99 on B, the bytes each viewer receives per second, and Redis'
commands and network bytes per second (docs/scale-out.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from redis import asyncio as aioredis

from bench import procs, report
from bench.fleet import INSTANCES, Fleet
from bench.presets import Preset
from bench.report import Row, Section, ms
from bench.scenarios import BenchError, Raw
from bench.stack import API_KEY, CLIENT_KEY, READY_TIMEOUT
from bench.stats import summarize

PROBE_PERIOD = 0.05
"""Seconds between two `/healthz` probes of B."""
CHURN_POOL = 20
"""Links of the churning process on A (each lives about POOL / rate seconds)."""
OPEN_TIMEOUT = 120.0
"""Seconds the viewers get to receive their first documents (1,000 rows, loaded machine)."""
SEEN_TIMEOUT = 120.0
"""Seconds B gets to list every idle link of A."""


@dataclass(frozen=True, slots=True)
class Phase:
    """One measured window: which loads run during it."""

    key: str
    label: str
    viewers: bool
    churn: bool


PHASES = (
    Phase("idle", "idle links on A only", viewers=False, churn=False),
    Phase("viewers", "+ viewers on B, nothing changes", viewers=True, churn=False),
    Phase("churn_alone", "+ churn on A, no viewers", viewers=False, churn=True),
    Phase("churn", "+ churn on A + viewers on B", viewers=True, churn=True),
)


async def _ask(child: procs.Child, command: dict[str, Any], within: float) -> dict[str, Any]:
    await child.send_json(command)
    return await child.read_json(within)


@asynccontextmanager
async def _links(
    fleet: Fleet, count: int, prefix: str, churn_per_s: float = 0.0
) -> AsyncIterator[dict[str, Any]]:
    """`count` idle links on A (churning `churn_per_s` a second) for the block."""
    child = await procs.start(
        f"{prefix}-links",
        procs.python(
            "bench.idle_links",
            f"--url=ws://127.0.0.1:{fleet.ports[INSTANCES[0]]}/api/llm/connect",
            f"--client-key={CLIENT_KEY}",
            f"--count={count}",
            f"--prefix={prefix}",
            f"--churn-per-s={churn_per_s}",
        ),
        log_dir=fleet.work_dir,
    )
    try:
        yield await child.read_json(READY_TIMEOUT + count * 0.05)
    finally:
        await child.stop()


async def _wait_listed(url: str, connected: int) -> None:
    """Until the instance at `url` counts `connected` connectors (summary only)."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    deadline = time.monotonic() + SEEN_TIMEOUT
    seen = -1
    async with aiohttp.ClientSession(headers=headers) as http:
        while time.monotonic() < deadline:
            async with http.get(url + "/api/state?parts=summary") as resp:
                seen = (await resp.json())["workers_summary"]["connected"]
            if seen >= connected:
                return
            await asyncio.sleep(0.5)  # polling the instance with a bound: no event to wait on
    raise BenchError(f"fleet views: B lists {seen} of {connected} connectors")


async def _redis_meters(client: Any) -> dict[str, int]:
    """Redis' totals so far: commands, network bytes in and out, and calls per command."""
    stats = await client.info("stats")
    calls = await client.info("commandstats")
    return {
        "commands": int(stats["total_commands_processed"]),
        "in": int(stats["total_net_input_bytes"]),
        "out": int(stats["total_net_output_bytes"]),
        **{k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in calls.items()},
    }


async def _window(
    fleet: Fleet,
    redis: Any,
    phase: Phase,
    viewers: procs.Child,
    probe: procs.Child,
    seconds: float,
) -> dict[str, Any]:
    """One measured window of `phase` (the viewers, if any, are open already)."""
    b = f"http://127.0.0.1:{fleet.ports[INSTANCES[1]]}"
    window = {"seconds": seconds, "probe_url": "", "probe_period": PROBE_PERIOD}
    jobs = [_ask(probe, {"measure": {**window, "probe_url": b + "/healthz"}}, 300)]
    if phase.viewers:
        jobs.append(_ask(viewers, {"measure": window}, 300))
    cpu, meters, started = fleet.cpu_seconds(), await _redis_meters(redis), time.monotonic()
    results = await asyncio.gather(*jobs)
    elapsed = time.monotonic() - started
    after, cpu_after = await _redis_meters(redis), fleet.cpu_seconds()
    out: dict[str, Any] = {
        "cpu": {role: (cpu_after[role] - cpu[role]) / elapsed for role in ("a", "b", "redis")},
        "probe_ms": summarize(results[0]["probe_ms"]),
        "redis_per_s": {k: (after[k] - meters.get(k, 0)) / elapsed for k in after},
    }
    if phase.viewers:
        seen = results[1]
        if seen["errors"]:
            raise BenchError(f"fleet views {phase.key}: viewer failed ({seen['error_sample']})")
        out["bytes_per_viewer_s"] = sum(seen["bytes"]) / len(seen["bytes"]) / seen["elapsed_s"]
    return out


async def _measure(fleet: Fleet, p: Preset, viewers: procs.Child, probe: procs.Child) -> Raw:
    b = f"http://127.0.0.1:{fleet.ports[INSTANCES[1]]}"
    query = {
        "url": b + "/api/state/stream",
        "headers": {"Authorization": f"Bearer {API_KEY}"},
        "viewers": p.viewers,
    }
    raw: Raw = {}
    idle, watched, churn_alone, churn = PHASES
    redis = aioredis.Redis(host="127.0.0.1", port=fleet.redis_port)
    try:

        async def open_viewers() -> None:
            answer = await _ask(viewers, {"open": query}, OPEN_TIMEOUT)
            if answer["errors"]:
                raise BenchError(f"fleet views: {answer['errors']} viewer(s) could not open")

        raw[idle.key] = await _window(fleet, redis, idle, viewers, probe, p.view_seconds)
        await open_viewers()
        raw[watched.key] = await _window(fleet, redis, watched, viewers, probe, p.view_seconds)
        await _ask(viewers, {"close": True}, 60)
        async with _links(fleet, CHURN_POOL, "churn", p.view_churn_per_s):
            raw[churn_alone.key] = await _window(
                fleet, redis, churn_alone, viewers, probe, p.view_seconds
            )
            await open_viewers()
            raw[churn.key] = await _window(fleet, redis, churn, viewers, probe, p.view_seconds)
        await _ask(viewers, {"close": True}, 60)
    finally:
        await redis.aclose()
    return raw


def _pct(cores: float) -> str:
    return f"{cores * 100:.1f}"


def sections(raw: Raw, p: Preset) -> list[Section]:
    """The phase table."""
    table = Section(
        "fleet_views",
        f"{p.view_links} idle links on A, {p.viewers} viewers on B, {p.view_seconds:g} s per phase",
        [
            "B CPU %",
            "A CPU %",
            "Redis CPU %",
            "B /healthz p99 ms",
            "KB/s per viewer",
            "Redis commands/s",
            "Redis KB/s in",
            "Redis KB/s out",
        ],
    )
    for phase in PHASES:
        f = raw[phase.key]
        bytes_s = f.get("bytes_per_viewer_s")
        probe = f["probe_ms"]
        redis = f["redis_per_s"]
        table.rows.append(
            Row(
                phase.key,
                [
                    _pct(f["cpu"]["b"]),
                    _pct(f["cpu"]["a"]),
                    _pct(f["cpu"]["redis"]),
                    ms(None if probe is None else float(probe["p99"])),
                    "-" if bytes_s is None else f"{bytes_s / 1000:,.1f}",
                    f"{redis['commands']:,.0f}",
                    f"{redis['in'] / 1000:,.1f}",
                    f"{redis['out'] / 1000:,.1f}",
                ],
                label=phase.label,
            )
        )
    views_cpu = raw["churn"]["cpu"]["b"] - raw["churn_alone"]["cpu"]["b"]
    busiest = sorted(
        ((rate, name) for name, rate in raw["churn"]["redis_per_s"].items()
         if name not in ("commands", "in", "out", "info")),
        reverse=True,
    )[:4]  # fmt: skip
    table.note = (
        f"churn: {p.view_churn_per_s:g} connectors join and {p.view_churn_per_s:g} leave A per "
        f"second; CPU in % of one core; B's CPU for the views under churn (churn minus churn "
        f"without viewers): {_pct(views_cpu)} %; Redis bytes include two INFO replies per "
        "window; busiest Redis commands under churn: "
        + ", ".join(f"{name} {rate:,.0f}/s" for rate, name in busiest)
    )
    return [table]


async def measure(preset: Preset, work_dir: Path) -> dict[str, Any]:
    """Start Redis and instances A and B, hold the links, open viewers and probe, run phases."""
    started = time.monotonic()
    async with Fleet(preset, work_dir) as fleet:
        viewers = await procs.start(
            "viewers", procs.python("bench.viewers"), log_dir=work_dir, stdin=True
        )
        probe = await procs.start(
            "probe", procs.python("bench.viewers"), log_dir=work_dir, stdin=True
        )
        try:
            await viewers.read_json(READY_TIMEOUT)
            await probe.read_json(READY_TIMEOUT)
            async with _links(fleet, preset.view_links, "idle") as info:
                if info["connected"] != preset.view_links:
                    raise BenchError(
                        f"{info['connected']} of {preset.view_links} idle links welcomed: "
                        f"{info['reason']}"
                    )
                b = f"http://127.0.0.1:{fleet.ports[INSTANCES[1]]}"
                await _wait_listed(b, preset.view_links + 1)  # and the fleet's connector
                raw = await _measure(fleet, preset, viewers, probe)
        finally:
            await probe.stop()
            await viewers.stop()
    found = sections(raw, preset)
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "preset": asdict(preset),
        "instances": len(INSTANCES),
        "connectors": preset.view_links,
        "seconds": round(time.monotonic() - started, 1),
        "machine": report.machine(),
        "sections": [asdict(s) for s in found],
        "raw": raw,
    }
