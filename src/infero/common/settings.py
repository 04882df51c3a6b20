"""Settings: built-in default < YAML file < environment < command-line flag.

Each runtime declares one pydantic model whose fields carry an `Opt` (env name, help,
secret flag). `load_settings` merges the four sources and turns any validation failure
into one `ConfigError` line that names the setting the way the user wrote it.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import platformdirs
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)

from infero.common.durations import parse_duration
from infero.common.tls import check_ca_file

APP_NAME = "infero"


@dataclass(frozen=True, slots=True)
class Opt:
    """How a settings field is named outside Python (attach with `Annotated`)."""

    env: str
    help: str
    short: str | None = None
    secret: bool = False
    aliases: tuple[str, ...] = ()
    """Extra long flag names, e.g. `--mcp-http-url` for `provider_url`."""
    trailing: bool = False
    """Listed after the command's own settings (a base model's reconnect, drain and log ones)."""
    old_env: tuple[str, ...] = ()
    """Env names the Go original read for this setting; used when `env` is not set."""
    old_keys: tuple[str, ...] = ()
    """YAML keys of the Go original that are not just the field name without underscores."""


class ConfigError(Exception):
    """A setting could not be used; the message is one line that names it."""


class SettingsModel(BaseModel):
    """Base for every runtime's settings: immutable, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    replaced_env: ClassVar[Mapping[str, str]] = {}
    """Env names of the Go original that infero does not read -> what to set instead."""

    def masked(self) -> dict[str, Any]:
        """The resolved settings as plain data: every secret replaced by `***`, credentials
        inside URLs masked (`mask_url_credentials`)."""
        data = {k: masked_value(v) for k, v in self.model_dump(mode="json").items()}
        for name, opt in field_opts(type(self)).items():
            if opt.secret and data.get(name):
                data[name] = "***"
        return {name: data[name] for name in field_opts(type(self))} | data


S = TypeVar("S", bound=SettingsModel)


def mask_url_credentials(value: str) -> str:
    """`http://user:pw@host/x` -> `http://user:***@host/x`; a bare `http://token@host` ->
    `http://***@host`. Anything that is not a URL with credentials is returned as it is."""
    parts = urlsplit(value)
    if not parts.scheme or "@" not in parts.netloc:
        return value
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:***" if colon else "***"
    return urlunsplit(parts._replace(netloc=f"{shown}@{hostport}"))


def masked_value(value: Any) -> Any:
    """`value` with credentials inside URLs masked (strings, and the items of lists)."""
    if isinstance(value, str):
        return mask_url_credentials(value)
    if isinstance(value, list | tuple):
        return [masked_value(item) for item in value]
    return value


def field_opts(cls: type[SettingsModel]) -> dict[str, Opt]:
    """The `Opt` of every field that has one: declaration order, `trailing` ones last.

    This is the order of `--help`, `--print-config`, docs and the console's editor.
    """
    out: dict[str, Opt] = {}
    for name, info in cls.model_fields.items():
        for meta in info.metadata:
            if isinstance(meta, Opt):
                out[name] = meta
    return dict(sorted(out.items(), key=lambda item: item[1].trailing))


def is_duration(cls: type[SettingsModel], name: str) -> bool:
    """Whether the field is a `Duration` (its default is shown as `15s`, `5m`, ...)."""
    return any(
        isinstance(meta, BeforeValidator) and meta.func is _duration
        for meta in cls.model_fields[name].metadata
    )


def flag_name(field: str) -> str:
    """`max_concurrency` -> `--max-concurrency`."""
    return "--" + field.replace("_", "-")


# ---- reusable field types ---------------------------------------------------------------


def _duration(value: Any) -> Any:
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return parse_duration(value)
    return value


def _bool(value: Any) -> Any:
    if isinstance(value, str):
        low = value.strip().lower()
        if low in {"1", "t", "true", "yes", "y", "on"}:
            return True
        if low in {"0", "f", "false", "no", "n", "off", ""}:
            return False
        raise ValueError(f"{value!r} is not a boolean (use true or false)")
    return value


def _csv(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _url(*schemes: str) -> Any:
    def check(value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in schemes or not parts.netloc:
            allowed = " or ".join(f"{s}://" for s in schemes)
            raise ValueError(f"{value!r} is not a valid URL (expected {allowed}host[:port]/path)")
        try:
            _ = parts.port
        except ValueError as exc:
            raise ValueError(f"{value!r} has an invalid port") from exc
        return value

    return check


Duration = Annotated[float, BeforeValidator(_duration)]
"""Seconds, written as `30s`, `5m`, `1h30m`, `2.5` or `-1`; shown in the human form."""
Bool = Annotated[bool, BeforeValidator(_bool)]
CsvList = Annotated[tuple[str, ...], BeforeValidator(_csv)]
LogLevel = Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)]
LogFormat = Annotated[Literal["text", "json"], BeforeValidator(_lower)]
WsUrl = Annotated[str, AfterValidator(_url("ws", "wss"))]


