"""systemd units and environment files for `infero service install|uninstall` (no I/O here).

`plan(...)` says which files a service needs and what they hold; `infero.cli.service` writes or
removes them. The server is one unit (`infero.service`, as the Go original's package named
it); connectors are templates (`infero-llm@.service`, `infero-mcp@.service`) so several run
on one host, one instance per `--name`. Units run as a dynamic user with systemd-managed
state, cache, log and runtime directories and a sandbox that `systemd-analyze security` rates
2.0 or lower; `Restart=on-failure` restarts crashes but never a drain-and-shutdown, which exits 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

Kind = Literal["server", "llm", "mcp"]

DEFAULT_INSTANCE = "main"
"""Connector instance name when `--name` is not given (`infero-llm@main`)."""

_ENV_BASE = {"server": "server", "llm": "worker", "mcp": "mcp"}
"""Environment file stem per kind (`/etc/infero/server.env`, `worker.env` as in the original)."""

_STOP_TIMEOUT = {"server": "330s", "llm": "90s", "mcp": "90s"}
"""Longer than the default DRAIN_TIMEOUT (5m server, 1m connectors): systemd must not kill a
drain that is still allowed to run. Raise it with a drop-in when DRAIN_TIMEOUT is raised."""

_DESCRIPTION = {
    "server": "infero server: OpenAI-compatible gateway for private LLM and MCP connectors",
    "llm": "infero LLM connector %i",
    "mcp": "infero MCP connector %i",
}

_ENV_EXAMPLE = {
    "server": """\
# Settings of `infero server` (KEY=value lines; see docs/configuration.md).
# PORT=8080
# API_KEY=change-me
# CLIENT_KEY=change-me
# OPERATOR_KEY=change-me
# METRICS_PORT=9090
# TLS_CERT_FILE=/etc/letsencrypt/live/gw.example.com/fullchain.pem
# TLS_KEY_FILE=/etc/letsencrypt/live/gw.example.com/privkey.pem
# TRUSTED_PROXIES=127.0.0.1
# DRAIN_TIMEOUT=5m
# REDIS_ADDR=redis://redis.internal:6379/0
# PEER_KEY=change-me
# INSTANCE_ADDR=http://10.0.0.5:8080
""",
    "llm": """\
# Settings of `infero llm` (KEY=value lines; see docs/configuration.md).
# SERVER_URL=wss://gw.example.com/api/llm/connect
# CLIENT_KEY=change-me
# COMPLETION_BASE_URL=http://127.0.0.1:11434/v1
# COMPLETION_API_KEY=
# MAX_CONCURRENCY=2
# STATUS_ADDR=127.0.0.1:4555
# TLS_CA_FILE=/etc/infero/ca.pem
# DRAIN_TIMEOUT=1m
""",
    "mcp": """\
# Settings of `infero mcp` (KEY=value lines; see docs/mcp.md).
# SERVER_URL=wss://gw.example.com/api/mcp/connect
# CLIENT_KEY=change-me
# CLIENT_ID=my-mcp-server-123
# PROVIDER_URL=http://127.0.0.1:7777/mcp
# AUTH_TOKEN=
# TLS_CA_FILE=/etc/infero/ca.pem
""",
}

_HARDENING = """\
NoNewPrivileges=yes
ProtectSystem=strict
PrivateTmp=yes
PrivateDevices=yes
PrivateMounts=yes
PrivateUsers=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
CapabilityBoundingSet=
AmbientCapabilities=
DevicePolicy=closed
KeyringMode=private
UMask=0077
"""


@dataclass(frozen=True, slots=True)
class ServiceFile:
    """One file a service needs."""

    path: PurePosixPath
    """Where it goes (before any `--root` prefix)."""
    text: str
    mode: int
    keep_if_present: bool = False
    """Environment files hold the operator's settings and secrets: never overwritten."""


@dataclass(frozen=True, slots=True)
class ServicePlan:
    """What `infero service install KIND` writes and the commands that start it."""

    unit_name: str
    """The file name of the unit (`infero.service`, `infero-llm@.service`)."""
    instance: str
    """What `systemctl` is given (`infero`, `infero-llm@main`)."""
    unit: ServiceFile
    env: ServiceFile
    user: bool

    def install_lines(self) -> list[str]:
        """What to run once the environment file holds the settings."""
        scope = "--user " if self.user else ""
        return [f"systemctl {scope}daemon-reload", f"systemctl {scope}enable --now {self.instance}"]


def _check_name(name: str) -> str:
    allowed = name.replace("-", "").replace("_", "").replace(".", "")
    if not name or not allowed.isalnum() or not name.isascii() or name[0] in "-.":
        raise ValueError(f"{name!r} is not a service name (letters, digits, '-', '_', '.')")
    return name


