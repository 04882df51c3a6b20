"""Start, stop, enable and read the state of one systemd unit through `systemctl` (async).

The console's Local tab uses it for the unit `infero service install llm` wrote
(`infero-llm@main` by default), as the Go original's tray apps managed the OS service; when
no such unit is loaded (or there is no systemd) it falls back to a child process.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from dataclasses import dataclass

SHOW = ("LoadState", "ActiveState", "SubState", "UnitFileState", "MainPID")


class UnitError(Exception):
    """`systemctl` refused or failed; the message is one line."""


@dataclass(frozen=True, slots=True)
class UnitState:
    """What `systemctl show` says about a unit."""

    load: str
    """`loaded`, `not-found`, ..."""
    active: str
    """`active`, `inactive`, `failed`, `activating`, `deactivating`."""
    sub: str
    """`running`, `dead`, `exited`, ..."""
    enabled: str
    """`enabled`, `disabled`, `static`, ... (empty for a template instance never enabled)."""
    pid: int

    @property
    def exists(self) -> bool:
        return self.load == "loaded"

    def describe(self) -> str:
        """`active (running), enabled, pid 123`."""
        parts = [f"{self.active} ({self.sub})", self.enabled or "disabled"]
        if self.pid:
            parts.append(f"pid {self.pid}")
        return ", ".join(parts)


def parse_show(output: str) -> UnitState:
    """`KEY=value` lines of `systemctl show -p ...` -> `UnitState`."""
    values = dict(line.partition("=")[::2] for line in output.splitlines() if "=" in line)
    pid = values.get("MainPID", "0")
    return UnitState(
        load=values.get("LoadState", ""),
        active=values.get("ActiveState", ""),
        sub=values.get("SubState", ""),
        enabled=values.get("UnitFileState", ""),
        pid=int(pid) if pid.isdigit() else 0,
    )


class SystemdUnit:
    """One unit of the system manager, or of the user's manager (`user=True`)."""

    def __init__(
        self, name: str, *, user: bool, systemctl: str = "systemctl", timeout: float = 30.0
    ) -> None:
        self.name = name
        self.user = user
        self._systemctl = systemctl
        self._timeout = timeout

    @property
    def label(self) -> str:
        """`infero-llm@main` or `infero-llm@main (user)`."""
        return f"{self.name} (user)" if self.user else self.name

    async def _run(self, *args: str) -> tuple[int, str, str]:
        scope = ["--user"] if self.user else []
        try:
            process = await asyncio.create_subprocess_exec(
                self._systemctl,
                *scope,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise UnitError(f"cannot run {self._systemctl}: {exc.strerror or exc}") from None
        try:
            async with asyncio.timeout(self._timeout):
                out, err = await process.communicate()
        except TimeoutError:
            await _reap(process)
            raise UnitError(f"systemctl {' '.join(args)} took over {self._timeout:g}s") from None
        except asyncio.CancelledError:
            await _reap(process)
            raise
        code = process.returncode if process.returncode is not None else -1
        return code, out.decode(errors="replace"), err.decode(errors="replace")

    async def state(self) -> UnitState | None:
        """The unit's state, or None when systemctl cannot tell (no systemd here)."""
        try:
            code, out, _ = await self._run("show", self.name, "--property=" + ",".join(SHOW))
        except UnitError:
            return None
        return parse_show(out) if code == 0 else None

    async def _act(self, *verb: str) -> None:
        code, _, err = await self._run(*verb, self.name)
        if code != 0:
            reason = " ".join(err.split()) or f"exit status {code}"
            raise UnitError(f"systemctl {' '.join(verb)} {self.label}: {reason}")

    async def start(self) -> None:
        await self._act("start")

    async def stop(self) -> None:
        """Stop: SIGTERM, so the connector drains and exits 0 (not restarted)."""
        await self._act("stop")

    async def enable(self) -> None:
        """Start at boot (or at login for a user unit)."""
        await self._act("enable")


async def _reap(process: asyncio.subprocess.Process) -> None:
    """Kill a systemctl we stopped waiting for, and collect it (no stray child, no open pipe)."""
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    await process.communicate()


async def find_unit(name: str, *, systemctl: str = "systemctl") -> SystemdUnit | None:
    """The loaded unit `name`, system manager first, then the user's; None if neither has it."""
    if shutil.which(systemctl) is None:
        return None
    for user in (False, True):
        unit = SystemdUnit(name, user=user, systemctl=systemctl)
        state = await unit.state()
        if state is not None and state.exists:
            return unit
    return None
