"""`python -m bench --views`: what dashboards cost a big fleet (issue 13).

1,000 idle links, 20 `/api/state/stream` viewers, connectors joining and leaving, and steady
small chat requests, in phases that add one load at a time. Each phase reports the event-loop
lag seen by a `/healthz` probe, the relay's requests/s, the bytes each viewer receives per
second and the server's CPU use. With `INFERO_BENCH_STALLS=FILE PYTHONPATH=bench/stall_probe`
the server also records its event-loop stalls and GC pauses (`bench/stall_probe`), and a
table splits them by phase: on a shared machine the `/healthz` lag mixes the server's own
long stretches with the time the machine did not run it, the stall table tells them apart.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procs
from bench.presets import Preset
from bench.report import Row, Section, count, ms, ratio
from bench.scenarios import BenchError, Raw, chat_body, digest, merge
from bench.stack import API_KEY, FAST_MODEL, READY_TIMEOUT, Stack
from bench.stats import summarize

PROBE_PERIOD = 0.05
"""Seconds between two `/healthz` probes."""
CHURN_POOL = 20
"""Links of the churning connector process (each lives about POOL / rate seconds)."""
ROUNDS = 4
"""Requests with and without viewers alternate in this many rounds, so a neighbour's burst
of CPU use on the shared machine hits both alike."""
OPEN_TIMEOUT = 120.0
"""Seconds the viewers get to receive their first documents (1,000 rows, loaded machine)."""
STALLS_ENV = "INFERO_BENCH_STALLS"
"""Where the server's stall probe writes (see bench/stall_probe); unset: no stall table."""
STALLS_TIMEOUT = 30.0
"""Seconds to wait for the probe's next write of its file (every 5 s) after the last phase."""
BUSY = 0.8
"""A stall during which the server's main thread ran for this share of it was the server's
own work (a long synchronous stretch); otherwise the machine did not run the server."""


@dataclass(frozen=True, slots=True)
class Phase:
    """One measured window: which loads run during it."""

    key: str
    label: str
    viewers: bool
    traffic: bool
    churn: bool


PHASES = (
    Phase("idle", "idle links only", viewers=False, traffic=False, churn=False),
    Phase("traffic", "+ requests, no viewers", viewers=False, traffic=True, churn=False),
    Phase("viewers", "+ viewers, no requests", viewers=True, traffic=False, churn=False),
    Phase("viewers_traffic", "+ viewers + requests", viewers=True, traffic=True, churn=False),
    Phase("churn_alone", "+ requests + churn, no viewers", viewers=False, traffic=True, churn=True),
    Phase("churn", "+ viewers + requests + churn", viewers=True, traffic=True, churn=True),
)


async def _start_viewers(stack: Stack, name: str) -> procs.Child:
    child = await procs.start(
        name, procs.python("bench.viewers"), log_dir=stack.work_dir, stdin=True
    )
    await child.read_json(READY_TIMEOUT)
    return child


async def _ask(child: procs.Child, command: dict[str, Any], within: float) -> dict[str, Any]:
    await child.send_json(command)
    return await child.read_json(within)


async def _window(
    stack: Stack, p: Preset, phase: Phase, viewers: procs.Child, probe: procs.Child, seconds: float
) -> dict[str, Any]:
    """Run one measured window of `phase`; the viewers (if any) are open already."""
    assert stack.server is not None
    base = f"http://127.0.0.1:{stack.server_port}"
    window = {"seconds": seconds, "probe_url": "", "probe_period": PROBE_PERIOD}
    jobs: list[Any] = [_ask(probe, {"measure": {**window, "probe_url": base + "/healthz"}}, 300)]
    if phase.viewers:
        jobs.append(_ask(viewers, {"measure": window}, 300))
    if phase.traffic:
        body = chat_body(FAST_MODEL, 16, stream=False)
        job = stack.infero.job(
            "/chat/completions", body, stream=False,
            concurrency=p.view_concurrency, duration=seconds,
        )  # fmt: skip
        jobs.append(stack.run(job))
    before, started, wall = stack.server.cpu_seconds(), time.monotonic(), time.time()
    results = await asyncio.gather(*jobs)
    out: dict[str, Any] = {
        "cpu_s": stack.server.cpu_seconds() - before,
        "elapsed_s": time.monotonic() - started,
        "span": (wall, time.time()),
        "probe_ms": results[0]["probe_ms"],
    }
    if phase.viewers:
        seen = results[1]
        if seen["errors"]:
            raise BenchError(f"views {phase.key}: viewer failed ({seen['error_sample']})")
        out["viewer_bytes"] = sum(seen["bytes"]) / len(seen["bytes"])
        out["viewer_events"] = sum(seen["events"]) / len(seen["events"])
        out["viewer_s"] = seen["elapsed_s"]
    if phase.traffic:
        out["requests"] = results[-1]
    return out


