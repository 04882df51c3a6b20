"""`python -m bench [--quick] [--instances 2]`: run the benchmark, print the tables, write JSON
and Markdown."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import fleet_views, instances, report, scenarios, views
from bench import profile as profiler
from bench._loop import run
from bench.fleet import INSTANCES, Fleet
from bench.presets import FULL, QUICK, SMOKE, Preset
from bench.procs import ROOT, StackError
from bench.stack import Stack

RESULTS = ROOT / "bench" / "results"


_T0 = time.monotonic()


def _progress(message: str) -> None:
    print(f"[bench {time.monotonic() - _T0:5.1f}s] {message}", file=sys.stderr, flush=True)


SCENARIOS = ("memory", "latency", "throughput", "embeddings", "slow", "clients")
"""What `--only` may name; a full report runs them all."""


async def measure(
    preset: Preset, work_dir: Path, *, connectors: int, only: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Start the stack, run the scenarios (all, or those in `only`), return the report."""
    wanted = only or frozenset(SCENARIOS)
    raw: scenarios.Raw = {}
    sections: list[report.Section] = []
    started = time.monotonic()
    _progress(f"starting backends, server, {connectors} connector(s), load generator")
    async with Stack(preset, work_dir, connectors=connectors) as stack:
        memory = report.Section("memory", "Server memory", ["value"])
        if "memory" in wanted:
            _progress(f"idle connectors: {preset.idle_connectors}")
            memory = await scenarios.idle_memory(stack, preset)
        if "latency" in wanted:
            _progress("latency at concurrency 1")
            sections.append(await scenarios.latency(stack, preset, raw))
        if "throughput" in wanted:
            _progress(f"throughput at concurrency {preset.concurrencies}")
            sections.append(await scenarios.throughput(stack, preset, raw))
            sections.append(scenarios.cpu(raw, preset))
        if "embeddings" in wanted:
            _progress(f"embeddings, {preset.embedding_inputs} inputs")
            sections.append(await scenarios.embeddings(stack, preset, raw))
        for delay, tokens in preset.slow_runs if "slow" in wanted else ():
            _progress(f"slow streams: {preset.slow_streams}, {delay * 1000:g} ms apart")
            sections.append(await scenarios.slow_streams(stack, preset, raw, memory, delay, tokens))
        sections.append(memory)
        sections.append(scenarios.overhead(raw))
        if "clients" in wanted:
            _progress("backend client: aiohttp vs httpx")
            sections.append(await scenarios.clients(stack, preset))
    sections = [s for s in sections if s.rows]
    sections.append(report.targets(sections))
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "preset": asdict(preset),
        "connectors": connectors,
        "seconds": round(time.monotonic() - started, 1),
        "machine": report.machine(),
        "sections": [asdict(s) for s in sections],
        "raw": raw,
    }


async def profile_only(preset: Preset, work_dir: Path, *, connectors: int) -> dict[str, Any]:
    """Start the stack and profile it under load (no direct/infero comparison)."""
    started = time.monotonic()
    _progress("profiling server and connector with py-spy")
    async with Stack(preset, work_dir, connectors=connectors) as stack:
        sections = await profiler.profile(
            stack, preset, max(2, round(3 * preset.throughput_seconds))
        )
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "preset": asdict(preset),
        "connectors": connectors,
        "seconds": round(time.monotonic() - started, 1),
        "machine": report.machine(),
        "sections": [asdict(s) for s in sections],
    }


async def views_only(preset: Preset, work_dir: Path) -> dict[str, Any]:
    """Start the stack and run the views scenario (idle links, viewers, churn, requests)."""
    started = time.monotonic()
    _progress(f"views: {preset.view_links} idle links, {preset.viewers} viewers")
    async with Stack(preset, work_dir, connectors=1) as stack:
        sections, raw = await views.measure_views(stack, preset)
    sections.append(report.targets(sections))
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "preset": asdict(preset),
        "connectors": 1,
        "seconds": round(time.monotonic() - started, 1),
        "machine": report.machine(),
        "sections": [asdict(s) for s in sections],
        "raw": raw,
    }


