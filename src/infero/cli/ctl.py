"""`infero ctl`: list the fleet, drain/undrain/shut down workers, watch changes (scriptable).

Exit codes: 0 ok, 1 server or transport error, 2 usage, 3 key refused, 4 unknown worker or relay.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from infero.cli.options import PRINT_CONFIG_HELP, print_config
from infero.common.buildinfo import BUILD

if TYPE_CHECKING:
    from infero_tui.client import FleetClient

DEFAULT_SERVER = "http://127.0.0.1:8080"

Server = Annotated[
    str,
    typer.Option("--server", envvar="INFERO_SERVER", help="Server base URL.", show_envvar=True),
]
ApiKey = Annotated[
    str,
    typer.Option("--api-key", envvar="API_KEY", help="Key to read the state.", show_default=False),
]
OperatorKey = Annotated[
    str,
    typer.Option(
        "--operator-key",
        envvar="OPERATOR_KEY",
        help="Key with the operator role, for drain/undrain/shutdown.",
        show_default=False,
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
PrintConfig = Annotated[bool, typer.Option("--print-config", help=PRINT_CONFIG_HELP)]
SECRETS = ("api_key", "operator_key")
Worker = Annotated[str, typer.Argument(help="Worker id or unique name.", show_default=False)]
Relay = Annotated[
    str,
    typer.Argument(metavar="RELAY", help="MCP relay id or unique name.", show_default=False),
]

ctl = typer.Typer(
    name="ctl",
    help="Scriptable fleet control: the console's client without the UI (exit codes: "
    "0 ok, 1 server/transport error, 2 usage, 3 key refused, 4 unknown worker or relay).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@ctl.callback(invoke_without_command=True)
def _group(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", help="Print version, git sha and build date.")
    ] = False,
    show_config: PrintConfig = False,
) -> None:
    if version:
        typer.echo(BUILD.line("infero-ctl"))
        raise typer.Exit(0)
    if show_config and ctx.invoked_subcommand is None:
        env = os.environ
        print_config(
            {
                "server": env.get("INFERO_SERVER") or DEFAULT_SERVER,
                "api_key": env.get("API_KEY", ""),
                "operator_key": env.get("OPERATOR_KEY", ""),
            },
            secrets=SECRETS,
        )
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help(), err=True)
        raise typer.Exit(2)


def _run(
    server: str,
    api_key: str,
    operator_key: str,
    body: Callable[[FleetClient], Awaitable[int]],
    show_config: bool = False,
) -> None:
    if show_config:
        config = {"server": server, "api_key": api_key, "operator_key": operator_key}
        print_config(config, secrets=SECRETS)
        raise typer.Exit(0)
    from infero_tui.client import ClientError
    from infero_tui.ctl import exit_code, open_client

    async def main() -> int:
        async with open_client(server, api_key, operator_key) as client:
            return await body(client)

    try:
        code = asyncio.run(main())
    except ClientError as exc:
        typer.echo(f"infero ctl: {exc}", err=True)
        code = exit_code(exc)
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)


def _echo(line: str) -> None:
    typer.echo(line)
    sys.stdout.flush()


Listing = Literal["workers", "models", "mcp", "instances"]


def _lister(what: Listing, doc: str) -> Callable[..., None]:
    def command(
        server: Server = DEFAULT_SERVER,
        api_key: ApiKey = "",
        json_output: Json = False,
        show_config: PrintConfig = False,
    ) -> None:
        from infero_tui.ctl import list_command

        _run(
            server,
            api_key,
            "",
            lambda c: list_command(c, what, json_output, _echo),
            show_config,
        )

    command.__doc__ = doc
    return command


def _controller(action: Literal["drain", "undrain", "shutdown"], doc: str) -> Callable[..., None]:
    def command(
        worker: Worker,
        server: Server = DEFAULT_SERVER,
        api_key: ApiKey = "",
        operator_key: OperatorKey = "",
        json_output: Json = False,
        show_config: PrintConfig = False,
    ) -> None:
        from infero_tui.ctl import control_command

        _run(
            server,
            api_key,
            operator_key,
            lambda c: control_command(c, action, worker, json_output, _echo),
            show_config,
        )

    command.__doc__ = doc
    return command


def _relay_controller(
    action: Literal["drain", "undrain", "shutdown"], doc: str
) -> Callable[..., None]:
    def command(
        relay: Relay,
        server: Server = DEFAULT_SERVER,
        api_key: ApiKey = "",
        operator_key: OperatorKey = "",
        json_output: Json = False,
    ) -> None:
        from infero_tui.ctl import control_command

        _run(
            server,
            api_key,
            operator_key,
            lambda c: control_command(c, action, relay, json_output, _echo, "relay"),
        )

    command.__doc__ = doc
    return command


@ctl.command("watch")
def watch(
    server: Server = DEFAULT_SERVER,
    api_key: ApiKey = "",
    json_output: Json = False,
    show_config: PrintConfig = False,
) -> None:
    """Print fleet changes as they happen (--json: every snapshot, one per line)."""
    from infero_tui.ctl import watch_command

    _run(server, api_key, "", lambda c: watch_command(c, json_output, _echo), show_config)


ctl.command("workers")(_lister("workers", "List the workers (connectors) of the fleet."))
ctl.command("models")(_lister("models", "List the models with their workers and queues."))
ctl.command("mcp")(_lister("mcp", "List MCP relays and live sessions."))
ctl.command("instances")(
    _lister("instances", "List the server instances sharing the fleet (REDIS_ADDR).")
)
ctl.command("drain")(
    _controller("drain", "Drain a worker: no new work, finish in-flight, stay linked.")
)
ctl.command("undrain")(
    _controller("undrain", "Undrain a worker: take new work again (not after a shutdown).")
)
ctl.command("shutdown")(
    _controller("shutdown", "Shut down a worker: drain, then exit (cannot be undone).")
)

relays = typer.Typer(
    name="relay",
    help="Steer MCP relays (infero mcp): drain, undrain, shutdown.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
relays.command("drain")(
    _relay_controller("drain", "Drain an MCP relay: finish in-flight calls, take none.")
)
relays.command("undrain")(_relay_controller("undrain", "Let a draining MCP relay take calls."))
relays.command("shutdown")(_relay_controller("shutdown", "Drain an MCP relay, then exit it."))
ctl.add_typer(relays)


def register(app: typer.Typer) -> None:
    """Add the `ctl` command group."""
    app.add_typer(ctl)
