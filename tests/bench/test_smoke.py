"""The benchmark runs end to end through infero with tiny numbers, so it cannot rot.

No figure is judged here (a benchmark is not a test); only that every row is produced.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

EXPECTED_ROWS = {
    "latency": {
        "nonstream_16_total",
        "stream_16_first_byte",
        "stream_16_total",
        "stream_256_first_byte",
        "stream_256_total",
    },
    "throughput": {"nonstream_c1", "nonstream_c2", "stream_c1", "stream_c2"},
    "cpu": {"nonstream_c1", "nonstream_c2", "stream_c1", "stream_c2"},
    "embeddings": {"batch_total"},
    "slow_5ms": {
        "gap_p50",
        "gap_p99",
        "steady_gap_p50",
        "steady_gap_p99",
        "first_byte_p50",
        "first_byte_p99",
        "errors",
    },
    "memory": {"rss_0_idle", "rss_idle", "per_idle", "rss_slow_5ms", "connector_rss_slow_5ms"},
    "overhead": {"nonstream_16", "stream_16", "stream_256", "embeddings", "slow_5ms"},
    "clients": {"aiohttp", "httpx"},
    "targets": {
        "latency.nonstream_16_total",
        "latency.stream_16_first_byte",
        "latency.stream_256_first_byte",
        "slow_5ms.steady_gap_p99",
        "memory.rss_idle",
    },
}


@dataclass
class BenchRun:
    """A finished `python -m bench` run and the one report it wrote."""

    stdout: str
    report: Path
    doc: dict[str, Any]

    @property
    def rows(self) -> dict[str, set[str]]:
        """The keys of each section's rows."""
        return {s["key"]: {r["key"] for r in s["rows"]} for s in self.doc["sections"]}


def run_bench(
    out: Path, *argv: str, folder: str = "*", timeout: float, env: dict[str, str] | None = None
) -> BenchRun:
    """Run `python -m bench ARGV --smoke --out OUT`; it must succeed and write one report into
    a folder of OUT named like `folder`."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", *argv, "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    (report,) = out.glob(f"{folder}/report.json")
    return BenchRun(done.stdout, report, json.loads(report.read_text(encoding="utf-8")))


def test_smoke_run_through_infero_reports_every_row_and_the_overhead_header(
    tmp_path: Path,
) -> None:
    """Backends, server, connectors, idle links and load generator all start, work and stop."""
    run = run_bench(tmp_path, timeout=120)
    assert run.rows == EXPECTED_ROWS
    overhead = next(s for s in run.doc["sections"] if s["key"] == "overhead")
    assert all(r["cells"][0] != "header missing" for r in overhead["rows"])
    assert all(result["errors"] == 0 for result in run.doc["raw"].values())
    assert "Targets" in run.stdout
    assert (run.report.parent / "report.md").read_text(encoding="utf-8").startswith("smoke run")


def test_views_smoke_run_reports_every_phase_and_target(tmp_path: Path) -> None:
    """Idle links, viewers, probe, churn and requests all start, work and stop; the server's
    stall probe (bench/stall_probe) records and the stall table has every phase."""
    stalls = tmp_path / "stalls.json"
    env = {
        **os.environ,
        "INFERO_BENCH_STALLS": str(stalls),
        "PYTHONPATH": str(ROOT / "bench" / "stall_probe"),
    }
    run = run_bench(tmp_path / "out", "--views", timeout=180, env=env)
    doc, rows = run.doc, run.rows
    assert rows["views_stalls"] == rows["views"]
    assert set(doc["raw"]["stalls"]) == {"stalls", "gc", "frozen"}
    assert doc["raw"]["stalls"]["frozen"] > 0  # the server's own process: it froze its heap
    assert rows["views"] == {
        "idle",
        "traffic",
        "viewers",
        "viewers_traffic",
        "churn_alone",
        "churn",
    }
    assert rows["views_targets"] == {
        "lag_p99",
        "bytes_churn",
        "bytes_idle",
        "cpu_views",
        "relay_share",
        "relay_cpu",
    }
    assert doc["raw"]["churn"]["requests"]["errors"] == 0


def test_instances_smoke_run_relays_through_b_and_counts_redis_commands(tmp_path: Path) -> None:
    """Redis, instances A and B, a connector on A: every figure of `--instances 2` is produced."""
    run = run_bench(tmp_path, "--instances", "2", folder="*-instances2", timeout=180)
    doc = run.doc
    assert run.rows == {
        "fleet_latency": {"nonstream_16_total", "stream_16_first_byte", "stream_16_total"},
        "fleet_floor": {"nonstream_16_total", "stream_16_first_byte", "stream_16_total"},
        "fleet_throughput": {"stream_c2", "nonstream_c2"},
        "fleet_cpu": {
            f"{key}_{via}"
            for key in ("nonstream_16", "stream_16", "nonstream_c2", "stream_c2")
            for via in ("a", "b")
        }
        | {f"{key}_floor" for key in ("nonstream_16", "stream_16")},
        "fleet_redis": {"tokens_16", "tokens_64", "fit"},
        "targets": {
            "fleet_latency.nonstream_16_total",
            "fleet_latency.stream_16_first_byte",
            "fleet_latency.stream_16_total",
            "fleet_redis.fit",
        },
    }
    raw = doc["raw"]
    failed = {k: r.get("error_sample", r["errors"]) for k, r in raw.items() if r["errors"]}
    assert not failed  # which run, and one of its errors
    # B holds no link: each of its answers was relayed to A over the peer channel.
    assert raw["stream_16.b"]["ok"] == doc["preset"]["latency_requests"]
    # The floor's requests reached A through the forwarder, taking turns with A and B.
    assert raw["stream_16.floor"]["ok"] == doc["preset"]["latency_requests"]
    assert raw["redis_16"]["requests"] > 0
    assert raw["redis_64"]["requests"] > 0


def test_fleet_views_smoke_run_watches_b_while_links_churn_on_a(tmp_path: Path) -> None:
    """Redis, instances A and B, idle links on A, viewers on B: every phase is measured."""
    run = run_bench(
        tmp_path, "--views", "--instances", "2", folder="*-views-instances2", timeout=180
    )
    assert run.rows == {"fleet_views": {"idle", "viewers", "churn_alone", "churn"}}
    assert run.doc["raw"]["churn"]["redis_per_s"]["commands"] > 0
