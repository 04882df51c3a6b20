"""Child processes of the benchmark: start, read their announcements, measure, stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
"""The checkout; children run here so `python -m bench.*` resolves."""

STOP_TIMEOUT = 10.0
"""Seconds a child gets to exit after SIGTERM before it is killed."""


class StackError(RuntimeError):
    """A child failed to start or answered nonsense; the message says where to look."""


def free_port() -> int:
    """A TCP port free on loopback right now (for children that cannot report theirs)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB (Linux /proc)."""
    status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise StackError(f"no VmRSS for pid {pid}")


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


@dataclass
class Child:
    """One running child process and where its stderr goes."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path
    log: IO[bytes]

    @property
    def pid(self) -> int:
        """Process id (the Python interpreter itself; no wrapper shell)."""
        return self.process.pid

    def check_alive(self) -> None:
        """Raise `StackError` if the child has exited."""
        if self.process.returncode is not None:
            raise StackError(
                f"{self.name} exited with {self.process.returncode}; see {self.log_path}"
            )

    async def read_json(self, within: float) -> dict[str, Any]:
        """The next line the child announces on stdout, as JSON."""
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(within):
                line = await self.process.stdout.readline()
        except TimeoutError:
            raise StackError(f"{self.name} said nothing for {within:g}s") from None
        if not line:
            await self.process.wait()
            self.check_alive()
        result: dict[str, Any] = json.loads(line)
        return result

    async def send_json(self, value: object) -> None:
        """Write one JSON line to the child's stdin."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(value).encode() + b"\n")
        await self.process.stdin.drain()

    def rss_mb(self) -> float:
        """The child's resident set size in MiB."""
        return rss_mb(self.pid)

    def cpu_seconds(self) -> float:
        """CPU time the child has used so far."""
        return cpu_seconds(self.pid)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after `STOP_TIMEOUT`; always closes the log."""
        try:
            if self.process.returncode is None:
                if self.process.stdin is not None:
                    self.process.stdin.close()
                self.process.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(STOP_TIMEOUT):
                        await self.process.wait()
                except TimeoutError:
                    self.process.kill()
                    await self.process.wait()
        finally:
            self.log.close()


async def start(
    name: str,
    argv: list[str],
    *,
    log_dir: Path,
    env: dict[str, str] | None = None,
    stdin: bool = False,
    stdout: bool = True,
) -> Child:
    """Start `argv` (a Python module or command) in the checkout with its stderr in a log file."""
    log_path = log_dir / f"{name}.log"
    log = log_path.open("wb")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=ROOT,
            env=full_env,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if stdout else log,
            stderr=log,
            limit=256 * 1024 * 1024,
        )
    except OSError:
        log.close()
        raise
    return Child(name=name, process=process, log_path=log_path, log=log)


def python(module: str, *args: str) -> list[str]:
    """argv running `python -m module args` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def infero(*args: str) -> list[str]:
    """argv running the `infero` command line with this interpreter (no PATH lookup)."""
    return [sys.executable, "-c", "from infero.cli import main; main()", *args]