def _figures(phase: Phase, windows: list[dict[str, Any]]) -> dict[str, Any]:
    """One phase's figures from its windows (merged, so rounds weigh by their length)."""
    elapsed = sum(w["elapsed_s"] for w in windows)
    cpu_s = sum(w["cpu_s"] for w in windows)
    out: dict[str, Any] = {
        "windows": len(windows),
        "spans": [w["span"] for w in windows],
        "server_cpu": cpu_s / elapsed,
        "probe_ms": summarize([x for w in windows for x in w["probe_ms"]]),
    }
    if phase.viewers:
        viewer_s = sum(w["viewer_s"] for w in windows)
        out["bytes_per_viewer_s"] = sum(w["viewer_bytes"] for w in windows) / viewer_s
        out["events_per_viewer_s"] = sum(w["viewer_events"] for w in windows) / viewer_s
    if phase.traffic:
        result = merge([w["requests"] for w in windows])
        if result["ok"] == 0:
            raise BenchError(f"views {phase.key}: no request succeeded ({result['error_sample']})")
        out["rps"] = result["ok"] / result["elapsed_s"]
        out["cpu_ms_per_request"] = 1000 * cpu_s / result["ok"]
        out["requests"] = digest(result)
    return out


async def _measure(stack: Stack, p: Preset, viewers: procs.Child, probe: procs.Child) -> Raw:
    """Every phase; requests with and without viewers alternate in `ROUNDS` rounds."""
    query = {
        "url": f"http://127.0.0.1:{stack.server_port}/api/state/stream",
        "headers": {"Authorization": f"Bearer {API_KEY}"},
        "viewers": p.viewers,
    }
    windows: dict[str, list[dict[str, Any]]] = {phase.key: [] for phase in PHASES}
    idle, traffic, watched, watched_traffic, churn_alone, churn = PHASES

    async def run(phase: Phase, seconds: float) -> None:
        windows[phase.key].append(await _window(stack, p, phase, viewers, probe, seconds))

    async def open_viewers() -> None:
        answer = await _ask(viewers, {"open": query}, OPEN_TIMEOUT)
        if answer["errors"]:
            raise BenchError(f"views: {answer['errors']} viewer(s) could not open the stream")

    await run(idle, p.view_seconds)
    for _ in range(ROUNDS):
        await run(traffic, p.view_seconds / ROUNDS)
        await open_viewers()
        await run(watched_traffic, p.view_seconds / ROUNDS)
        await _ask(viewers, {"close": True}, 60)
    await open_viewers()
    await run(watched, p.view_seconds)
    await _ask(viewers, {"close": True}, 60)
    async with stack.idle_links(CHURN_POOL, prefix="churn", churn_per_s=p.view_churn_per_s):
        await run(churn_alone, p.view_seconds)
        await open_viewers()
        await run(churn, p.view_seconds)
    await _ask(viewers, {"close": True}, 60)
    return {phase.key: _figures(phase, windows[phase.key]) for phase in PHASES}


def _kb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1000:,.1f}"


def _p(figures: dict[str, Any], q: str) -> float | None:
    probe = figures["probe_ms"]
    return None if probe is None else float(probe[q])


def sections(raw: Raw, p: Preset) -> list[Section]:
    """The phase table and the issue's targets."""
    table = Section(
        "views",
        f"{p.view_links} idle links, {p.viewers} viewers, {p.view_seconds:g} s per phase",
        [
            "/healthz p50 ms",
            "/healthz p99 ms",
            "req/s",
            "server CPU ms/request",
            "KB/s per viewer",
            "server CPU",
        ],
    )
    for phase in PHASES:
        f = raw[phase.key]
        cells = [
            ms(_p(f, "p50")),
            ms(_p(f, "p99")),
            count(f.get("rps")),
            ms(f.get("cpu_ms_per_request")),
            _kb(f.get("bytes_per_viewer_s")),
            ratio(f["server_cpu"]),
        ]
        table.rows.append(Row(phase.key, cells, label=phase.label))
    table.note = (
        f"requests: {p.view_concurrency} clients sending 16-token chat completions back to "
        f"back; churn: {p.view_churn_per_s:g} connectors join and {p.view_churn_per_s:g} leave "
        f"per second; requests with and without viewers alternate in {ROUNDS} rounds; server "
        "CPU in cores (1.00 = one core busy)"
    )
    targets = Section("views_targets", "Views against issue 13", ["measured"])
    churn, idle, viewers = raw["churn"], raw["idle"], raw["viewers"]
    lag = _p(churn, "p99")
    row = Row("lag_p99", [ms(lag)], label="/healthz p99 under churn, requests, viewers")
    row.target, row.measured, row.met = "< 20 ms", f"{ms(lag)} ms", lag is not None and lag < 20
    targets.rows.append(row)
    for key, label, figures, limit in (
        ("bytes_churn", "bytes per viewer per second, churn", churn, 50_000),
        ("bytes_idle", "bytes per viewer per second, nothing changes", viewers, 2_000),
    ):
        value = figures["bytes_per_viewer_s"]
        row = Row(key, [f"{_kb(value)} KB/s"], label=label)
        row.target, row.measured = f"< {limit / 1000:g} KB/s", f"{_kb(value)} KB/s"
        row.met = value < limit
        targets.rows.append(row)
    views_cpu = viewers["server_cpu"] - idle["server_cpu"]
    row = Row("cpu_views", [ratio(views_cpu)], label="server CPU of 20 idle viewers (cores)")
    row.target, row.measured, row.met = "< 0.10", ratio(views_cpu), views_cpu < 0.10
    targets.rows.append(row)
    share = raw["viewers_traffic"]["rps"] / raw["traffic"]["rps"]
    row = Row("relay_share", [ratio(share)], label="req/s with viewers / without")
    row.target, row.measured, row.met = ">= 0.90", ratio(share), share >= 0.90
    targets.rows.append(row)
    cost = raw["viewers_traffic"]["cpu_ms_per_request"] / raw["traffic"]["cpu_ms_per_request"]
    row = Row("relay_cpu", [ratio(cost)], label="server CPU per request with viewers / without")
    row.target, row.measured, row.met = "< 1.10", ratio(cost), cost < 1.10
    targets.rows.append(row)
    return [table, targets]