async def instances_only(preset: Preset, work_dir: Path) -> dict[str, Any]:
    """Start Redis, instances A and B, a connector on A and a forwarder in front of A; measure
    the cross-instance hop beside its floor."""
    started = time.monotonic()
    raw: scenarios.Raw = {}
    _progress("starting redis-server, instances A and B, a connector on A, load generator")
    async with Fleet(preset, work_dir) as fleet:
        _progress("latency at concurrency 1: A (same instance), floor (forwarder -> A), B (B -> A)")
        sections = await instances.latency(fleet, preset, raw)
        _progress(f"throughput at concurrency {preset.fleet_concurrency}: direct, A, B")
        sections.append(await instances.throughput(fleet, preset, raw))
        sections.append(instances.cpu(raw, preset))
        _progress("Redis commands: short and long answers through B, idle windows")
        sections.append(await instances.redis_commands(fleet, preset, raw))
    sections.append(report.targets(sections))
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "preset": asdict(preset),
        "instances": len(INSTANCES),
        "connectors": 1,
        "seconds": round(time.monotonic() - started, 1),
        "machine": report.machine(),
        "sections": [asdict(s) for s in sections],
        "raw": raw,
    }


def render(doc: dict[str, Any], *, markdown: bool) -> str:
    """All tables of a report document, as text or Markdown."""
    sections = [
        report.Section(**{**s, "rows": [report.Row(**r) for r in s["rows"]]})
        for s in doc["sections"]
    ]
    table = report.markdown_table if markdown else report.text_table
    m = doc["machine"]
    head = (
        f"{doc['preset']['name']} run, {doc['when']}, {doc['seconds']} s; {m['cpus']} x "
        f"{m['cpu_model']}, Python {m['python']}, aiohttp {m['aiohttp']}, uvloop {m['uvloop']}; "
        f"load average at the end {m['load_average'][0]}"
    )
    return "\n\n".join([head, *(table(s) for s in sections)]) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, run, print; exit 1 when the stack could not be measured."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="short run, under a minute")
    size.add_argument("--smoke", action="store_true", help="tiny numbers (the CI smoke test)")
    parser.add_argument("--connectors", type=int, default=1, help="connectors on the fast backend")
    parser.add_argument(
        "--profile", action="store_true", help="only profile server and connector (py-spy)"
    )
    parser.add_argument(
        "--views",
        action="store_true",
        help="only the views scenario: idle links, state viewers, churn, requests",
    )
    parser.add_argument(
        "--instances",
        type=int,
        choices=(1, 2),
        default=1,
        help="2: only the scale-out scenario (Redis, instances A and B, a connector on A); "
        "with --views: idle links on A, state viewers on B, churn",
    )
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated subset of {','.join(SCENARIOS)} (for experiments)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for results and logs")
    args = parser.parse_args(argv)
    only = frozenset(x for x in args.only.split(",") if x)
    if only - set(SCENARIOS):
        parser.error(f"--only takes {', '.join(SCENARIOS)}")
    preset = SMOKE if args.smoke else QUICK if args.quick else FULL
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    scenario = "-views" if args.views else ""
    if args.instances > 1:
        scenario += f"-instances{args.instances}"
    work_dir = args.out / f"{stamp}-{preset.name}{scenario}"
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        if args.profile:
            doc = run(profile_only(preset, work_dir, connectors=args.connectors))
        elif args.views and args.instances > 1:
            doc = run(fleet_views.measure(preset, work_dir))
        elif args.views:
            doc = run(views_only(preset, work_dir))
        elif args.instances > 1:
            doc = run(instances_only(preset, work_dir))
        else:
            doc = run(measure(preset, work_dir, connectors=args.connectors, only=only))
    except (StackError, scenarios.BenchError) as exc:
        print(f"bench: {exc} (logs in {work_dir})", file=sys.stderr)
        return 1
    (work_dir / "report.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
    (work_dir / "report.md").write_text(render(doc, markdown=True), encoding="utf-8")
    print(render(doc, markdown=False))
    print(f"results: {work_dir}/report.json, report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
