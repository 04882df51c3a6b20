"""`python -m bench --instances 2`: what a second instance costs (docs/scale-out.md).

The same load goes to instance A, which holds the connector's link (same instance), and to
instance B, which relays it to A over the peer channel (cross instance). Measured: the added
latency of the hop at concurrency 1, beside its floor on this machine (A through a process
that only forwards bytes), A, floor and B taking turns request by request; throughput at
concurrency 32 (and the backend called directly), alternating in rounds as the
single-instance figures do; CPU per request of every process; and Redis commands per request
for short and long answers, net of an idle window.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from bench.fleet import Fleet
from bench.loadgen import Job, Result
from bench.presets import Preset
from bench.report import Row, Section, count, ms, ratio, signed_ms
from bench.scenarios import Raw, alternate, chat_body, interleave
from bench.stack import FAST_MODEL
from bench.stats import summarize

ADDED_P50_LIMIT = 0.5
"""Issue 10's target: the cross-instance hop adds at most this many ms (p50, concurrency 1)."""
SHORT_TOKENS = 16
SETTLE = 1.0
"""Seconds between a Redis-commands run and its idle window (membership's read period), so
the lease writes the load caused are not counted as idle."""
ROLES = ("a", "b", "connector", "redis", "backend", "loadgen", "floor")
"""The processes of the CPU table, in its column order (`Fleet.children` roles)."""
PATH = "/chat/completions"
CPU_RUNS = "_cpu"
"""Suffix of the concurrency-1 runs measuring CPU time, each target alone (`raw` keys)."""


def _pct(result: Result, metric: str, q: str) -> float | None:
    summary = summarize(result[metric])  # type: ignore[literal-required]
    return None if summary is None else float(summary[q])  # type: ignore[literal-required]


def _minus(x: float | None, y: float | None) -> float | None:
    return None if x is None or y is None else x - y


def _added_row(key: str, label: str, a: Result, b: Result, metric: str, target: bool) -> Row:
    a50, b50 = _pct(a, metric, "p50"), _pct(b, metric, "p50")
    a99, b99 = _pct(a, metric, "p99"), _pct(b, metric, "p99")
    added, added99 = _minus(b50, a50), _minus(b99, a99)
    row = Row(
        key, [ms(a50), ms(b50), signed_ms(added), ms(a99), ms(b99), signed_ms(added99)], label
    )
    if target:
        row.target = f"added p50 <= {ADDED_P50_LIMIT:g} ms"
        row.measured = f"{signed_ms(added)} ms"
        row.met = added is not None and added <= ADDED_P50_LIMIT
    return row


def _floor_row(key: str, label: str, a: Result, floor: Result, b: Result, metric: str) -> Row:
    a50, f50, b50 = (_pct(r, metric, "p50") for r in (a, floor, b))
    cells = [ms(a50), ms(f50), ms(b50), signed_ms(_minus(f50, a50)), signed_ms(_minus(b50, f50))]
    return Row(key, cells, label)


async def latency(fleet: Fleet, p: Preset, raw: Raw) -> list[Section]:
    """Same instance (A) against cross instance (B -> A), sequential requests; and the floor
    (A through the forwarder), in a table of its own. A, floor and B take turns request by
    request; then the same requests go to each alone, in rounds, for the CPU table."""
    section = Section(
        "fleet_latency",
        "Concurrency 1, A (same instance) vs B (B -> A) (ms)",
        ["A p50", "B p50", "added p50", "A p99", "B p99", "added p99"],
    )
    floor = Section(
        "fleet_floor",
        "Concurrency 1, the floor: A through a byte forwarder (ms)",
        ["A p50", "floor p50", "B p50", "floor added p50", "B over floor p50"],
    )
    a, b = fleet.instance("a"), fleet.instance("b")
    for stream in (False, True):
        key = f"{'stream' if stream else 'nonstream'}_{SHORT_TOKENS}"
        body = chat_body(FAST_MODEL, SHORT_TOKENS, stream=stream)
        targets = (a, fleet.floor, b)
        ra, rf, rb = await interleave(
            fleet, raw, key, targets, PATH, body,
            stream=stream, count=p.latency_requests, warmup=p.warmup,
        )  # fmt: skip
        await alternate(
            fleet, raw, key + CPU_RUNS, targets, PATH, body,
            stream=stream, count=p.latency_requests, warmup=p.warmup,
        )  # fmt: skip
        label = f"{'streaming' if stream else 'non-streaming'}, {SHORT_TOKENS} tokens"
        figures = [("total", "total_ms")]
        if stream:
            figures.insert(0, ("first_byte", "ttfb_ms"))
        for name, metric in figures:
            text = f"{label}: {name.replace('_', ' ')}"
            section.rows.append(_added_row(f"{key}_{name}", text, ra, rb, metric, True))
            floor.rows.append(_floor_row(f"{key}_{name}", text, ra, rf, rb, metric))
    floor.note = (
        "floor: the same requests to A through `bench.forwarder`, a process that copies bytes "
        "both ways and parses nothing, taking turns with A and B request by request. floor added "
        "= floor - A, what any extra process in the path costs on this machine; B over floor = "
        "B - floor, what the hop costs beyond it. Information beside the target, which stays "
        f"B - A <= {ADDED_P50_LIMIT:g} ms"
    )
    return [section, floor]


