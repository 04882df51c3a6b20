"""The `infero` command line: one sub-app module per command."""

from __future__ import annotations

import sys

import typer

from infero.cli import ctl, demo, llm, mcp, server, service, tui
from infero.cli.options import VersionedGroup

app = typer.Typer(
    name="infero",
    cls=VersionedGroup,
    help="Expose private LLM runtimes and MCP servers as one public, OpenAI-compatible API.",
    no_args_is_help=False,
    add_completion=False,
    rich_markup_mode=None,  # help texts are literal: `[env: X]` must not be read as markup
    context_settings={"help_option_names": ["-h", "--help"]},
)
server.register(app)
llm.register(app)
mcp.register(app)
tui.register(app)
ctl.register(app)
demo.register(app)
service.register(app)

_TOP_LEVEL = {"--help", "-h"}


def main(argv: list[str] | None = None) -> None:
    """`infero ...`; a bare `infero` (or `infero --flag ...`) starts the server, as in the seed."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0].startswith("-") and args[0] not in _TOP_LEVEL):
        args.insert(0, "server")
    app(args=args, prog_name="infero")


def llm_main() -> None:
    """`infero-llm ...` is `infero llm ...`."""
    app(args=["llm", *sys.argv[1:]], prog_name="infero")


def mcp_main() -> None:
    """`infero-mcp ...` is `infero mcp ...`."""
    app(args=["mcp", *sys.argv[1:]], prog_name="infero")
