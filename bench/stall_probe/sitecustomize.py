"""Event-loop stall probe for the benchmark's `infero server` (loaded only when asked).

`INFERO_BENCH_STALLS=FILE PYTHONPATH=bench/stall_probe python -m bench --views` loads this
module in every child process through Python's `sitecustomize` hook; it acts only in the
`infero server` process. A watchdog thread posts a callback to the server's event loop every
5 ms and measures how late it runs. While it is late the main thread's Python stack is sampled
every millisecond. Each stall over 10 ms is recorded with its length, the CPU time the main
thread used meanwhile (near the stall's length: the server was busy; near zero: the machine
did not run it) and its most frequent stacks. Cyclic-GC pauses are timed (wall and CPU)
through `gc.callbacks`. The file (JSON, wall-clock times) is rewritten every 5 s and at exit;
the views scenario splits it by phase (`bench.views.stall_section`). The probe's own thread
costs the server a few percent of a core.
"""

from __future__ import annotations

import os
from pathlib import Path

OUT = os.environ.get("INFERO_BENCH_STALLS", "")
PERIOD = 0.005
THRESHOLD = 0.010
DUMP_EVERY = 5.0


def _is_server() -> bool:
    argv = Path("/proc/self/cmdline").read_bytes().split(b"\0")
    return b"server" in argv and any(b"infero.cli" in a for a in argv)


if OUT and _is_server():
    import asyncio
    import atexit
    import collections
    import gc
    import json
    import sys
    import threading
    import time
    from types import FrameType
    from typing import Any

    _stalls: list[dict[str, Any]] = []
    _gc: list[tuple[float, int, float, float, int, int]] = []
    """(time, generation, wall ms, CPU ms, objects collected, young objects examined or -1)."""
    _gc_start: list[float] = [0.0, 0.0, 0.0]

    def _on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            generation = info["generation"]  # counting the oldest one would cost a pause itself
            examined = range(generation + 1) if generation < 2 else ()
            _gc_start[2] = sum(len(gc.get_objects(g)) for g in examined) if examined else -1
            _gc_start[0], _gc_start[1] = time.perf_counter(), time.thread_time()
            return
        wall = time.perf_counter() - _gc_start[0]
        cpu = time.thread_time() - _gc_start[1]
        if info["generation"] > 0 or cpu > 0.002:
            at = round(time.time(), 3)
            seen = int(_gc_start[2])
            _gc.append((at, info["generation"], wall * 1000, cpu * 1000, info["collected"], seen))

    def _stack(frame: FrameType | None) -> str:
        out = []
        while frame is not None:
            code = frame.f_code
            path = code.co_filename
            cut = path.find("site-packages/")
            path = path[cut + 14 :] if cut >= 0 else path.rsplit("/src/", 1)[-1]
            out.append(f"{code.co_name} ({path}:{frame.f_lineno})")
            frame = frame.f_back
        return ";".join(reversed(out))

    def _dump() -> None:
        doc = {"stalls": _stalls, "gc": _gc, "frozen": gc.get_freeze_count()}
        partial = Path(OUT + ".partial")
        partial.write_text(json.dumps(doc), encoding="utf-8")
        partial.replace(OUT)  # a reader never sees half a file

    def _mark(ran: list[float]) -> None:
        ran.append(time.monotonic())

    def _watch(loop: asyncio.AbstractEventLoop, main: int) -> None:
        cpu_clock = time.pthread_getcpuclockid(main)
        last_dump = time.monotonic()
        while not loop.is_closed():
            ran: list[float] = []
            start, cpu = time.monotonic(), time.clock_gettime(cpu_clock)
            wall = time.time()
            try:
                loop.call_soon_threadsafe(_mark, ran)
            except RuntimeError:  # the loop closed meanwhile
                return
            samples: collections.Counter[str] = collections.Counter()
            while not ran:
                time.sleep(0.001)
                if not ran and time.monotonic() - start > 0.004:
                    frame = sys._current_frames().get(main)
                    samples[_stack(frame)] += 1
            lag = ran[0] - start
            if lag > THRESHOLD:
                _stalls.append(
                    {
                        "at": round(wall, 3),
                        "lag_ms": round(lag * 1000, 1),
                        "cpu_ms": round((time.clock_gettime(cpu_clock) - cpu) * 1000, 1),
                        "stacks": samples.most_common(5),
                    }
                )
            if time.monotonic() - last_dump > DUMP_EVERY:
                last_dump = time.monotonic()
                _dump()
            time.sleep(PERIOD)

    _run = asyncio.Runner.run
    _watched: set[int] = set()

    def _run_probed(self: asyncio.Runner, coro: Any, *, context: Any = None) -> Any:
        loop = self.get_loop()
        if id(loop) not in _watched:
            _watched.add(id(loop))
            thread = threading.Thread(
                target=_watch, args=(loop, threading.get_ident()), daemon=True, name="stalls"
            )
            thread.start()
        return _run(self, coro, context=context)

    asyncio.Runner.run = _run_probed  # type: ignore[method-assign]
    gc.callbacks.append(_on_gc)
    atexit.register(_dump)
