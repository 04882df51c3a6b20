"""Start and stop a local `infero llm` process for users who do not run it as a service."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path


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

    async def start(self) -> int:
        """Start the connector (output discarded: it writes its own log); returns the pid."""
        if self.running and self._process is not None:
            return self._process.pid
        self._process = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return self._process.pid

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
