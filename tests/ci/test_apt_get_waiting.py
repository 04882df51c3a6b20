"""`.ci/run` installs Debian packages through `.ci/apt-get-waiting`, which waits for a lock
another apt holds instead of failing at once (real apt-get on private apt directories)."""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "apt-get-waiting"


@pytest.fixture
def apt_dirs(tmp_path: Path) -> list[str]:
    """apt-get options for a private, empty `file:` repository and private state."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "Packages").write_text("", encoding="utf-8")
    sources = tmp_path / "sources.list"
    sources.write_text(f"deb [trusted=yes] file:{repo} ./\n", encoding="utf-8")
    (tmp_path / "lists" / "partial").mkdir(parents=True)
    (tmp_path / "cache" / "archives" / "partial").mkdir(parents=True)
    (tmp_path / "parts").mkdir()
    (tmp_path / "status").write_text("", encoding="utf-8")
    options: dict[str, object] = {
        "Dir::State::Lists": tmp_path / "lists",
        "Dir::State::status": tmp_path / "status",
        "Dir::Cache": tmp_path / "cache",
        "Dir::Etc::sourcelist": sources,
        "Dir::Etc::sourceparts": tmp_path / "parts",
    }
    if os.geteuid() == 0:  # read the file: repository as root (no `_apt` sandbox warning)
        options["APT::Sandbox::User"] = "root"
    return [arg for key, value in options.items() for arg in ("-o", f"{key}={value}")]


@pytest.fixture
def lists_lock(tmp_path: Path) -> Iterator[int]:
    """Hold the package-lists lock the way another apt would (an fcntl lock)."""
    fd = os.open(tmp_path / "lists" / "lock", os.O_RDWR | os.O_CREAT, 0o640)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    try:
        yield fd
    finally:
        os.close(fd)


async def test_plain_apt_get_update_fails_at_once_on_a_held_lists_lock(
    apt_dirs: list[str], lists_lock: int
) -> None:
    proc = await asyncio.create_subprocess_exec(
        *("apt-get", *apt_dirs, "-o", "DPkg::Lock::Timeout=600", "update", "-qq"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        _, errors = await proc.communicate()
    assert proc.returncode != 0
    assert b"Could not get lock" in errors


async def test_apt_get_waiting_waits_for_the_lock_then_updates(
    apt_dirs: list[str], lists_lock: int
) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(SCRIPT),
        *apt_dirs,
        "update",
        "-qq",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "APT_LOCK_TIMEOUT": "120"},
    )
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(60):
            line = await proc.stderr.readline()
            while b"waiting" not in line:
                assert line, "the script ended without waiting"
                line = await proc.stderr.readline()
        fcntl.lockf(lists_lock, fcntl.LOCK_UN)
        async with asyncio.timeout(60):
            await proc.stderr.read()
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
