"""`infero tui`: the Textual operator console (Textual comes with infero)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from infero.cli.options import PRINT_CONFIG_HELP, config_file_shown, print_config
from infero.common.buildinfo import BUILD
from infero.common.settings import ConfigError, default_log_dir, resolve_config_file
from infero.worker.statusport import TOKEN_FILE

if TYPE_CHECKING:
    from infero_tui.local import LocalContext

WORKER_YAML = "worker.yaml"


def _local_paths(
    config: str | None, token_file: str | None, log_dir: str | None
) -> tuple[Path, bool, Path, Path]:
    """The local connector's worker.yaml (and whether it exists), token file and log dir."""
    if config:  # may not exist yet: the settings editor creates it
        config_path = Path(config).expanduser()
        exists = config_path.is_file()
    else:
        config_path, exists = resolve_config_file(None, WORKER_YAML)
    if log_dir is None and exists:
        from infero_tui.settings_file import load_worker_settings

        try:
            log_dir = load_worker_settings(config_path).log_dir or None
        except ConfigError:
            log_dir = None
    logs = Path(log_dir).expanduser() if log_dir else default_log_dir()
    token = Path(token_file).expanduser() if token_file else config_path.parent / TOKEN_FILE
    return config_path, exists, token, logs


def _local_context(
    addr: str,
    config: str | None,
    token_file: str | None,
    log_dir: str | None,
    unit: str = "",
) -> LocalContext:
    from infero_tui.client import LocalClient
    from infero_tui.local import LOG_FILE_NAME, LocalContext, PathName
    from infero_tui.process import ConnectorProcess, default_command

    config_path, _, token, logs = _local_paths(config, token_file, log_dir)
    flags: dict[PathName, str | None] = {"config": config, "token": token_file, "log": log_dir}
    return LocalContext(
        client=LocalClient(addr, token),
        addr=addr,
        config_path=config_path,
        token_file=token,
        log_file=logs / LOG_FILE_NAME,
        diagnostics_dir=Path.cwd(),
        runner=ConnectorProcess(default_command(config_path, addr)),
        unit=unit or None,
        explicit=frozenset(name for name, given in flags.items() if given),
    )


def tui(
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            envvar="INFERO_SERVER",
            help="Server base URL (the fleet view).",
            show_envvar=True,
        ),
    ] = None,
    api_key: Annotated[
        str, typer.Option("--api-key", envvar="API_KEY", help="Key to read the state.")
    ] = "",
    operator_key: Annotated[
        str,
        typer.Option(
            "--operator-key", envvar="OPERATOR_KEY", help="Key with the operator role (actions)."
        ),
    ] = "",
    tls_ca_file: Annotated[
        str,
        typer.Option(
            "--tls-ca-file",
            envvar="TLS_CA_FILE",
            help="PEM CA certificates that sign an https:// server (private CA).",
        ),
    ] = "",
    worker: Annotated[
        str | None,
        typer.Option(
            "--worker", help="Local connector status address, e.g. 127.0.0.1:4555 (local view)."
        ),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option("--config", envvar="CONFIG_FILE", help="The local connector's worker.yaml."),
    ] = None,
    token_file: Annotated[
        str | None,
        typer.Option("--token-file", help="Control token file (default: worker.token beside it)."),
    ] = None,
    log_dir: Annotated[
        str | None,
        typer.Option("--log-dir", envvar="LOG_DIR", help="The local connector's LOG_DIR."),
    ] = None,
    unit: Annotated[
        str,
        typer.Option(
            "--unit",
            help="systemd unit of the local connector (system, else user); '' for none.",
        ),
    ] = "infero-llm@main",
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Watch only: every action is disabled.")
    ] = False,
    replay: Annotated[
        Path | None,
        typer.Option("--replay", help="Show snapshots from a JSON file instead of a server."),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", help="Print version, git sha and build date.")
    ] = False,
    show_config: Annotated[bool, typer.Option("--print-config", help=PRINT_CONFIG_HELP)] = False,
) -> None:
    """Open the operator console: the fleet (--server) and/or the local connector (--worker)."""
    if version:
        typer.echo(BUILD.line("infero-tui"))
        raise typer.Exit(0)
    if show_config:
        config_path, exists, token, logs = _local_paths(config, token_file, log_dir)
        given = bool(config)
        print_config(
            {
                "server": server,
                "api_key": api_key,
                "operator_key": operator_key,
                "tls_ca_file": tls_ca_file,
                "worker": worker,
                "config_file": str(config_path)
                if given or exists
                else config_file_shown(WORKER_YAML, str(config_path), False),
                "token_file": str(token),
                "log_dir": str(logs),
                "unit": unit,
                "read_only": read_only,
                "replay": str(replay) if replay else None,
            },
            secrets=("api_key", "operator_key"),
        )
        raise typer.Exit(0)
    if server is None and worker is None and replay is None:
        typer.echo("infero tui: give --server URL and/or --worker ADDR (see --help)", err=True)
        raise typer.Exit(2)
    from infero_tui.app import make_app
    from infero_tui.client import ClientError, Credentials, FleetClient
    from infero_tui.config import ConsoleConfig
    from infero_tui.feed import FleetFeed
    from infero_tui.frozen import FrozenFeed

    fleet: FleetFeed | None = None
    if replay is not None:
        try:
            fleet = FrozenFeed.replaying(replay)
        except (OSError, ValueError) as exc:
            typer.echo(f"infero tui: cannot replay {replay}: {exc}", err=True)
            raise typer.Exit(2) from None
    elif server is not None:
        try:
            fleet = FleetClient(server, Credentials(api_key, operator_key), ca_file=tls_ca_file)
        except ClientError as exc:
            typer.echo(f"infero tui: {exc}", err=True)
            raise typer.Exit(2) from None
    local = _local_context(worker, config, token_file, log_dir, unit=unit) if worker else None
    console = ConsoleConfig(read_only=read_only, settle_heap=True)
    make_app(fleet=fleet, local=local, config=console).run()


def register(app: typer.Typer) -> None:
    """Add the `tui` command."""
    app.command("tui")(tui)
