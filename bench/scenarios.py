"""The measurements. Each sends the same load to the backend directly and through infero."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from bench import procs
from bench.loadgen import Cycle, Result
from bench.presets import Preset
from bench.report import Row, Section, count, mib, ms, ratio, signed_ms
from bench.stack import FAST_MODEL, Harness, Stack, Target, slow_model
from bench.stats import summarize

Raw = dict[str, Any]
"""Every load-generator result by name, kept for the JSON file."""

RSS_SAMPLE_PERIOD = 0.1
"""Seconds between two RSS readings while slow streams run."""

LATENCY_COLUMNS = [
    "direct p50",
    "infero p50",
    "added p50",
    "direct p99",
    "infero p99",
    "added p99",
]


class BenchError(RuntimeError):
    """A measurement could not be made (every request failed, links refused, ...)."""


def chat_body(model: str, tokens: int, *, stream: bool) -> str:
    """A chat completion request asking for exactly `tokens` tokens."""
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Tell me something, in a few words."}],
            "max_tokens": tokens,
            "stream": stream,
        }
    )


def embeddings_body(model: str, inputs: int) -> str:
    """An embeddings request with a batch of `inputs` short sentences."""
    text = [f"sentence {i} of the benchmark's large embedding batch" for i in range(inputs)]
    return json.dumps({"model": model, "input": text})


ROUNDS = 4
"""Each comparison alternates direct and infero in this many rounds, so a neighbour's burst
of CPU use on the shared machine hits both sides alike."""


def merge(results: list[Result]) -> Result:
    """One result from several rounds of the same job."""
    return Result(
        ok=sum(r["ok"] for r in results),
        errors=sum(r["errors"] for r in results),
        error_sample=next((r["error_sample"] for r in results if r["error_sample"]), ""),
        elapsed_s=sum(r["elapsed_s"] for r in results),
        bytes=sum(r["bytes"] for r in results),
        ttfb_ms=[x for r in results for x in r["ttfb_ms"]],
        total_ms=[x for r in results for x in r["total_ms"]],
        gap_ms=[x for r in results for x in r["gap_ms"]],
        steady_gap_ms=[x for r in results for x in r["steady_gap_ms"]],
        overhead_ms=[x for r in results for x in r["overhead_ms"]],
    )


def digest(result: Result) -> dict[str, Any]:
    """A result with its samples replaced by their summaries (for the JSON file)."""
    samples = ("ttfb_ms", "total_ms", "gap_ms", "steady_gap_ms", "overhead_ms")
    out: dict[str, Any] = {k: v for k, v in result.items() if k not in samples}
    out.update({k: summarize(result[k]) for k in samples})  # type: ignore[literal-required]
    return out


def _pct(result: Result, metric: str, q: str) -> float | None:
    summary = summarize(result[metric])  # type: ignore[literal-required]
    return None if summary is None else float(summary[q])  # type: ignore[literal-required]


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _rps(result: Result) -> float:
    return result["ok"] / result["elapsed_s"] if result["elapsed_s"] > 0 else 0.0


def _check(name: str, result: Result) -> Result:
    if result["ok"] == 0:
        raise BenchError(f"{name}: no request succeeded ({result['error_sample']})")
    return result


async def alternate(
    stack: Harness,
    raw: Raw,
    key: str,
    targets: Sequence[Target],
    path: str,
    body: str,
    **job: Any,
) -> list[Result]:
    """The same job against each target in turn, in `ROUNDS` rounds; one result per target.

    Each target's merged samples and the CPU time of every process (by role) during its
    measured rounds go into `raw` under `key.<target name>`.
    """
    total, duration = int(job.pop("count", 0)), float(job.pop("duration", 0.0))
    warmup, concurrency = int(job.pop("warmup", 0)), int(job.get("concurrency", 1))
    rounds = min(ROUNDS, total) if total else ROUNDS
    parts: dict[str, list[Result]] = {t.name: [] for t in targets}
    cpu: dict[str, Counter[str]] = {t.name: Counter() for t in targets}
    for n in range(rounds):
        share = total // rounds + (1 if n < total % rounds else 0)
        for target in targets:
            spec = target.job(
                path, body, count=share, duration=duration / rounds,
                warmup=0, **job,
            )  # fmt: skip
            warm = warmup if n == 0 else 2 * concurrency
            if warm:
                await stack.run({**spec, "count": warm, "duration": 0.0})
            before = stack.cpu_seconds()
            parts[target.name].append(await stack.run(spec))
            after = stack.cpu_seconds()
            cpu[target.name].update({k: after[k] - before[k] for k in after})
    results = []
    for name, rounds_done in parts.items():
        result = _check(f"{key}.{name}", merge(rounds_done))
        raw[f"{key}.{name}"] = {**digest(result), "cpu_s": dict(cpu[name])}
        results.append(result)
    return results


async def interleave(
    stack: Harness,
    raw: Raw,
    key: str,
    targets: Sequence[Target],
    path: str,
    body: str,
    *,
    stream: bool,
    count: int,
    warmup: int,
) -> list[Result]:
    """The same sequential requests to the targets taking turns, request i to target i mod n
    (`Cycle`), `count` each after `warmup` each; one result per target.

    Rounds of a hundred requests let the machine drift between targets (a neighbour, the CPU's
    frequency and idle states), by more than tenths of a millisecond on a shared VM; taking
    turns request by request gives every target the same moments. The samples go into `raw`
    under `key.<target name>`, without CPU time: a process serving several targets at once
    cannot tell them apart (`alternate` measures that).
    """
    jobs = [target.job(path, body, stream=stream) for target in targets]
    results = await stack.run_cycle(Cycle(jobs=jobs, count=count, warmup=warmup))
    for target, result in zip(targets, results, strict=True):
        raw[f"{key}.{target.name}"] = digest(_check(f"{key}.{target.name}", result))
    return results


async def _pair(
    stack: Stack, raw: Raw, key: str, direct: Target, path: str, body: str, **job: Any
) -> tuple[Result, Result]:
    """The same job against `direct` and through infero, alternating in `ROUNDS` rounds."""
    d, i = await alternate(stack, raw, key, (direct, stack.infero), path, body, **job)
    return d, i


def _latency_row(
    key: str,
    label: str,
    direct: Result,
    via: Result,
    metric: str,
    limits: tuple[float, float | None] | None = None,
) -> Row:
    d50, i50 = _pct(direct, metric, "p50"), _pct(via, metric, "p50")
    d99, i99 = _pct(direct, metric, "p99"), _pct(via, metric, "p99")
    a50, a99 = _minus(i50, d50), _minus(i99, d99)
    row = Row(
        key, [ms(d50), ms(i50), signed_ms(a50), ms(d99), ms(i99), signed_ms(a99)], label=label
    )
    if limits is not None:
        p50_limit, p99_limit = limits
        row.target = f"added p50 < {p50_limit:g} ms"
        row.measured = f"{signed_ms(a50)} ms"
        row.met = a50 is not None and a50 < p50_limit
        if p99_limit is not None:
            row.target += f", p99 < {p99_limit:g} ms"
            row.measured += f", {signed_ms(a99)} ms"
            row.met = row.met and a99 is not None and a99 < p99_limit
    return row


async def latency(stack: Stack, p: Preset, raw: Raw) -> Section:
    """Added latency at concurrency 1: non-streaming total; streaming first byte and total."""
    section = Section("latency", "Concurrency 1 (ms)", LATENCY_COLUMNS)
    cases = [
        ("nonstream_16", "non-streaming, 16 tokens", 16, False, p.latency_requests),
        ("stream_16", "streaming, 16 tokens", 16, True, p.latency_requests),
        ("stream_256", "streaming, 256 tokens", 256, True, p.long_stream_requests),
    ]
    for key, label, tokens, stream, n in cases:
        body = chat_body(FAST_MODEL, tokens, stream=stream)
        d, i = await _pair(
            stack, raw, key, stack.direct, "/chat/completions", body,
            stream=stream, count=n, warmup=p.warmup,
        )  # fmt: skip
        if stream:
            section.rows.append(
                _latency_row(
                    f"{key}_first_byte", f"{label}: first byte", d, i, "ttfb_ms", (2, None)
                )
            )
            section.rows.append(_latency_row(f"{key}_total", f"{label}: total", d, i, "total_ms"))
        else:
            section.rows.append(
                _latency_row(f"{key}_total", f"{label}: total", d, i, "total_ms", (1, 3))
            )
    return section


async def throughput(stack: Stack, p: Preset, raw: Raw) -> Section:
    """Requests/s and tokens/s at each concurrency, streaming and not."""
    section = Section(
        "throughput",
        f"Throughput ({p.throughput_tokens} tokens/answer)",
        ["direct req/s", "infero req/s", "infero/direct", "direct tok/s", "infero tok/s", "errors"],
    )
    for stream in (False, True):
        mode = "streaming" if stream else "non-streaming"
        body = chat_body(FAST_MODEL, p.throughput_tokens, stream=stream)
        for c in p.concurrencies:
            key = f"{'stream' if stream else 'nonstream'}_c{c}"
            d, i = await _pair(
                stack, raw, key, stack.direct, "/chat/completions", body,
                stream=stream, concurrency=c, duration=p.throughput_seconds, warmup=2 * c,
            )  # fmt: skip
            d_rps, i_rps = _rps(d), _rps(i)
            share = i_rps / d_rps if d_rps else None
            row = Row(
                key,
                [
                    count(d_rps),
                    count(i_rps),
                    ratio(share),
                    count(d_rps * p.throughput_tokens),
                    count(i_rps * p.throughput_tokens),
                    str(d["errors"] + i["errors"]),
                ],
                label=f"{mode}, concurrency {c}",
            )
            if c == 32:
                row.target = "infero/direct >= 0.33"
                row.measured = ratio(share)
                row.met = share is not None and share >= 1 / 3
            section.rows.append(row)
    return section


async def embeddings(stack: Stack, p: Preset, raw: Raw) -> Section:
    """One large embeddings batch at a time."""
    body = embeddings_body(FAST_MODEL, p.embedding_inputs)
    d, i = await _pair(
        stack, raw, "embeddings", stack.direct, "/embeddings", body,
        stream=False, count=p.embedding_requests, warmup=1,
    )  # fmt: skip
    label = f"{p.embedding_inputs} inputs: total"
    section = Section("embeddings", "Embeddings, concurrency 1 (ms)", LATENCY_COLUMNS)
    section.rows.append(_latency_row("batch_total", label, d, i, "total_ms"))
    size = i["bytes"] / i["ok"] / (1024 * 1024)
    section.note = (
        f"request {len(body) / 1024:.0f} KiB, answer {size:.1f} MiB "
        f"({p.embedding_inputs} x {p.embedding_dim} floats)"
    )
    return section


async def idle_memory(stack: Stack, p: Preset) -> Section:
    """Server RSS before and with `idle_connectors` simulated connectors holding a link."""
    assert stack.server is not None
    section = Section("memory", "Server memory", ["value"])
    before = stack.server.rss_mb()
    async with stack.idle_links(p.idle_connectors) as info:
        if info["connected"] != p.idle_connectors:
            raise BenchError(
                f"{info['connected']} of {p.idle_connectors} idle links welcomed: {info['reason']}"
            )
        snap = await stack.state()
        registered = sum(1 for w in snap.workers if w.id.startswith("idle-"))
        after = stack.server.rss_mb()
    n = p.idle_connectors
    per = (after - before) * 1024 / n
    section.rows.append(Row("rss_0_idle", [mib(before)], label="server RSS, 0 idle connectors"))
    row = Row("rss_idle", [mib(after)], label=f"server RSS, {n} idle connectors")
    row.target, row.measured, row.met = "< 100 MB", mib(after), after * 1.048576 < 100
    section.rows.append(row)
    section.rows.append(Row("per_idle", [f"{per:.1f} KiB"], label="per idle connector"))
    section.note = (
        f"{registered} of {n} idle connectors listed in /api/state; the benchmark's own "
        f"connectors are connected too."
    )
    return section


async def _peak_rss(children: list[procs.Child], peaks: list[float], done: asyncio.Event) -> None:
    while not done.is_set():
        for k, child in enumerate(children):
            peaks[k] = max(peaks[k], child.rss_mb())
        try:
            async with asyncio.timeout(RSS_SAMPLE_PERIOD):
                await done.wait()
        except TimeoutError:
            pass


async def slow_streams(
    stack: Stack, p: Preset, raw: Raw, memory: Section, delay: float, tokens: int
) -> Section:
    """Many concurrent streams with an inter-token delay: added gap between chunks, peak RSS.

    Stream starts are spread over `slow_ramp` seconds; gaps are reported over the whole run
    and over the window when every stream was open at once (the target's figure).
    """
    assert stack.server is not None
    n = p.slow_streams
    tag = f"{delay * 1000:g}ms"
    body = chat_body(slow_model(delay), tokens, stream=True)
    job: dict[str, Any] = {
        "stream": True, "concurrency": n, "count": n, "gaps": True, "ramp": p.slow_ramp,
    }  # fmt: skip
    busy: dict[str, dict[str, float]] = {}
    results: dict[str, Result] = {}
    peaks = [0.0, 0.0]
    for target in (stack.slow_direct, stack.infero):
        before, started = stack.slow_cpu_seconds(), time.monotonic()
        done = asyncio.Event()
        watched = [stack.server, stack.slow_connector]
        sampler = asyncio.create_task(_peak_rss(watched, peaks, done))
        try:
            result = await stack.run(target.job("/chat/completions", body, **job))
        finally:
            done.set()
            await sampler
        elapsed, after = time.monotonic() - started, stack.slow_cpu_seconds()
        busy[target.name] = {k: (after[k] - before[k]) / elapsed for k in after}
        results[target.name] = _check(f"slow_{tag}.{target.name}", result)
        raw[f"slow_{tag}.{target.name}"] = {**digest(result), "cpu_share": busy[target.name]}
    d, i = results["direct"], results["infero"]
    label = f"{n} streams x {tokens} tokens, {delay * 1000:g} ms apart (ms)"
    section = Section(f"slow_{tag}", label, ["direct", "infero", "added"])
    rows = [
        ("gap_p50", "gap p50, whole run", "gap_ms", "p50"),
        ("gap_p99", "gap p99, whole run", "gap_ms", "p99"),
        ("steady_gap_p50", "gap p50, all streams open", "steady_gap_ms", "p50"),
        ("steady_gap_p99", "gap p99, all streams open", "steady_gap_ms", "p99"),
        ("first_byte_p50", "first byte p50", "ttfb_ms", "p50"),
        ("first_byte_p99", "first byte p99", "ttfb_ms", "p99"),
    ]
    for key, text, metric, q in rows:
        dv, iv = _pct(d, metric, q), _pct(i, metric, q)
        added = _minus(iv, dv)
        row = Row(key, [ms(dv), ms(iv), signed_ms(added)], label=text)
        if key == "steady_gap_p99":
            row.label = f"{text} ({tag} apart)"
            row.target, row.measured = "added < 5 ms", f"{signed_ms(added)} ms"
            row.met = added is not None and added < 5
        section.rows.append(row)
    section.rows.append(Row("errors", [str(d["errors"]), str(i["errors"]), ""], "errors"))
    share = busy["infero"]
    section.note = (
        f"starts spread over {p.slow_ramp:g} s; {len(i['steady_gap_ms'])} of {len(i['gap_ms'])} "
        f"infero gaps fell while all streams were open. CPU use through infero (1.0 = one core): "
        + ", ".join(f"{k} {v:.2f}" for k, v in share.items())
        + "; direct: "
        + ", ".join(f"{k} {v:.2f}" for k, v in busy["direct"].items() if v > 0.005)
    )
    where = f"{n} streams {tag} apart (peak)"
    memory.rows.append(Row(f"rss_slow_{tag}", [mib(peaks[0])], label=f"server RSS, {where}"))
    memory.rows.append(
        Row(f"connector_rss_slow_{tag}", [mib(peaks[1])], label=f"connector RSS, {where}")
    )
    return section


def cpu(raw: Raw, p: Preset) -> Section:
    """CPU time each process spent per request, from the throughput runs."""
    section = Section(
        "cpu",
        "CPU per request (us)",
        ["direct: backend", "loadgen", "infero: server", "connector", "backend", "loadgen"],
    )
    for c in p.concurrencies:
        for mode in ("nonstream", "stream"):
            key = f"{mode}_c{c}"
            d, i = raw.get(f"{key}.direct"), raw.get(f"{key}.infero")
            if d is None or i is None:
                continue
            cells = [
                count(1e6 * run["cpu_s"][proc] / run["ok"])
                for run, procs_ in ((d, ("backend", "loadgen")), (i, CPU_ROLES))
                for proc in procs_
            ]
            label = "streaming" if mode == "stream" else "non-streaming"
            section.rows.append(Row(key, cells, label=f"{label}, concurrency {c}"))
    section.note = "user + system CPU time of each process during the measured rounds / answers"
    return section


CPU_ROLES = ("server", "connector", "backend", "loadgen")


OVERHEAD_LABELS = {
    "nonstream_16": "non-streaming, concurrency 1",
    "stream_16": "streaming 16 tokens, concurrency 1",
    "stream_256": "streaming 256 tokens, concurrency 1",
    "nonstream_c32": "non-streaming, concurrency 32",
    "stream_c32": "streaming, concurrency 32",
    "embeddings": "embeddings batch",
}


def overhead(raw: Raw) -> Section:
    """The server's own `X-Infero-Overhead-Ms`, per load."""
    section = Section("overhead", "X-Infero-Overhead-Ms (ms)", ["responses", "p50", "p99", "max"])
    labels = dict(OVERHEAD_LABELS)
    for name in raw:
        if name.startswith("slow_") and name.endswith(".infero"):
            tag = name.removeprefix("slow_").removesuffix(".infero")
            labels[f"slow_{tag}"] = f"slow streams, {tag} apart"
    for key, label in labels.items():
        result: dict[str, Any] | None = raw.get(f"{key}.infero")
        if result is None:
            continue
        s = result["overhead_ms"]
        if s is None:
            section.rows.append(Row(key, ["header missing", "-", "-", "-"], label=label))
        else:
            cells = [str(s["n"]), ms(s["p50"]), ms(s["p99"]), ms(s["max"])]
            section.rows.append(Row(key, cells, label=label))
    return section


async def clients(stack: Stack, p: Preset) -> Section:
    """aiohttp vs httpx calling the backend the way the connector does."""
    child = await procs.start(
        "clients",
        procs.python(
            "bench.clients",
            f"--base-url={stack.direct.base_url}",
            f"--model={FAST_MODEL}",
            f"--count={p.client_requests}",
            f"--duration={p.client_seconds}",
            f"--tokens={p.throughput_tokens}",
        ),
        log_dir=stack.work_dir,
    )
    started = time.monotonic()
    try:
        figures = await child.read_json(120 + p.client_requests)
    finally:
        await child.stop()
    section = Section(
        "clients",
        "Backend client (ms, req/s)",
        ["p50", "p99", "stream p50", "stream p99", "req/s c=32", "stream req/s c=32"],
    )
    for lib, f in figures.items():
        lat, slat = f["latency_ms"], f["stream_latency_ms"]
        section.rows.append(
            Row(
                lib,
                [
                    ms(lat["p50"]),
                    ms(lat["p99"]),
                    ms(slat["p50"]),
                    ms(slat["p99"]),
                    count(f["rps_c32"]),
                    count(f["stream_rps_c32"]),
                ],
            )
        )
    section.note = (
        f"same mock backend, {p.throughput_tokens}-token streams; "
        f"{time.monotonic() - started:.0f} s"
    )
    return section