def plan(
    kind: Kind,
    *,
    name: str | None,
    user: bool,
    executable: str,
    config_home: PurePosixPath,
) -> ServicePlan:
    """The files and commands of one service.

    `config_home` is the user's config dir (`~/.config`) for `user`, else unused: system
    services read `/etc/infero/` and install into `/etc/systemd/system/`.
    """
    base = _ENV_BASE[kind]
    env_dir = config_home / "infero" if user else PurePosixPath("/etc/infero")
    unit_dir = config_home / "systemd" / "user" if user else PurePosixPath("/etc/systemd/system")
    if kind == "server":
        stem = f"infero-{_check_name(name)}" if name else "infero"
        env_path = env_dir / (f"{base}-{name}.env" if name else f"{base}.env")
        unit_name, instance = f"{stem}.service", stem
        unit_text = _server_unit(executable, env_path, stem, user)
    else:
        instance_name = _check_name(name) if name else DEFAULT_INSTANCE
        env_path = env_dir / (
            f"{base}.env" if instance_name == DEFAULT_INSTANCE else f"{base}-{instance_name}.env"
        )
        unit_name, instance = f"infero-{kind}@.service", f"infero-{kind}@{instance_name}"
        unit_text = _connector_unit(kind, executable, env_dir, user)
    return ServicePlan(
        unit_name=unit_name,
        instance=instance,
        unit=ServiceFile(unit_dir / unit_name, unit_text, 0o644),
        env=ServiceFile(env_path, _ENV_EXAMPLE[kind], 0o600, keep_if_present=True),
        user=user,
    )


def _unit(description: str, service: str, user: bool) -> str:
    after = "" if user else "After=network-online.target\nWants=network-online.target\n"
    wanted_by = "default.target" if user else "multi-user.target"
    return (
        f"# Written by `infero service install`; see docs/deploy.md.\n"
        f"[Unit]\nDescription={description}\n{after}\n"
        f"[Service]\n{service}{_HARDENING}\n"
        f"[Install]\nWantedBy={wanted_by}\n"
    )


def _common(user: bool, directory: str, stop_timeout: str) -> str:
    # A user service runs as its user (who may read their own home); a system one as a
    # dynamic user that sees no home at all.
    who = "ProtectHome=read-only\n" if user else "DynamicUser=yes\nProtectHome=yes\n"
    return (
        f"Type=exec\n{who}"
        f"StateDirectory={directory}\nCacheDirectory={directory}\n"
        f"LogsDirectory={directory}\nRuntimeDirectory={directory}\n"
        "Restart=on-failure\nRestartSec=5s\nRestartPreventExitStatus=2\n"
        f"KillMode=mixed\nTimeoutStopSec={stop_timeout}\n"
    )


def _server_unit(executable: str, env_path: PurePosixPath, stem: str, user: bool) -> str:
    directory = f"infero/{stem.removeprefix('infero-') if stem != 'infero' else 'server'}"
    service = (
        f"ExecStart={executable} server\n"
        "ExecReload=/bin/kill -HUP $MAINPID\n"
        f"EnvironmentFile=-{env_path}\n"
        "# a thousand connectors and their clients need more than the default 1024 descriptors\n"
        "LimitNOFILE=65536\n"
        f"{_common(user, directory, _STOP_TIMEOUT['server'])}"
    )
    return _unit(_DESCRIPTION["server"], service, user)


def _connector_unit(kind: Kind, executable: str, env_dir: PurePosixPath, user: bool) -> str:
    base = _ENV_BASE[kind]
    directory = f"infero/{kind}-%i"
    # The control token is written beside the config file: inside the state directory for a
    # system service; the user's own config dir (made writable) for a user service.
    config_home = (
        "ReadWritePaths=%E/infero\n" if user else f"Environment=XDG_CONFIG_HOME=%S/{directory}\n"
    )
    service = (
        f"ExecStart={executable} {kind}\n"
        "Environment=RECONNECT=true\n"
        f"Environment=LOG_DIR=%L/{directory}\n"
        f"{config_home}"
        f"EnvironmentFile=-{env_dir / (base + '.env')}\n"
        f"EnvironmentFile=-{env_dir / (base + '-%i.env')}\n"
        f"{_common(user, directory, _STOP_TIMEOUT[kind])}"
    )
    return _unit(_DESCRIPTION[kind], service, user)


def is_template(unit_name: str) -> bool:
    """True for `name@.service`."""
    return unit_name.endswith("@.service")
