"""Hatchling build hook: embed version, git sha and build date as `infero/_build.py`.

Values, first found wins:
- sha: `INFERO_BUILD_SHA`; the git commit when the project root is itself the top of a git
  checkout (never a repository that merely contains it); the `_build.py` an sdist carries;
  else `unknown`.
- date: `INFERO_BUILD_DATE`; `SOURCE_DATE_EPOCH` (reproducible builds); the day of the build
  (UTC).

Editable installs get no file: `infero.common.buildinfo` then reads this checkout's git.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

GENERATED = "src/infero/_build.py"
"""Where the file sits in a source tree (an sdist); in a wheel it is `infero/_build.py`."""


def _git(root: Path, *args: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def git_sha(root: Path) -> str:
    """The short commit of `root` when `root` is the top of its own git checkout, else ""."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() != root.resolve():
        return ""
    return _git(root, "rev-parse", "--short=12", "HEAD")


def carried_sha(root: Path) -> str:
    """The sha in a `_build.py` shipped inside an sdist, else ""."""
    try:
        text = (root / GENERATED).read_text(encoding="utf-8")
    except OSError:
        return ""
    match = re.search(r'^SHA = "([^"]*)"$', text, re.MULTILINE)
    return match.group(1) if match else ""


def build_date() -> str:
    """`INFERO_BUILD_DATE`, else the day of `SOURCE_DATE_EPOCH`, else today (UTC)."""
    if date := os.environ.get("INFERO_BUILD_DATE", ""):
        return date
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    when = datetime.fromtimestamp(int(epoch), UTC) if epoch.isdigit() else datetime.now(UTC)
    return when.date().isoformat()


def render(version: str, sha: str, date: str) -> str:
    """The generated module."""
    return (
        '"""Build metadata, written by hatch_build.py when this package was built."""\n\n'
        f'VERSION = "{version}"\nSHA = "{sha}"\nDATE = "{date}"\n'
    )


class BuildInfoHook(BuildHookInterface):  # type: ignore[type-arg]  # hatchling's generic is untyped here
    """Adds the generated `_build.py` to wheels and sdists."""

    _scratch: str | None = None

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name == "wheel" and version == "editable":
            return
        root = Path(self.root)
        sha = os.environ.get("INFERO_BUILD_SHA") or git_sha(root) or carried_sha(root)
        text = render(self.metadata.version, sha or "unknown", build_date())
        self._scratch = tempfile.mkdtemp(prefix="infero-build-")
        generated = Path(self._scratch) / "_build.py"
        generated.write_text(text, encoding="utf-8")
        target = "infero/_build.py" if self.target_name == "wheel" else GENERATED
        build_data["force_include"][str(generated)] = target

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
