"""Build metadata (version, git sha, build date) reported by `--version`, state and metrics.

A built package (wheel, sdist, container image) carries them in `infero/_build.py`, written
at build time by `hatch_build.py`. Without that file (an editable install) they come from
git, but only when the source is the top of its own checkout of this project; otherwise sha
and date are `unknown`.
"""

from __future__ import annotations

import importlib
import subprocess
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[3]
"""Where the project root is when this file sits in `src/infero/common/` of a checkout."""


@dataclass(frozen=True, slots=True)
class BuildInfo:
    """What `--version` prints and what connectors announce to the server."""

    version: str
    sha: str
    date: str

    def line(self, component: str) -> str:
        """One line such as `infero-llm version=0.1.0 sha=abc1234 date=2026-11-28`."""
        return f"{component} version={self.version} sha={self.sha} date={self.date}"


def _git(root: Path, *args: str) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=2,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def checkout_info(root: Path) -> tuple[str, str]:
    """(sha, commit date) of the checkout at `root`, when `root` holds this project's
    `pyproject.toml` and is the top of its own git repository; else ("unknown", "unknown")."""
    unknown = ("unknown", "unknown")
    try:
        pyproject = (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return unknown
    if 'name = "infero"' not in pyproject:
        return unknown
    top = _git(root, "rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() != root.resolve():
        return unknown
    sha = _git(root, "rev-parse", "--short=12", "HEAD")
    date = _git(root, "log", "-1", "--format=%cs", "HEAD")
    return (sha or "unknown", date or "unknown")


@cache
def build_info() -> BuildInfo:
    """Read the build metadata once: the embedded `_build.py`, else this checkout's git."""
    try:
        built = importlib.import_module("infero._build")
    except ImportError:
        pass
    else:
        return BuildInfo(version=str(built.VERSION), sha=str(built.SHA), date=str(built.DATE))
    try:
        version = metadata.version("infero")
    except metadata.PackageNotFoundError:
        version = "dev"
    sha, date = checkout_info(CHECKOUT)
    return BuildInfo(version=version, sha=sha, date=date)


BUILD = build_info()
