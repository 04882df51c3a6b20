"""A real FastMCP server used as the relay's MCP provider in tests.

Run as a script: `provider.py stateless` (the seed's JSON example), `provider.py stateful`
(sessions, SSE answers), `provider.py oauth` (stateful, behind FastMCP's in-memory OAuth 2.1
authorization server: discovery, registration, PKCE, refresh) or `provider.py sse` (legacy
HTTP+SSE) listen on 127.0.0.1 on a free port and print `PORT <n>` once bound;
`provider.py stdio` speaks MCP on stdin/stdout.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import warnings
from typing import Any

import mcp_types as types
from fastmcp import Context, FastMCP
from fastmcp.server.auth.providers.in_memory import InMemoryOAuthProvider
from mcp.server.auth.settings import ClientRegistrationOptions

app: Any = FastMCP("preferences")
_cancelled = {"count": 0}
_release = asyncio.Event()


def favorite_color() -> str:
    return "blue with a hint of green"


async def remember(value: str, ctx: Context) -> str:
    """Store a value in this session's state."""
    await ctx.set_state("value", value)
    return "ok"


async def recall(ctx: Context) -> str:
    """Read this session's stored value ('' when none)."""
    return str(await ctx.get_state("value") or "")


async def count_up(steps: int, ctx: Context) -> str:
    """Report progress `steps` times, then finish."""
    for step in range(1, steps + 1):
        await ctx.report_progress(step, steps, f"step {step}")
    return f"counted to {steps}"


async def wait_forever(ctx: Context) -> str:
    """Report progress 0 (so callers know it runs), then block until cancelled."""
    await ctx.report_progress(0, 1, "waiting")
    try:
        await _release.wait()
    except asyncio.CancelledError:
        _cancelled["count"] += 1
        raise
    return "released"


async def confirm(action: str, ctx: Context) -> str:
    """Log what is about to happen, then ask the user (elicitation) whether to go on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        await ctx.info(f"about to {action}")
    answer = await ctx.elicit(f"Really {action}?", bool)
    return f"{action}: {getattr(answer, 'data', answer.action)}"


def crash() -> str:
    """Exit the provider process at once (a crashing stdio server)."""
    os._exit(3)


def cancellations() -> int:
    """How many wait_forever calls were cancelled in this process."""
    return _cancelled["count"]


async def ask_llm(question: str, ctx: Context) -> str:
    """Ask the client's LLM through sampling (a server-initiated request)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = await ctx.session.create_message(
            [
                types.SamplingMessage(
                    role="user", content=types.TextContent(type="text", text=question)
                )
            ],
            max_tokens=50,
        )
    content = result.content
    return content.text if isinstance(content, types.TextContent) else "?"


async def announce(ctx: Context) -> str:
    """Tell the client the tool list changed: a message of its own, on the GET stream."""
    await ctx.session.send_tool_list_changed()
    return "announced"


def theme() -> str:
    return "dark"


def greet(name: str) -> str:
    return f"Say hello to {name}."


app.tool("favorite/color")(favorite_color)
app.tool()(remember)
app.tool()(recall)
app.tool()(count_up)
app.tool()(wait_forever)
app.tool()(cancellations)
app.tool()(crash)
app.tool()(confirm)
app.tool()(ask_llm)
app.tool()(announce)
app.resource("pref://theme")(theme)
app.prompt()(greet)


def main() -> None:
    mode = sys.argv[1]
    if mode == "stdio":
        app.run("stdio", show_banner=False)
        return
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    options: dict[str, Any] = {"show_banner": False, "log_level": "warning", "sockets": [sock]}
    if mode == "oauth":
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        registration = ClientRegistrationOptions(enabled=True)
        app.auth = InMemoryOAuthProvider(base_url=base, client_registration_options=registration)
        options.update(transport="http")
    elif mode == "stateless":
        options.update(stateless_http=True, json_response=True, transport="http")
    elif mode == "sse":
        options.update(transport="sse")
    else:
        options.update(transport="http")
    app.run(**options)


if __name__ == "__main__":
    main()
