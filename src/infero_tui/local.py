"""The local connector as the console sees it: paths, log tail, diagnostics (no Textual)."""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from infero.common.settings import ConfigError
from infero.protocol.status import VersionDoc, WorkerStatusDoc
from infero_tui.feed import LocalFeed
from infero_tui.process import ConnectorProcess
from infero_tui.settings_file import load_worker_settings

LOG_FILE_NAME = "infero-llm.log"
TOKEN_FILE_NAME = "worker.token"


@dataclass(frozen=True, slots=True)
class LocalContext:
    """Everything the Local tab needs about one connector on this machine."""

    client: LocalFeed
    addr: str
    config_path: Path
    token_file: Path
    log_file: Path
    diagnostics_dir: Path
    process: ConnectorProcess | None = None
    unit: str | None = None
    """systemd unit of this connector (`infero-llm@main`); used instead of `process` when
    loaded."""


def tail_lines(path: Path, count: int) -> list[str]:
    """The last `count` lines of a text file; [] if it does not exist."""
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return [line.rstrip("\n") for line in deque(handle, maxlen=count)]
    except FileNotFoundError:
        return []


class LogFollower:
    """Reads lines appended to a log file since the last call (restarts after rotation)."""

    def __init__(self, path: Path, initial: int = 200) -> None:
        self.path = path
        self._initial = initial
        self._offset: int | None = None

    def read_new(self) -> list[str]:
        """The first call returns the last `initial` lines, later calls only new ones.

        A missing file reads as empty (it is followed from its start once it appears); an
        unreadable one (permissions) reads as empty too, and is tried again at the next call.
        """
        try:
            return self._read_new()
        except FileNotFoundError:
            self._offset = 0
            return []
        except OSError:
            return []

    def _read_new(self) -> list[str]:
        size = self.path.stat().st_size
        if self._offset is None:
            self._offset = size
            return tail_lines(self.path, self._initial)
        if size < self._offset:
            self._offset = 0
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        complete = data.rfind(b"\n") + 1
        self._offset += complete
        text = data[:complete].decode("utf-8", errors="replace")
        return text.splitlines()


def write_diagnostics(
    context: LocalContext,
    status: WorkerStatusDoc | None,
    version: VersionDoc | None,
    now: datetime,
    log_lines: int = 200,
) -> Path:
    """Write one text file with status, versions, masked settings and recent log lines."""
    from infero.common.buildinfo import BUILD

    try:
        settings: object = load_worker_settings(context.config_path).masked()
    except ConfigError as exc:
        settings = f"(could not load: {exc})"
    sections = {
        "generated": now.isoformat(),
        "console": BUILD.line("infero tui"),
        "connector address": context.addr,
        "config file": str(context.config_path),
        "log file": str(context.log_file),
        "status": status.model_dump(mode="json") if status else "(unreachable)",
        "version": version.model_dump(mode="json") if version else "(unreachable)",
        "settings (secrets masked)": settings,
    }
    lines = [f"# infero diagnostics {now:%Y-%m-%d %H:%M:%S %Z}".rstrip()]
    for title, value in sections.items():
        body = value if isinstance(value, str) else json.dumps(value, indent=2, sort_keys=True)
        lines += ["", f"## {title}", body]
    lines += ["", f"## last {log_lines} log lines", *tail_lines(context.log_file, log_lines)]
    context.diagnostics_dir.mkdir(parents=True, exist_ok=True)
    path = context.diagnostics_dir / f"infero-diagnostics-{now:%Y%m%d-%H%M%S}.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