async def throughput(fleet: Fleet, p: Preset, raw: Raw) -> Section:
    """Requests/s at `fleet_concurrency`: the backend directly, through A, through B -> A."""
    c = p.fleet_concurrency
    section = Section(
        "fleet_throughput",
        f"Throughput, concurrency {c} ({p.throughput_tokens} tokens/answer)",
        ["direct req/s", "A req/s", "B req/s", "B/A", "B/direct", "B tok/s", "errors"],
    )
    targets = (fleet.direct, fleet.instance("a"), fleet.instance("b"))
    for stream in (True, False):
        key = f"{'stream' if stream else 'nonstream'}_c{c}"
        body = chat_body(FAST_MODEL, p.throughput_tokens, stream=stream)
        d, a, b = await alternate(
            fleet, raw, key, targets, PATH, body,
            stream=stream, concurrency=c, duration=p.throughput_seconds, warmup=2 * c,
        )  # fmt: skip
        d_rps, a_rps, b_rps = (r["ok"] / r["elapsed_s"] for r in (d, a, b))
        cells = [
            count(d_rps),
            count(a_rps),
            count(b_rps),
            ratio(b_rps / a_rps if a_rps else None),
            ratio(b_rps / d_rps if d_rps else None),
            count(b_rps * p.throughput_tokens),
            str(d["errors"] + a["errors"] + b["errors"]),
        ]
        section.rows.append(Row(key, cells, f"{'streaming' if stream else 'non-streaming'}"))
    return section


CPU_LABELS = {
    "nonstream_16": "non-streaming, concurrency 1",
    "stream_16": "streaming 16 tokens, concurrency 1",
    "stream_c": "streaming, concurrency",
    "nonstream_c": "non-streaming, concurrency",
}


def cpu(raw: Raw, p: Preset) -> Section:
    """CPU time of every process per request, through A, B and the floor, from the runs above
    (at concurrency 1, those of each target alone)."""
    columns = ["A", "B", "connector", "redis", "backend", "loadgen", "floor"]
    section = Section("fleet_cpu", "CPU per request (us)", columns)
    c = p.fleet_concurrency
    keys = [
        ("nonstream_16", "nonstream_16" + CPU_RUNS, CPU_LABELS["nonstream_16"]),
        ("stream_16", "stream_16" + CPU_RUNS, CPU_LABELS["stream_16"]),
        (f"nonstream_c{c}", f"nonstream_c{c}", f"{CPU_LABELS['nonstream_c']} {c}"),
        (f"stream_c{c}", f"stream_c{c}", f"{CPU_LABELS['stream_c']} {c}"),
    ]
    for key, runs, label in keys:
        for via, text in (("a", "via A"), ("b", "via B -> A"), ("floor", "via floor -> A")):
            run: dict[str, Any] | None = raw.get(f"{runs}.{via}")
            if run is None:
                continue
            cells = [count(1e6 * run["cpu_s"][role] / run["ok"]) for role in ROLES]
            section.rows.append(Row(f"{key}_{via}", cells, label=f"{label}, {text}"))
    section.note = (
        "user + system CPU time of each process during the measured rounds / answers (at "
        "concurrency 1, rounds of each target alone, after the latency's turns); A holds the "
        "connector's link, B relays to A, floor is the byte forwarder in front of A (measured "
        "at concurrency 1 only)"
    )
    return section


