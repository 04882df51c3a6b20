"""The local connector as the console sees it: paths, log tail, diagnostics (no Textual)."""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from infero.common.settings import ConfigError
from infero.protocol.status import VersionDoc, WorkerStatusDoc
from infero_tui.feed import LocalFeed
from infero_tui.process import Runner
from infero_tui.settings_file import load_worker_settings

LOG_FILE_NAME = "infero-llm.log"
TOKEN_FILE_NAME = "worker.token"


PathName = Literal["config", "token", "log"]


@dataclass(slots=True)
class LocalContext:
    """Everything the Local tab needs about one connector on this machine.

    Paths start as guesses (defaults or flags); the connector's `/status` reports the real
    ones, which replace the guesses that no flag fixed (`adopt`).
    """

    client: LocalFeed
    addr: str
    config_path: Path
    token_file: Path
    log_file: Path
    diagnostics_dir: Path
    runner: Runner | None = None
    """Starts and stops the connector from the console (a child process)."""
    unit: str | None = None
    """systemd unit of this connector (`infero-llm@main`); used instead of `runner` when
    loaded."""
    explicit: frozenset[PathName] = frozenset()
    """Paths given on the command line: kept, and compared with what the connector reports."""
    mismatches: list[str] = field(default_factory=list)

    def adopt(self, status: WorkerStatusDoc) -> bool:
        """Take the paths the connector reports; True when anything changed."""
        reported: dict[PathName, str] = {
            "config": status.config_file,
            "token": status.token_file,
            "log": status.log_file,
        }
        current: dict[PathName, Path] = {
            "config": self.config_path,
            "token": self.token_file,
            "log": self.log_file,
        }
        flags = {"config": "--config", "token": "--token-file", "log": "--log-dir"}
        changed = False
        mismatches: list[str] = []
        for name, value in reported.items():
            if not value:
                continue
            path = Path(value)
            if name in self.explicit:
                if path.resolve() != current[name].expanduser().resolve():
                    mismatches.append(
                        f"{flags[name]} {current[name]} but the connector uses {path}"
                    )
                continue
            if path != current[name]:
                changed = True
                if name == "config":
                    self.config_path = path
                elif name == "token":
                    self.token_file = path
                    self.client.use_token_file(path)
                else:
                    self.log_file = path
        changed = changed or mismatches != self.mismatches
        self.mismatches = mismatches
        return changed


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
