"""`infero service install|uninstall server|llm|mcp`: systemd units and environment files."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path, PurePosixPath
from typing import Annotated

import typer

from infero.cli.options import fail
from infero.common.units import Kind, ServiceFile, ServicePlan, is_template, plan

service = typer.Typer(
    name="service",
    help="Install or remove systemd units for `infero server`, `infero llm`, `infero mcp`.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

KindArg = Annotated[Kind, typer.Argument(help="server, llm or mcp.", show_default=False)]
Name = Annotated[
    str | None,
    typer.Option(
        "--name",
        help="Server: unit infero-NAME. Connectors: instance infero-llm@NAME (default main), "
        "settings in worker-NAME.env.",
    ),
]
User = Annotated[
    bool,
    typer.Option("--user", help="A user service (~/.config/systemd/user, ~/.config/infero)."),
]
Root = Annotated[
    Path | None,
    typer.Option("--root", help="Write under this staging directory instead of / (packagers)."),
]

COMPONENT = "infero service"


def _default_executable() -> str:
    beside = Path(sys.executable).parent / "infero"
    if beside.is_file():
        return str(beside)
    return shutil.which("infero") or "/usr/bin/infero"


def _config_home(user: bool) -> PurePosixPath:
    if not user:
        return PurePosixPath("/etc")
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return PurePosixPath(xdg) if xdg else PurePosixPath(Path.home() / ".config")


def _plan(kind: Kind, name: str | None, user: bool, executable: str) -> ServicePlan:
    if not executable.startswith("/"):
        fail(COMPONENT, f"--bin must be an absolute path, not {executable!r}", 2)
    try:
        return plan(
            kind, name=name, user=user, executable=executable, config_home=_config_home(user)
        )
    except ValueError as exc:
        fail(COMPONENT, f"--name: {exc}", 2)
        raise  # unreachable: fail() exits


def _staged(root: Path | None, path: PurePosixPath) -> Path:
    return (root or Path("/")) / path.relative_to("/")


def _write(target: Path, file: ServiceFile) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, file.mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(file.text)
    os.chmod(target, file.mode)


@service.command("install")
def install(
    kind: KindArg,
    name: Name = None,
    user: User = False,
    root: Root = None,
    executable: Annotated[
        str | None,
        typer.Option("--bin", help="The infero executable the unit runs [default: this one]."),
    ] = None,
) -> None:
    """Write the unit and its environment file, then print the systemctl lines to start it."""
    chosen = _plan(kind, name, user, executable or _default_executable())
    unit = _staged(root, chosen.unit.path)
    env = _staged(root, chosen.env.path)
    try:
        _write(unit, chosen.unit)
        typer.echo(f"wrote {unit}")
        if env.exists():
            typer.echo(f"kept {env} (it holds your settings)")
        else:
            _write(env, chosen.env)
            typer.echo(f"wrote {env} (mode 0600): put your settings there")
    except OSError as exc:
        hint = "" if user or root else " (run as root, or use --user)"
        fail(COMPONENT, f"cannot write {exc.filename}: {exc.strerror}{hint}")
    typer.echo("then run:")
    for line in chosen.install_lines():
        typer.echo(f"  {line}")


def _other_instances(chosen: ServicePlan, root: Path | None) -> list[Path]:
    """Environment files of other instances of the same connector template."""
    folder = _staged(root, chosen.env.path.parent)
    stem = chosen.env.path.name.split("-")[0].removesuffix(".env")
    own = _staged(root, chosen.env.path)
    candidates = [folder / f"{stem}.env", *folder.glob(f"{stem}-*.env")]
    return [p for p in candidates if p != own and p.exists()]


@service.command("uninstall")
def uninstall(
    kind: KindArg,
    name: Name = None,
    user: User = False,
    root: Root = None,
    purge: Annotated[
        bool, typer.Option("--purge", help="Also remove an environment file you have edited.")
    ] = False,
) -> None:
    """Remove what `install` wrote (an edited environment file only with --purge)."""
    chosen = _plan(kind, name, user, _default_executable())
    unit = _staged(root, chosen.unit.path)
    env = _staged(root, chosen.env.path)
    wants = "default.target.wants" if user else "multi-user.target.wants"
    link = unit.parent / wants / f"{chosen.instance}.service"
    try:
        link.unlink(missing_ok=True)
        others = _other_instances(chosen, root) if is_template(chosen.unit_name) else []
        if others:
            typer.echo(f"kept {unit} (other instances use it: {', '.join(map(str, others))})")
        elif unit.exists():
            unit.unlink()
            typer.echo(f"removed {unit}")
        if env.exists():
            edited = env.read_text(encoding="utf-8") != chosen.env.text
            if edited and not purge:
                typer.echo(f"kept {env} (you edited it; --purge removes it)")
            else:
                env.unlink()
                typer.echo(f"removed {env}")
    except OSError as exc:
        hint = "" if user or root else " (run as root, or use --user)"
        fail(COMPONENT, f"cannot remove {exc.filename}: {exc.strerror}{hint}")
    typer.echo("then run:")
    scope = "--user " if user else ""
    typer.echo(f"  systemctl {scope}stop {chosen.instance}")
    typer.echo(f"  systemctl {scope}daemon-reload")


def register(app: typer.Typer) -> None:
    """Add the `service` command group."""
    app.add_typer(service)
