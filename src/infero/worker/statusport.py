"""The connector's local status and control port (`STATUS_ADDR`).

`GET /status`, `GET /version`; `POST /control/drain|undrain|shutdown` for loopback peers
presenting `X-Auth-Token` (the content of `worker.token` beside the config file).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from aiohttp import web

from infero.common.buildinfo import BUILD
from infero.common.connector import HttpPorts, StartupError
from infero.common.linkclient import Link
from infero.protocol.status import ConnectorState, VersionDoc, WorkerStatusDoc
from infero.worker.settings import parse_addr

logger = logging.getLogger(__name__)

TOKEN_FILE = "worker.token"
LOG_FILE = "infero-llm.log"
"""The connector's log file name inside `LOG_DIR`."""


@dataclass(frozen=True, slots=True)
class StatusFiles:
    """Where the connector's files are, reported in `/status` so `infero tui --worker ADDR`
    finds them without being told."""

    config_file: str = ""
    token_file: str = ""
    log_file: str = ""

    @classmethod
    def of(
        cls, config_path: str | None, token: Path, log_dir: str, log_name: str = LOG_FILE
    ) -> StatusFiles:
        """Absolute paths; no config file or log directory reads as ""."""
        log = (Path(log_dir).expanduser() / log_name).resolve() if log_dir else None
        return cls(
            config_file=str(Path(config_path).expanduser().resolve()) if config_path else "",
            token_file=str(token.expanduser().resolve()),
            log_file=str(log) if log else "",
        )


class Controllable(Protocol):
    """What the status port reads and steers (the `Connector`)."""

    def status_doc(self) -> WorkerStatusDoc:
        """The current `/status` document."""

    def drain(self, *, by: str = "") -> None:
        """Start draining."""

    def undrain(self, *, by: str = "") -> bool:
        """Resume taking requests; False when a shutdown is under way."""

    def shutdown(self, *, by: str = "") -> None:
        """Drain, then exit."""


def connector_state(
    *,
    stopped: bool,
    draining: bool,
    probed: bool,
    healthy: bool,
    connected: bool,
    busy: bool,
    started: bool,
    link_error: str,
) -> ConnectorState:
    """The `/status` state name of a connector (`infero llm` or `infero mcp`)."""
    if stopped:
        return "terminating"
    if draining:
        return "draining"
    if probed and not healthy:
        return "not_ready"
    if connected:
        return "connected_busy" if busy else "connected_idle"
    if not started:
        return "disconnected"
    return "error" if link_error else "connecting"


def last_heartbeat(link: Link | None, clock: Callable[[], float]) -> datetime | None:
    """When the last frame from the server arrived on `link` (None without a link)."""
    if link is None:
        return None
    age = clock() - link.last_received
    return datetime.now(UTC) - timedelta(seconds=max(0.0, age))


def token_path(config_path: str | None) -> Path:
    """`worker.token` in the directory of the config file (current directory if none)."""
    directory = Path(config_path).expanduser().parent if config_path else Path.cwd()
    return directory / TOKEN_FILE


def load_or_create_token(path: Path) -> str:
    """Read the token, or create 64 random hex chars with mode 0600 on first run."""
    try:
        existing = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        if path.stat().st_mode & 0o077:
            logger.warning("%s is readable by other users; run: chmod 600 %s", path, path)
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    os.chmod(path, 0o600)
    logger.info("created control token %s (mode 0600)", path)
    return token


def is_loopback(peer: str | None) -> bool:
    """Whether a peer address is a loopback address (IPv4 or IPv6)."""
    if not peer:
        return False
    try:
        return ipaddress.ip_address(peer.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


async def serve_status(
    ports: HttpPorts,
    target: Controllable,
    addr: str,
    config_path: str | None,
    *,
    log_dir: str = "",
    log_name: str = LOG_FILE,
) -> str:
    """Serve the status port of `target` on `addr` (`STATUS_ADDR`); returns its base URL.

    The control token is read from (or created 0600 in) `worker.token` beside the config;
    `/status` reports the config, token and log file paths (`log_name` inside `log_dir`).
    """
    host, port = parse_addr(addr)
    path = token_path(config_path)
    try:
        token = load_or_create_token(path)
    except OSError as exc:
        raise StartupError(f"cannot create the control token {path}: {exc}") from None
    files = StatusFiles.of(config_path, path, log_dir, log_name)
    app = create_status_app(target, token, files)
    bound = await ports.serve(app, host, port, "STATUS_ADDR")
    url = f"http://{f'[{host}]' if ':' in host else host}:{bound}"
    logger.info("status port on %s", url)
    return url


def create_status_app(
    target: Controllable, token: str, files: StatusFiles = StatusFiles()
) -> web.Application:
    """The aiohttp app of the status port; `files` fills the paths in `/status`."""
    paths = {name: value for name, value in asdict(files).items() if value}

    async def status(_: web.Request) -> web.Response:
        doc = target.status_doc()
        if paths:
            doc = doc.model_copy(update=paths)
        return web.Response(text=doc.model_dump_json(), content_type="application/json")

    async def version(_: web.Request) -> web.Response:
        doc = VersionDoc(version=BUILD.version, build_sha=BUILD.sha, build_date=BUILD.date)
        return web.Response(text=doc.model_dump_json(), content_type="application/json")

    async def control(request: web.Request) -> web.Response:
        if not is_loopback(request.remote):
            return web.json_response({"error": "control is allowed from loopback only"}, status=403)
        # Header bytes that are not UTF-8 arrive as lone surrogates; "surrogatepass" encodes
        # them without failing, and they simply do not match the (hex) token.
        given = request.headers.get("X-Auth-Token", "").encode("utf-8", "surrogatepass")
        if not hmac.compare_digest(given, token.encode()):
            return web.json_response({"error": "missing or wrong X-Auth-Token"}, status=401)
        action = request.match_info["action"]
        who = f"status port ({request.remote})"
        if action == "drain":
            target.drain(by=who)
        elif action == "undrain":
            if not target.undrain(by=who):
                return web.json_response({"error": "a shutdown is under way"}, status=409)
        else:
            target.shutdown(by=who)
        return web.json_response({"ok": True, "action": action})

    app = web.Application()
    app.router.add_get("/status", status)
    app.router.add_get("/version", version)
    app.router.add_post(r"/control/{action:drain|undrain|shutdown}", control)
    return app
