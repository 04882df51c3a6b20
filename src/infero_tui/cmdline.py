"""The `:` command line: parsing and name resolution (no Textual).

`:workers`, `:models`, `:mcp`, `:server`, `:local`, `:instances` switch tabs; `:drain NAME`,
`:undrain NAME`, `:shutdown NAME` act on a connector or MCP relay by id or unique name;
`:ctx URL` watches another server; `:help`; `:q` quits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from infero.protocol.state import StateSnapshot
from infero_tui.client import ACTIONS, Action

TABS = {
    "workers": "workers",
    "w": "workers",
    "models": "models",
    "m": "models",
    "mcp": "mcp",
    "relays": "mcp",
    "server": "server",
    "local": "local",
    "instances": "instances",
    "i": "instances",
}
QUIT = {"q", "q!", "quit", "exit"}
COMMANDS = (
    *sorted(set(TABS) - {"w", "m", "i", "relays"}),
    *ACTIONS,
    "ctx",
    "help",
    "q",
)
"""What `:` completes and `?` lists."""


class CommandError(Exception):
    """A command line that cannot be carried out; the message says why."""


@dataclass(frozen=True, slots=True)
class Command:
    """One parsed command line."""

    verb: Literal["tab", "act", "ctx", "help", "quit"]
    arg: str = ""
    action: Action | None = None


def parse(line: str) -> Command:
    """`drain alpha` -> Command("act", "alpha", "drain"); `CommandError` if unknown."""
    words = line.strip().removeprefix(":").split(maxsplit=1)
    if not words:
        raise CommandError("type a command, e.g. :workers, :drain NAME, :ctx URL, :q")
    verb, arg = words[0].lower(), (words[1].strip() if len(words) > 1 else "")
    if verb in TABS:
        return Command("tab", TABS[verb])
    if verb in QUIT:
        return Command("quit")
    if verb in ("help", "?"):
        return Command("help")
    if verb in ("ctx", "context", "server-url"):
        if not arg:
            raise CommandError(":ctx needs a server URL, e.g. :ctx https://infero.example")
        return Command("ctx", arg)
    for action in ACTIONS:
        if verb == action:
            if not arg:
                raise CommandError(f":{action} needs a connector or relay name or id")
            return Command("act", arg, action)
    raise CommandError(f"unknown command :{verb} (try :workers, :mcp, :drain NAME, :ctx URL, :q)")


Found = tuple[Literal["worker", "relay"], str, str]
"""Kind, id and name of what a command names."""


def resolve(snapshot: StateSnapshot | None, wanted: str) -> Found:
    """The live connector or relay whose id, else whose unique name, is `wanted`."""
    if snapshot is None:
        raise CommandError("no fleet state yet")
    live: list[Found] = [("worker", w.id, w.name) for w in snapshot.workers if w.status != "gone"]
    live += [("relay", r.id, r.name) for r in snapshot.mcp.clients if r.status != "gone"]
    for found in live:
        if found[1] == wanted:
            return found
    named = [found for found in live if found[2] == wanted]
    if len(named) == 1:
        return named[0]
    if named:
        ids = ", ".join(found[1] for found in named)
        raise CommandError(f"{len(named)} are named {wanted!r}; use an id ({ids})")
    raise CommandError(f"no live connector or relay with id or name {wanted!r}")
