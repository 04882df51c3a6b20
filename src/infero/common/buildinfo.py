"""Build metadata (version, git sha, build date) reported by `--version`, state and metrics."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path


@dataclass(frozen=True, slots=True)
class BuildInfo:
    """What `--version` prints and what connectors announce to the server."""

    version: str
    sha: str
    date: str

    def line(self, component: str) -> str:
        """One line such as `infero-llm version=0.1.0 sha=abc1234 date=2026-11-28`."""
        return f"{component} version={self.version} sha={self.sha} date={self.date}"


def _git(*args: str) -> str:
    source = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=source,
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=2,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


@cache
def build_info() -> BuildInfo:
    """Read the build metadata once: env overrides (packagers), then the git checkout."""
    try:
        version = metadata.version("infero")
    except metadata.PackageNotFoundError:
        version = "dev"
    sha = os.environ.get("INFERO_BUILD_SHA") or _git("rev-parse", "--short=12", "HEAD") or "unknown"
    date = (
        os.environ.get("INFERO_BUILD_DATE")
        or _git("log", "-1", "--format=%cs", "HEAD")
        or "unknown"
    )
    return BuildInfo(version=version, sha=sha, date=date)


BUILD = build_info()