def stall_section(raw: Raw, doc: dict[str, Any]) -> Section:
    """The probe's stalls and GC pauses (`doc`, see bench/stall_probe) split by phase."""
    table = Section(
        "views_stalls",
        "Server event-loop stalls over 10 ms and cyclic-GC pauses, by phase",
        [
            "stalls",
            "server busy",
            "longest ms",
            "most CPU in one ms",
            "GC pauses",
            "GC CPU max ms",
        ],
    )
    for phase in PHASES:
        spans = raw[phase.key]["spans"]

        def inside(at: float, spans: list[tuple[float, float]] = spans) -> bool:
            return any(start <= at <= end for start, end in spans)

        stalls = [s for s in doc["stalls"] if inside(s["at"])]
        busy = [s for s in stalls if s["cpu_ms"] >= BUSY * s["lag_ms"]]
        pauses = [g for g in doc["gc"] if inside(g[0])]
        cells = [
            count(len(stalls)),
            count(len(busy)),
            ms(max((s["lag_ms"] for s in stalls), default=None)),
            ms(max((s["cpu_ms"] for s in stalls), default=None)),
            count(len(pauses)),
            ms(max((g[3] for g in pauses), default=None)),
        ]
        table.rows.append(Row(phase.key, cells, label=phase.label))
    table.note = (
        "a stall: the event loop ran a callback posted by the probe more than 10 ms late; "
        f"server busy: its main thread used at least {BUSY:.0%} of the stall in CPU (its own "
        "long stretch), otherwise the machine mostly did not run it; most CPU in one: the "
        "longest the main thread ran during a single stall (the server's own longest "
        "stretch, whatever the machine's load); GC pauses: cyclic collections of generation "
        "1 or 2, or of generation 0 using over 2 ms of CPU"
    )
    return table


def _written_since(path: Path, since: float) -> bool:
    try:
        return path.stat().st_mtime >= since
    except FileNotFoundError:
        return False


async def _read_stalls(path: Path, since: float) -> dict[str, Any]:
    """The probe's file once it was rewritten after `since` (the server is still running)."""
    deadline = time.monotonic() + STALLS_TIMEOUT
    while not _written_since(path, since):
        if time.monotonic() > deadline:
            raise BenchError(f"no stall probe output in {path} (PYTHONPATH=bench/stall_probe?)")
        await asyncio.sleep(0.1)  # the probe writes on a timer, there is nothing to wait on
    text = await asyncio.to_thread(path.read_text, encoding="utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


async def measure_views(stack: Stack, p: Preset) -> tuple[list[Section], Raw]:
    """Hold the idle links, open the viewers and the probe, run every phase."""
    viewers = await _start_viewers(stack, "viewers")
    try:
        probe = await _start_viewers(stack, "probe")
        try:
            async with stack.idle_links(p.view_links) as info:
                if info["connected"] != p.view_links:
                    raise BenchError(
                        f"{info['connected']} of {p.view_links} idle links welcomed: "
                        f"{info['reason']}"
                    )
                raw = await _measure(stack, p, viewers, probe)
        finally:
            await probe.stop()
    finally:
        await viewers.stop()
    out = sections(raw, p)
    stalls = os.environ.get(STALLS_ENV)
    if stalls:
        last = max(end for phase in PHASES for _, end in raw[phase.key]["spans"])
        raw["stalls"] = await _read_stalls(Path(stalls), last)
        out.append(stall_section(raw, raw["stalls"]))
    return out, raw
