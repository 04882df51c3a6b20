"""`infero demo`: server + connector + a labelled demo backend on loopback, in one process."""

from __future__ import annotations

import asyncio
import signal
from typing import Annotated

import typer

from infero.cli.options import PRINT_CONFIG_HELP, print_config
from infero.common.buildinfo import BUILD
from infero.common.logs import setup_logging


async def _serve(port: int, token_delay: float) -> int:
    from infero.demo.stack import DemoError, DemoStack, demo_stack, instructions

    stop = asyncio.Event()
    running: list[DemoStack] = []

    def on_signal() -> None:
        """First Ctrl-C: stop after the streams in flight; second: stop at once."""
        if not stop.is_set():
            stop.set()
        elif running:
            running[0].connector.request_stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        async with demo_stack(port=port, token_delay=token_delay) as stack:
            running.append(stack)
            typer.echo(instructions(stack))
            await stop.wait()
            typer.echo(
                "stopping the demo: answers in flight finish first (Ctrl-C again to stop now)",
                err=True,
            )
    except DemoError as exc:
        typer.echo(f"infero demo: {exc}", err=True)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


def demo(
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Server port on 127.0.0.1.")
    ] = 8080,
    token_delay: Annotated[
        float,
        typer.Option("--token-delay", min=0.0, help="Seconds between two streamed demo tokens."),
    ] = 0.05,
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug, info, warning or error.")
    ] = "warning",
    version: Annotated[
        bool, typer.Option("--version", help="Print version, git sha and build date.")
    ] = False,
    show_config: Annotated[bool, typer.Option("--print-config", help=PRINT_CONFIG_HELP)] = False,
) -> None:
    """Try infero without an LLM runtime: server, connector and a demo backend on loopback."""
    if version:
        typer.echo(BUILD.line("infero-demo"))
        raise typer.Exit(0)
    level = log_level.strip().lower()
    if level not in {"debug", "info", "warning", "error"}:
        typer.echo(f"infero demo: invalid setting --log-level: {log_level!r}", err=True)
        raise typer.Exit(2)
    if show_config:  # the demo reads no config file; its keys are made at start
        print_config({"port": port, "token_delay": token_delay, "log_level": level})
        raise typer.Exit(0)
    setup_logging(level)
    code = asyncio.run(_serve(port, token_delay))
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add the `demo` command."""
    app.command("demo")(demo)
