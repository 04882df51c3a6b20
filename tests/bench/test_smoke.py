"""The benchmark runs end to end through infero with tiny numbers, so it cannot rot.

No figure is judged here (a benchmark is not a test); only that every row is produced.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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


def test_smoke_run_through_infero_reports_every_row_and_the_overhead_header(
    tmp_path: Path,
) -> None:
    """Backends, server, connectors, idle links and load generator all start, work and stop."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    (report,) = tmp_path.glob("*/report.json")
    doc = json.loads(report.read_text(encoding="utf-8"))
    rows = {s["key"]: {r["key"] for r in s["rows"]} for s in doc["sections"]}
    assert rows == EXPECTED_ROWS
    overhead = next(s for s in doc["sections"] if s["key"] == "overhead")
    assert all(r["cells"][0] != "header missing" for r in overhead["rows"])
    assert all(result["errors"] == 0 for result in doc["raw"].values())
    assert "Targets" in done.stdout
    assert (report.parent / "report.md").read_text(encoding="utf-8").startswith("smoke run")


def test_views_smoke_run_reports_every_phase_and_target(tmp_path: Path) -> None:
    """Idle links, viewers, probe, churn and requests all start, work and stop; the server's
    stall probe (bench/stall_probe) records and the stall table has every phase."""
    stalls = tmp_path / "stalls.json"
    env = {
        **os.environ,
        "INFERO_BENCH_STALLS": str(stalls),
        "PYTHONPATH": str(ROOT / "bench" / "stall_probe"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--views", "--smoke", "--out", str(tmp_path / "out")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    (report,) = tmp_path.glob("out/*/report.json")
    doc = json.loads(report.read_text(encoding="utf-8"))
    rows = {s["key"]: {r["key"] for r in s["rows"]} for s in doc["sections"]}
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
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--instances", "2", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    (report,) = tmp_path.glob("*-instances2/report.json")
    doc = json.loads(report.read_text(encoding="utf-8"))
    rows = {s["key"]: {r["key"] for r in s["rows"]} for s in doc["sections"]}
    assert rows == {
        "fleet_latency": {"nonstream_16_total", "stream_16_first_byte", "stream_16_total"},
        "fleet_throughput": {"stream_c2", "nonstream_c2"},
        "fleet_cpu": {
            f"{key}_{via}"
            for key in ("nonstream_16", "stream_16", "nonstream_c2", "stream_c2")
            for via in ("a", "b")
        },
        "fleet_redis": {"tokens_16", "tokens_64", "fit"},
        "targets": {
            "fleet_latency.nonstream_16_total",
            "fleet_latency.stream_16_first_byte",
            "fleet_latency.stream_16_total",
            "fleet_redis.fit",
        },
    }
    raw = doc["raw"]
    assert all(r["errors"] == 0 for r in raw.values())
    # B holds no link: each of its answers was relayed to A over the peer channel.
    assert raw["stream_16.b"]["ok"] == doc["preset"]["latency_requests"]
    assert raw["redis_16"]["requests"] > 0
    assert raw["redis_64"]["requests"] > 0


def test_fleet_views_smoke_run_watches_b_while_links_churn_on_a(tmp_path: Path) -> None:
    """Redis, instances A and B, idle links on A, viewers on B: every phase is measured."""
    argv = ["--views", "--instances", "2", "--smoke", "--out", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "bench", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    (report,) = tmp_path.glob("*-views-instances2/report.json")
    doc = json.loads(report.read_text(encoding="utf-8"))
    rows = {s["key"]: {r["key"] for r in s["rows"]} for s in doc["sections"]}
    assert rows == {"fleet_views": {"idle", "viewers", "churn_alone", "churn"}}
    assert doc["raw"]["churn"]["redis_per_s"]["commands"] > 0
