"""Start and stop the local connector from the console, behind a small `Runner` interface.

`ConnectorProcess` runs `infero llm` as a child of the console, for users who do not run it
as a service; another runner (a systemd unit, say) only has to provide the same five members.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Protocol


class Runner(Protocol):
    """What the Local tab needs to start, stop and watch the connector."""

    @property
    def running(self) -> bool:
        """Whether the connector this runner started is still running."""
        ...

    def describe(self) -> str:
        """A few words on what runs (`pid 1234`)."""
        ...

    async def start(self) -> str:
        """Start it; returns `describe()`. `OSError` when it cannot be started."""
        ...

    async def stop(self) -> int | None:
        """Stop it (the connector drains first); its exit status, None if none was running."""
        ...

    async def wait(self) -> int:
        """Return the exit status once it exits (by itself or stopped)."""
        ...


def default_command(config_path: Path, status_addr: str) -> list[str]:
    """`infero llm --config PATH --status-addr ADDR --reconnect` with this interpreter."""
    return [
        sys.executable,
        "-c",
        "from infero.cli import llm_main; llm_main()",
        "--config",
        str(config_path),
        "--status-addr",
        status_addr,
        "--reconnect",
    ]


class ConnectorProcess:
    """One child connector process owned by the console (stopped when the console exits)."""

    def __init__(self, command: list[str], *, stop_timeout: float = 10.0) -> None:
        self.command = command
        self._stop_timeout = stop_timeout
        self._process: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process else None

    def describe(self) -> str:
        return f"pid {self.pid}" if self.pid else "not running"

    async def start(self) -> str:
        """Start the connector (output discarded: it writes its own log)."""
        if not self.running:
            self._process = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        return self.describe()

    async def wait(self) -> int:
        process = self._process
        if process is None:
            return 0
        return await process.wait()

    async def stop(self) -> int | None:
        """SIGTERM (the connector drains), then kill after `stop_timeout`; the exit code."""
        process = self._process
        if process is None:
            return None
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                async with asyncio.timeout(self._stop_timeout):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        self._process = None
        return process.returncode
