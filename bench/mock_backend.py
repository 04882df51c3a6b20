"""`python -m bench.mock_backend`: infero's demo backend on a loopback port, in its own process.

Prints one JSON line `{"port": N}` once it listens, then serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import socket

from aiohttp import web

from bench._loop import announce, run, stop_event
from infero.demo.backend import DemoConfig, create_app

BACKLOG = 4096
"""Pending connections the kernel queues: 1,000 streams opened at once must not overflow it."""


async def serve(cfg: DemoConfig, port: int) -> None:
    """Serve the demo backend on 127.0.0.1:`port` (0 picks a free port) until stopped."""
    stop = stop_event()
    runner = web.AppRunner(create_app(cfg), access_log=None)
    await runner.setup()
    try:
        sock = socket.create_server(("127.0.0.1", port), backlog=BACKLOG)
        await web.SockSite(runner, sock).start()
        announce(json.dumps({"port": sock.getsockname()[1]}))
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    """Parse the flags and serve."""
    parser = argparse.ArgumentParser(prog="python -m bench.mock_backend", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--models", default="bench", help="comma-separated model ids")
    parser.add_argument("--tokens", type=int, default=16, help="tokens per answer by default")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between tokens")
    parser.add_argument(
        "--model-delay",
        action="append",
        default=[],
        metavar="MODEL=SECONDS",
        help="a model with its own delay between tokens (repeatable; also served)",
    )
    parser.add_argument("--embedding-dim", type=int, default=8)
    args = parser.parse_args()
    delays = tuple((m, float(d)) for m, _, d in (x.partition("=") for x in args.model_delay))
    cfg = DemoConfig(
        models=tuple(m for m in args.models.split(",") if m) + tuple(m for m, _ in delays),
        tokens=args.tokens,
        token_delay=args.delay,
        model_delays=delays,
        embedding_dim=args.embedding_dim,
    )
    run(serve(cfg, args.port))


if __name__ == "__main__":
    main()
