"""The benchmark runs end to end through infero with tiny numbers, so it cannot rot.

No figure is judged here (a benchmark is not a test); only that every row is produced.
"""

from __future__ import annotations

import json
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
    """Idle links, viewers, probe, churn and requests all start, work and stop."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--views", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    (report,) = tmp_path.glob("*/report.json")
    doc = json.loads(report.read_text(encoding="utf-8"))
    rows = {s["key"]: {r["key"] for r in s["rows"]} for s in doc["sections"]}
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
