"""A stand-in `systemctl` (a real executable script) for hosts without a running systemd.

It appends each call's arguments to `calls.log` and answers `show` from `state-system` or
`state-user` (KEY=value lines; a missing file means "not-found"); `fail` makes every other
verb fail with a message on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPT = """#!{python}
import sys
from pathlib import Path

folder = Path({folder!r})
args = sys.argv[1:]
with (folder / "calls.log").open("a", encoding="utf-8") as log:
    log.write(" ".join(args) + "\\n")
scope = "user" if "--user" in args else "system"
args = [a for a in args if a != "--user"]
if args[0] == "show":
    state = folder / f"state-{{scope}}"
    print(state.read_text(encoding="utf-8") if state.exists() else "LoadState=not-found")
    sys.exit(0)
if (folder / "fail").exists():
    print("Failed to " + args[0] + " " + args[-1] + ": Access denied", file=sys.stderr)
    sys.exit(4)
"""

LOADED = (
    "LoadState=loaded\nActiveState=active\nSubState=running\nUnitFileState=enabled\nMainPID=42\n"
)


def install(folder: Path) -> Path:
    """Write `folder/systemctl`; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "systemctl"
    path.write_text(SCRIPT.format(python=sys.executable, folder=str(folder)), encoding="utf-8")
    path.chmod(0o755)
    return path


def calls(folder: Path) -> list[str]:
    log = folder / "calls.log"
    return log.read_text(encoding="utf-8").splitlines() if log.exists() else []
