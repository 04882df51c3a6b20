"""`python -m bench.console_keys`: how fast the console answers keys at 1,000 connectors.

The console (`infero tui`) runs headless under Textual's pilot against a synthetic fleet of
1,000 connectors, 50 models and 20 MCP relays, with the console's real settings (filter
debounce, bounded redraw rate). Each key is pressed and timed until the console has handled
it and drawn the result (wall time, which includes the pilot's own wait for the next screen
update, about 70 ms on a loaded 2-core machine even for 5 rows, and the process CPU time);
once on a quiet fleet, once while 5 connectors join, 5 leave and 10 update 10 times a second.
Prints p50/p99/max per key kind, in milliseconds.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from infero.protocol.state import McpClientInfo, ModelInfo, StateSnapshot, WorkerInfo
from infero_tui.app import make_app
from infero_tui.config import ConsoleConfig
from infero_tui.frozen import FrozenFeed, load_snapshots
from infero_tui.screens.main import MainScreen

ROWS = 1_000
KEYS: list[tuple[str, tuple[str, ...]]] = [
    *[("j (down)", ("j",))] * 20,
    *[("k (up)", ("k",))] * 10,
    *[("G / g (last, first)", (key,)) for key in "GgGgGg"],
    *[("Shift+letter (sort)", (key,)) for key in "NSJFTANSJF"],
    *[("/ typing (filter)", ("slash", *"gpu-1", "escape"))] * 3,
    *[("Enter, Esc (detail)", ("enter", "escape"))] * 5,
    *[("2, 1 (tabs)", ("2", "1"))] * 5,
]
TEMPLATE = Path(__file__).resolve().parents[1] / "tests" / "data" / "fleet.json"


class Fleet:
    """Synthetic states: a window over a pool of connectors slides by 5 every step (5 leave,
    5 join) and 10 rows get new counters, as the stream's deltas would bring them."""

    def __init__(self) -> None:
        base = load_snapshots(TEMPLATE)[0]
        self.base = base
        self.start = datetime(2026, 12, 1, 12, tzinfo=UTC)
        template = base.workers[0]
        self.pool = [
            template.model_copy(
                update={
                    "id": f"w-{n:05d}",
                    "name": f"gpu-{n % 400}.rack-{n % 17}.example.internal",
                    "status": ("busy", "idle", "draining")[n % 3],
                    "processed_total": n,
                    "tokens_out_total": 40 * n,
                    "last_heartbeat": self.start,
                }
            )
            for n in range(ROWS * 3)
        ]
        self.models = [
            ModelInfo(name=f"model-{n}", workers=20, ready_workers=18) for n in range(50)
        ]
        self.relays = [
            McpClientInfo(id=f"m-{n}", name=f"relay-{n}", status="idle") for n in range(20)
        ]

    def at(self, step: int, churn: bool) -> StateSnapshot:
        offset = (step * 5) % (ROWS * 2) if churn else 0
        workers: list[WorkerInfo] = self.pool[offset : offset + ROWS]
        if churn:
            for n in range(0, ROWS, ROWS // 10):
                w = workers[n]
                workers[n] = w.model_copy(
                    update={
                        "processed_total": w.processed_total + step,
                        "tokens_out_total": w.tokens_out_total + 40 * step,
                    }
                )
        now = self.start + timedelta(seconds=step / 10)
        return self.base.model_copy(
            update={
                "server": self.base.server.model_copy(update={"now": now}),
                "workers": workers,
                "models": self.models,
                "mcp": self.base.mcp.model_copy(update={"clients": self.relays}),
            }
        )


class ChurningFeed(FrozenFeed):
    """A new state every 100 ms (with churn), or one state and silence; like the server's
    delta stream, unchanged rows stay the same objects and heartbeat times only move with
    their row (SEEN reads `live`)."""

    churn: bool = False

    async def snapshots(self) -> AsyncIterator[StateSnapshot]:
        step = 0
        states = Fleet()
        while True:
            yield states.at(step, self.churn)
            self.settled.set()
            if not self.churn:
                await asyncio.Event().wait()
            step += 1
            await asyncio.sleep(0.1)


async def measure(churn: bool) -> dict[str, list[float]]:
    feed = ChurningFeed([], live_heartbeats=False)
    feed.churn = churn
    config = ConsoleConfig(
        refresh_interval=None, animation_level="none", cursor_blink=False, settle_heap=True
    )
    app = make_app(fleet=feed, config=config)
    out: dict[str, list[float]] = {}
    async with app.run_test(size=(120, 35)) as pilot:
        await feed.settled.wait()
        screen = app.screen
        assert isinstance(screen, MainScreen)
        while screen.snapshot is None:
            await pilot.pause()
        for kind, keys in KEYS:
            for key in keys:
                start, cpu = time.perf_counter(), time.process_time()
                await pilot.press(key)
                out.setdefault(kind, []).append((time.perf_counter() - start) * 1000)
                out.setdefault(f"{kind} cpu", []).append((time.process_time() - cpu) * 1000)
        out["(draws / states)"] = [float(screen.draws)]
    return out


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def _row(kind: str, values: list[float], cpu: list[float]) -> str:
    return (
        f"| {kind} | {len(values)} | {statistics.median(values):.1f} | {_p99(values):.1f} "
        f"| {max(values):.1f} | {statistics.median(cpu):.1f} | {_p99(cpu):.1f} |"
    )


def main() -> int:
    for churn in (False, True):
        results = asyncio.run(measure(churn))
        draws = results.pop("(draws / states)")[0]
        title = "10 joins/leaves + counters every 100 ms" if churn else "quiet fleet"
        print(f"\n{ROWS} connectors, {title} (states drawn: {draws:.0f})\n")
        print("| key | presses | p50 ms | p99 ms | max ms | CPU p50 ms | CPU p99 ms |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        wall: list[float] = []
        cpu: list[float] = []
        for kind in dict(KEYS):
            print(_row(kind, results[kind], results[f"{kind} cpu"]))
            wall += results[kind]
            cpu += results[f"{kind} cpu"]
        print(_row("all keys", wall, cpu))
    return 0


if __name__ == "__main__":
    sys.exit(main())