def url_list(value: str) -> list[str]:
    """The URLs of a comma-separated list (blanks around commas ignored)."""
    return [part.strip() for part in value.split(",") if part.strip()]


def _ws_urls(value: str) -> str:
    check = _url("ws", "wss")
    urls = url_list(value)
    for url in urls:
        check(url)
    return ",".join(urls)


WsUrls = Annotated[str, AfterValidator(_ws_urls)]
"""One or several ws:// or wss:// URLs, comma-separated."""
HttpUrl = Annotated[str, AfterValidator(_url("http", "https"))]


def _port(value: int) -> int:
    if not 0 <= value <= 65535:
        raise ValueError(f"{value} is not a TCP port (0-65535)")
    return value


Port = Annotated[int, AfterValidator(_port)]

_ANY_HOST = {"", "0.0.0.0", "::", "[::]", "*"}


def _listen_port(value: Any) -> Any:
    """`9090`, `:9090` or `0.0.0.0:9090` (the Go original's forms) -> 9090."""
    if not isinstance(value, str) or ":" not in value:
        return value
    host, _, port = value.strip().rpartition(":")
    if host not in _ANY_HOST:
        raise ValueError(
            f"{value!r}: give only the port (METRICS_PORT={port}); the listener binds "
            "HOST for the server and all interfaces for a connector"
        )
    return port


ListenPort = Annotated[Port, BeforeValidator(_listen_port)]
"""A port that also accepts the original's `:9090` and `0.0.0.0:9090`."""


# ---- what every connector shares ---------------------------------------------------------

ServerUrl = Annotated[
    WsUrls,
    Opt(
        "SERVER_URL",
        "Server link URL (ws:// or wss://); several, comma-separated, are tried in turn.",
    ),
]
"""`SERVER_URL`; each connector declares it with its own default link path."""


class ConnectorSettings(SettingsModel):
    """Settings of every connector (`infero llm`, `infero mcp`): link, reconnect, drain, logs.

    Subclasses redeclare `server_url` as `ServerUrl` with their default (it keeps its place)
    and add their own fields, which `--help` lists between the link settings and the
    `trailing` ones (reconnect, drain, metrics, logs).
    """

    server_url: ServerUrl
    client_key: Annotated[
        str, Opt("CLIENT_KEY", "Shared secret presented to the server.", secret=True)
    ] = ""
    client_id: Annotated[
        str, Field(max_length=128), Opt("CLIENT_ID", "Stable connector id; random if empty.")
    ] = ""
    client_name: Annotated[
        str, Field(max_length=128), Opt("CLIENT_NAME", "Display name; the hostname if empty.")
    ] = ""
    tls_ca_file: Annotated[
        str,
        AfterValidator(check_ca_file),
        Opt("TLS_CA_FILE", "PEM CA certificates that sign a wss:// server (private CA)."),
    ] = ""
    reconnect: Annotated[
        Bool,
        Opt(
            "RECONNECT",
            "Keep reconnecting with backoff instead of exiting.",
            short="-r",
            trailing=True,
        ),
    ] = False
    metrics_port: Annotated[
        ListenPort | None,
        Opt(
            "METRICS_PORT",
            "Serve connector metrics on this port.",
            trailing=True,
            old_keys=("metricsaddr",),
        ),
    ] = None
    drain_timeout: Annotated[
        Duration,
        Opt(
            "DRAIN_TIMEOUT",
            "On shutdown or SIGTERM, wait this long for in-flight work (0 now, -1 forever).",
            trailing=True,
        ),
    ] = 60.0
    exit_when_drained: Annotated[
        Bool,
        Opt(
            "EXIT_WHEN_DRAINED",
            "A drain also exits once idle, like a shutdown (default: stay linked).",
            trailing=True,
        ),
    ] = False
    log_dir: Annotated[
        str, Opt("LOG_DIR", "Also write a rotating log file here.", trailing=True)
    ] = ""
    log_level: Annotated[
        LogLevel, Opt("LOG_LEVEL", "debug, info, warning or error.", trailing=True)
    ] = "info"
    log_format: Annotated[LogFormat, Opt("LOG_FORMAT", "text or json.", trailing=True)] = "text"

    def display_name(self) -> str:
        """`CLIENT_NAME`, else this machine's hostname."""
        return self.client_name or socket.gethostname() or "connector"


