"""Turn a settings model into typer options, so each setting is declared exactly once.

Every option's help names its env var and default. Click only parses flags: the
environment and the YAML file are merged by `infero.common.settings.load_settings`,
which keeps the documented precedence (default < file < env < flag) and gives one
clear error line per bad value.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar, get_args, get_origin

import typer
from typer.core import TyperCommand, TyperGroup

from infero.common.buildinfo import BUILD
from infero.common.durations import format_duration
from infero.common.settings import (
    ConfigError,
    SettingsModel,
    default_config_candidates,
    field_opts,
    flag_name,
    is_duration,
    load_settings,
    masked_value,
    read_yaml,
    resolve_config_file,
)

S = TypeVar("S", bound=SettingsModel)

_CONFIG = "config"
_PRINT = "print_config"
_VERSION = "version"


def _is_bool(annotation: Any) -> bool:
    if annotation is bool:
        return True
    if get_origin(annotation) is Annotated:
        return _is_bool(get_args(annotation)[0])
    return False


def _shown_default(value: Any, secret: bool) -> str:
    if secret:
        return "(empty)" if not value else "***"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value) or "(empty)"
    if value is None or value == "":
        return "(empty)"
    return str(value)


def _parameters(cls: type[SettingsModel], filename: str) -> list[inspect.Parameter]:
    params: list[inspect.Parameter] = []
    for name, opt in field_opts(cls).items():
        info = cls.model_fields[name]
        default = info.get_default(call_default_factory=True)
        names = [flag_name(name), *opt.aliases] + ([opt.short] if opt.short else [])
        shown = (
            format_duration(default)
            if is_duration(cls, name) and isinstance(default, int | float)
            else _shown_default(default, opt.secret)
        )
        if _is_bool(info.annotation):
            decls = [f"{flag_name(name)}/--no-{name.replace('_', '-')}", *opt.aliases]
            if opt.short:
                decls.append(opt.short)
            option = typer.Option(
                None, *decls, help=f"{opt.help} [env: {opt.env}] [default: {shown}]"
            )
            annotation: Any = bool | None
        else:
            option = typer.Option(
                None,
                *names,
                help=f"{opt.help} [env: {opt.env}] [default: {shown}]",
                metavar=opt.env,
            )
            annotation = str | None
        params.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation
            )
        )
    params.append(
        inspect.Parameter(
            _CONFIG,
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                None,
                "--config",
                help=f"YAML settings file (snake_case keys). [env: CONFIG_FILE] "
                f"[default: first of the user config dir and /etc/infero, file {filename}]",
                metavar="CONFIG_FILE",
            ),
            annotation=str | None,
        )
    )
    params.append(
        inspect.Parameter(
            _PRINT,
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                False,
                "--print-config",
                help=PRINT_CONFIG_HELP,
            ),
            annotation=bool,
        )
    )
    params.append(
        inspect.Parameter(
            _VERSION,
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(False, "--version", help="Print version, git sha and build date."),
            annotation=bool,
        )
    )
    return params


def resolve(
    cls: type[S], *, filename: str, config: str | None, flags: dict[str, Any]
) -> tuple[S, str, bool]:
    """Load settings for a command: the settings, the config path (the file read, else the
    default location, beside which a connector keeps its token) and whether it was read."""
    explicit = config or os.environ.get("CONFIG_FILE") or None
    path, exists = resolve_config_file(explicit, filename)
    values = read_yaml(path) if exists else {}
    settings = load_settings(
        cls,
        file_values=values,
        file_path=path if exists else None,
        environ=os.environ,
        flags=flags,
    )
    return settings, str(path), exists


def config_file_shown(filename: str, path: str, read: bool) -> str:
    """What `--print-config` says of the config file: the one read, or that none was."""
    if read:
        return path
    looked = " or ".join(str(p) for p in default_config_candidates(filename))
    return f"none (not given; not found at {looked})"


def print_config(values: dict[str, Any], *, secrets: tuple[str, ...] = ()) -> None:
    """`--print-config` of a command: `values` as JSON, secrets as `***` (when set) and
    credentials inside URLs masked."""
    shown = {k: ("***" if k in secrets and v else masked_value(v)) for k, v in values.items()}
    typer.echo(json.dumps(shown, indent=2, default=str))


PRINT_CONFIG_HELP = "Print the resolved settings (secrets masked) and exit."


def settings_command(
    cls: type[S],
    *,
    component: str,
    filename: str,
    run: Callable[[S, str], int | None],
    doc: str,
) -> Callable[..., None]:
    """Build a typer command function: options from `cls`, then `run(settings, config_path)`."""

    def command(**kwargs: Any) -> None:
        if kwargs.pop(_VERSION):
            typer.echo(BUILD.line(component))
            raise typer.Exit(0)
        config = kwargs.pop(_CONFIG)
        print_config = kwargs.pop(_PRINT)
        try:
            settings, path, read = resolve(cls, filename=filename, config=config, flags=kwargs)
        except ConfigError as exc:
            typer.echo(f"{component}: {exc}", err=True)
            raise typer.Exit(2) from None
        if print_config:
            shown = config_file_shown(filename, path, read)
            typer.echo(json.dumps({"config_file": shown, **settings.masked()}, indent=2))
            raise typer.Exit(0)
        code = run(settings, path)
        if code:
            raise typer.Exit(code)

    command.__signature__ = inspect.Signature(_parameters(cls, filename))  # type: ignore[attr-defined]
    command.__doc__ = doc
    command.__name__ = component.replace("-", "_")
    return command


def versioned(component: str) -> type[TyperCommand]:
    """A command class whose `--help` starts with the version line, as in the Go original."""

    class Versioned(TyperCommand):
        def get_help(self, ctx: Any) -> str:  # Any: typer's vendored click Context is private
            return f"{BUILD.line(component)}\n\n{super().get_help(ctx)}"

    return Versioned


class VersionedGroup(TyperGroup):
    """`infero --help` starts with the version line too."""

    def get_help(self, ctx: Any) -> str:  # Any: typer's vendored click Context is private
        return f"{BUILD.line('infero')}\n\n{super().get_help(ctx)}"


def fail(component: str, message: str, code: int = 1) -> None:
    """Print one error line to stderr and exit with `code`."""
    print(f"{component}: {message}", file=sys.stderr)
    raise typer.Exit(code)
