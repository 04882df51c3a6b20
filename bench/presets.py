"""How big a run is: the full benchmark, `--quick`, and the CI smoke run's tiny numbers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Preset:
    """Every size the benchmark uses."""

    name: str
    latency_requests: int
    """Sequential requests per latency figure (non-streaming and 16-token streams)."""
    long_stream_requests: int
    """Sequential 256-token streams per latency figure."""
    warmup: int
    """Unmeasured requests before each figure."""
    throughput_seconds: float
    """Length of each requests/s figure."""
    concurrencies: tuple[int, ...]
    throughput_tokens: int
    """Tokens per answer in the requests/s and tokens/s figures."""
    idle_connectors: int
    slow_streams: int
    slow_runs: tuple[tuple[float, int], ...]
    """(seconds between two tokens, tokens per stream) of each slow-stream run."""
    slow_ramp: float
    """Seconds over which the slow streams' starts are spread."""
    embedding_inputs: int
    embedding_requests: int
    embedding_dim: int
    client_requests: int
    """Sequential calls per figure of the aiohttp/httpx comparison."""
    client_seconds: float
    connector_capacity: int = 4096
    """MAX_CONCURRENCY of the benchmark's connectors: high, so infero never queues."""
    view_seconds: float = 10.0
    """Length of each phase of the views scenario (`--views`)."""
    view_links: int = 1000
    """Idle connectors held during the views scenario."""
    viewers: int = 20
    """`/api/state/stream` viewers in the views scenario."""
    view_churn_per_s: float = 10.0
    """Connectors joining (and as many leaving) per second in the churn phase."""
    view_concurrency: int = 2
    """Clients sending small chat requests back to back during the traffic phases."""
    fleet_concurrency: int = 32
    """Clients at once in the throughput figures of `--instances 2`."""
    fleet_redis_seconds: float = 5.0
    """Length of each Redis-commands run of `--instances 2` (and of its idle window)."""
    fleet_long_tokens: int = 1024
    """Tokens of the long answers in the Redis-commands runs (the short ones have 16)."""


FULL = Preset(
    name="full",
    latency_requests=2000,
    long_stream_requests=300,
    warmup=200,
    throughput_seconds=3.0,
    concurrencies=(1, 32, 128),
    throughput_tokens=64,
    idle_connectors=1000,
    slow_streams=1000,
    slow_runs=((0.02, 150), (0.1, 40)),
    slow_ramp=2.0,
    embedding_inputs=2048,
    embedding_requests=30,
    embedding_dim=256,
    client_requests=1000,
    client_seconds=2.0,
)

QUICK = Preset(
    name="quick",
    latency_requests=300,
    long_stream_requests=40,
    warmup=40,
    throughput_seconds=0.75,
    concurrencies=(1, 32, 128),
    throughput_tokens=64,
    idle_connectors=1000,
    slow_streams=1000,
    slow_runs=((0.02, 60), (0.1, 25)),
    slow_ramp=1.5,
    embedding_inputs=2048,
    embedding_requests=4,
    embedding_dim=256,
    client_requests=150,
    client_seconds=0.4,
    view_seconds=5.0,
    fleet_redis_seconds=2.0,
)

SMOKE = Preset(
    name="smoke",
    latency_requests=5,
    long_stream_requests=2,
    warmup=1,
    throughput_seconds=0.1,
    concurrencies=(1, 2),
    throughput_tokens=4,
    idle_connectors=2,
    slow_streams=3,
    slow_runs=((0.005, 6),),
    slow_ramp=0.01,
    embedding_inputs=8,
    embedding_requests=2,
    embedding_dim=8,
    client_requests=3,
    client_seconds=0.05,
    view_seconds=0.5,
    view_links=3,
    viewers=2,
    view_churn_per_s=4.0,
    fleet_concurrency=2,
    fleet_redis_seconds=0.3,
    fleet_long_tokens=64,
)