async def _commands_during(
    fleet: Fleet, job: Job | None, seconds: float = 0.0
) -> tuple[Counter[str], float, Result | None]:
    """Redis commands (by name), wall seconds and result of one load-generator job, or of an
    idle window of `seconds` when `job` is None."""
    before, started = await fleet.redis_commands(), time.monotonic()
    result = None
    if job is None:
        await asyncio.sleep(seconds)  # the idle window is the measurement itself
    else:
        result = await fleet.run(job)
    elapsed, after = time.monotonic() - started, await fleet.redis_commands()
    return after - before, elapsed, result


def fit(runs: list[tuple[int, float, int]]) -> tuple[float, float] | None:
    """(per request, per second) solving commands = a x requests + b x seconds for two runs
    of (requests, seconds, commands); None when the two runs cannot tell them apart."""
    (n1, t1, c1), (n2, t2, c2) = runs
    det = n1 * t2 - n2 * t1
    if abs(det) < 1e-9:
        return None
    return (c1 * t2 - c2 * t1) / det, (n1 * c2 - n2 * c1) / det


async def redis_commands(fleet: Fleet, p: Preset, raw: Raw) -> Section:
    """Redis commands while B relays short and long streamed answers, net of idle windows.

    Both runs last `fleet_redis_seconds`, so a cost per second (lease writes) is the same in
    both while a cost per request follows the number of requests and a cost per chunk the
    number of tokens: the fit over the two runs separates the first two, and a cost per chunk
    would show as a negative cost per request (the long run would cost more with fewer
    requests).
    """
    section = Section(
        "fleet_redis",
        f"Redis commands, streams through B at concurrency 1, {p.fleet_redis_seconds:g} s each",
        ["requests", "commands", "idle commands", "net per request", "net per second"],
    )
    runs: list[tuple[int, float, int]] = []
    totals: Counter[str] = Counter()
    for tokens in (SHORT_TOKENS, p.fleet_long_tokens):
        body = chat_body(FAST_MODEL, tokens, stream=True)
        job = fleet.instance("b").job(PATH, body, stream=True, duration=p.fleet_redis_seconds)
        await fleet.run({**job, "count": p.warmup, "duration": 0.0})
        used, seconds, result = await _commands_during(fleet, job)
        assert result is not None
        await asyncio.sleep(SETTLE)  # the load's trailing lease writes are not idle commands
        idle, _, _ = await _commands_during(fleet, None, seconds)
        n, load, quiet = result["ok"], used.total(), idle.total()
        net = load - quiet
        runs.append((n, seconds, net))
        totals.update(used)
        raw[f"redis_{tokens}"] = {
            "requests": n,
            "errors": result["errors"],
            "seconds": round(seconds, 3),
            "commands": dict(used),
            "idle_commands": dict(idle),
        }
        section.rows.append(
            Row(
                f"tokens_{tokens}",
                [
                    str(n),
                    str(load),
                    str(quiet),
                    f"{net / n:.3f}" if n else "-",
                    f"{net / seconds:.1f}",
                ],
                label=f"{tokens}-token answers",
            )
        )
    solved = fit(runs)
    row = Row("fit", ["", "", "", "-", "-"], label="fit: a x requests + b x seconds")
    row.target = "a constant per request, none per chunk"
    if solved is not None:
        per_request, per_second = solved
        row.cells[3], row.cells[4] = f"{per_request:.3f}", f"{per_second:.1f}"
        row.measured = f"{per_request:.3f} per request"
        row.met = per_request > -0.05
    section.rows.append(row)
    section.note = (
        "commands under load, both runs, all instances (INFO commandstats, which also counts "
        "the commands a Lua script runs): "
        + (", ".join(f"{name} {calls}" for name, calls in totals.most_common()) or "none")
    )
    return section