# ---- file locations ---------------------------------------------------------------------


def default_config_candidates(filename: str) -> list[Path]:
    """Where a config file is looked for when `CONFIG_FILE`/`--config` is not given."""
    user = Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)) / filename
    if sys.platform.startswith("linux"):
        system = Path("/etc") / APP_NAME / filename
    else:
        system = Path(platformdirs.site_config_dir(APP_NAME, appauthor=False)) / filename
    return [user, system]


def resolve_config_file(explicit: str | None, filename: str) -> tuple[Path, bool]:
    """The config path to use and whether it exists; an explicit missing file is an error."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"CONFIG_FILE (--config): no such file: {path}")
        return path, True
    candidates = default_config_candidates(filename)
    for path in candidates:
        if path.is_file():
            return path, True
    return candidates[0], False


def default_log_dir() -> Path:
    """Default `LOG_DIR` when none is configured."""
    return Path(platformdirs.user_log_dir(APP_NAME, appauthor=False))


# ---- loading ----------------------------------------------------------------------------


def read_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML mapping; any problem is a `ConfigError` naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"config file {path}: not valid YAML{where}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of settings at the top level")
    return {str(k): v for k, v in data.items()}


def load_settings(
    cls: type[S],
    *,
    file_values: Mapping[str, Any] | None = None,
    file_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> S:
    """Merge default < file < env < flags into `cls`; raise one-line `ConfigError`s."""
    opts = field_opts(cls)
    source: dict[str, str] = {}
    merged: dict[str, Any] = {}
    where = f"config file {file_path}" if file_path else "config file"
    old_keys = _old_yaml_keys(cls, opts)
    for key, value in (file_values or {}).items():
        name = key.replace("-", "_").lower()
        if name == "configfile":
            raise ConfigError(f"{where}: {key!r} has no effect in a file; use CONFIG_FILE/--config")
        if name not in cls.model_fields:
            name = old_keys.get(name, "")
        if not name:
            raise ConfigError(f"{where}: unknown setting {key!r}")
        if name in merged:
            raise ConfigError(f"{where}: {key!r} sets {name} a second time")
        merged[name] = value
        source[name] = f"{key} in {file_path}" if file_path else key
    env = environ if environ is not None else {}
    for old, new in cls.replaced_env.items():
        if old in env:
            raise ConfigError(f"{old} (environment) is not read by infero; use {new}")
    for name, opt in opts.items():
        for env_name in (opt.env, *opt.old_env):
            if env_name in env:
                merged[name] = env[env_name]
                source[name] = f"{env_name} (environment)"
                break
    if "log_level" in opts and "LOG_LEVEL" not in env and env.get("DEBUG"):
        try:
            debug = _bool(env["DEBUG"])
        except ValueError:
            raise ConfigError(
                f"invalid setting DEBUG (environment): {env['DEBUG']!r}: use true or false "
                "(or LOG_LEVEL=debug)"
            ) from None
        if debug:
            merged["log_level"] = "debug"
            source["log_level"] = "DEBUG (environment)"
    for name, value in (flags or {}).items():
        if value is not None:
            merged[name] = value
            source[name] = flag_name(name)
    try:
        return cls.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_first_error(cls, exc, source, opts)) from None


def _old_yaml_keys(cls: type[SettingsModel], opts: Mapping[str, Opt]) -> dict[str, str]:
    """The Go original's YAML keys (field names lower-cased, no underscores) -> field names."""
    out = {name.replace("_", ""): name for name in cls.model_fields}
    for name, opt in opts.items():
        out.update(dict.fromkeys(opt.old_keys, name))
    return out


def _first_error(
    cls: type[SettingsModel],
    exc: ValidationError,
    source: Mapping[str, str],
    opts: Mapping[str, Opt],
) -> str:
    err = exc.errors(include_url=False)[0]
    loc = err.get("loc") or ()
    field = str(loc[0]) if loc else ""
    if field in source:
        who = source[field]
    elif field in opts:
        who = f"{opts[field].env} ({flag_name(field)})"
    else:
        who = field or cls.__name__
    value = err.get("input")
    msg = str(err.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    shown = "" if isinstance(value, dict) or field not in source else f" {value!r}:"
    if opts.get(field) and opts[field].secret:
        shown = ""
    return f"invalid setting {who}:{shown} {msg}"
