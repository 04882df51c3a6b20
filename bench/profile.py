"""`python -m bench --profile`: where the server and the connector spend their time under load.

Attaches py-spy (`pip install py-spy`; not a dependency of infero) to the running `infero
server` and `infero llm` processes while the load generator sends concurrency-32 traffic
through infero, then ranks functions by the share of samples in which they were running
(self) or on the stack (inclusive). The raw collapsed stacks stay in the results directory.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections import Counter
from pathlib import Path

from bench import procs
from bench.presets import Preset
from bench.report import Row, Section
from bench.scenarios import BenchError, chat_body
from bench.stack import FAST_MODEL, Stack

RATE = 250
"""py-spy samples per second."""
TOP = 15
"""Functions listed per table."""


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise BenchError("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


def rank(collapsed: str) -> tuple[int, Counter[str], Counter[str]]:
    """Total samples, self samples and inclusive samples per function of py-spy raw output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        total += int(n)
        own[frames[-1]] += int(n)
        for frame in set(frames):
            inclusive[frame] += int(n)
    return total, own, inclusive


def _tables(title: str, collapsed: str) -> list[Section]:
    total, own, inclusive = rank(collapsed)
    if not total:
        return [Section("profile", f"{title}: no samples", [])]
    pct = 100 / total
    hot = Section("profile", f"{title}: self time ({total} samples)", ["self %", "inclusive %"])
    for frame, n in own.most_common(TOP):
        hot.rows.append(Row(frame, [f"{n * pct:.1f}", f"{inclusive[frame] * pct:.1f}"]))
    ours = Section("profile", f"{title}: infero functions, inclusive", ["inclusive %", "self %"])
    mine = [(f, n) for f, n in inclusive.most_common() if "infero/" in f]
    for frame, n in mine[:TOP]:
        ours.rows.append(Row(frame, [f"{n * pct:.1f}", f"{own[frame] * pct:.1f}"]))
    return [hot, ours]


async def profile(stack: Stack, p: Preset, seconds: int) -> list[Section]:
    """Profile the server and the first connector under streaming and non-streaming load."""
    assert stack.server is not None
    spy = _py_spy()
    watched = {"server": stack.server, "connector": stack.connector_children[0]}
    sections: list[Section] = []
    for stream in (False, True):
        key = "stream_c32" if stream else "nonstream_c32"
        body = chat_body(FAST_MODEL, p.throughput_tokens, stream=stream)
        target = stack.infero
        await stack.run(target.job("/chat/completions", body, stream=stream, count=64, warmup=0))
        spies = []
        for name, child in watched.items():
            argv = [spy, "record", "--pid", str(child.pid), "--duration", str(seconds)]
            argv += ["--rate", str(RATE), "--format", "raw", "--nolineno", "--nonblocking"]
            out = stack.work_dir / f"profile-{key}-{name}.txt"
            child_spy = await procs.start(
                f"py-spy-{key}-{name}", [*argv, "--output", str(out)], log_dir=stack.work_dir
            )
            spies.append((name, out, child_spy))
        job = target.job("/chat/completions", body, stream=stream, concurrency=32)
        job["duration"] = seconds
        await stack.run(job)
        for name, out, child_spy in spies:
            async with asyncio.timeout(seconds + 30):
                await child_spy.process.wait()
            await child_spy.stop()
            if not out.exists():
                raise BenchError(f"py-spy wrote nothing; see {child_spy.log_path}")
            title = f"{name}, {'streaming' if stream else 'non-streaming'} c=32"
            sections += _tables(title, out.read_text(encoding="utf-8"))
    return sections
