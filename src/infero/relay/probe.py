"""Is the MCP provider reachable? One `initialize` over Streamable HTTP, then a clean goodbye.

The relay probes its provider (through the loopback facade for stdio and SSE providers)
and reports `not_ready` to the server until the probe succeeds. A session the probe
opened is ended with DELETE so stateful providers do not accumulate them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import aiohttp

from infero.common.buildinfo import BUILD

logger = logging.getLogger(__name__)

PROBE_ID = "infero-probe"
MAX_PROBE_BODY = 1024 * 1024


class ProviderDown(Exception):
    """The provider did not answer `initialize` usefully (the message says why)."""


def first_message(body: bytes, content_type: str) -> Any:
    """The JSON-RPC message of a JSON body or of the first SSE `data:` event."""
    text = body.decode("utf-8", errors="replace")
    if content_type.startswith("text/event-stream"):
        data = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
        text = next((d for d in data if d), "")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ProviderDown("answered initialize with something that is not JSON-RPC") from None
    except RecursionError:
        raise ProviderDown("answered initialize with JSON nested too deeply") from None


def initialize_body(protocol_version: str) -> dict[str, Any]:
    """The probe's `initialize` request."""
    return {
        "jsonrpc": "2.0",
        "id": PROBE_ID,
        "method": "initialize",
        "params": {
            "protocolVersion": protocol_version,
            "capabilities": {},
            "clientInfo": {"name": "infero-mcp-probe", "version": BUILD.version},
        },
    }


async def probe(
    session: aiohttp.ClientSession, url: str, *, protocol_version: str, within: float
) -> str:
    """Initialize against `url`; return the server's name, or raise `ProviderDown`."""
    body = initialize_body(protocol_version)
    headers = {"Accept": "application/json, text/event-stream"}
    try:
        async with asyncio.timeout(within):
            async with session.post(url, json=body, headers=headers) as resp:
                raw = await resp.content.read(MAX_PROBE_BODY)
                session_id = resp.headers.get("Mcp-Session-Id")
                status = resp.status
                content_type = resp.headers.get("Content-Type", "")
    except TimeoutError:
        raise ProviderDown(f"no answer from {url} within {within:g}s") from None
    except aiohttp.ClientError as exc:
        raise ProviderDown(f"cannot reach {url}: {exc}") from None
    if session_id:
        await _goodbye(session, url, session_id)
    if status >= 400:
        snippet = raw[:200].decode("utf-8", errors="replace").strip()
        raise ProviderDown(f"{url} answered initialize with HTTP {status}: {snippet}")
    return server_name(url, first_message(raw, content_type))


def server_name(url: str, message: Any) -> str:
    """The `serverInfo.name` of an `initialize` answer, or `ProviderDown` saying why not."""
    if not isinstance(message, dict) or "result" not in message:
        error = message.get("error") if isinstance(message, dict) else None
        detail = error.get("message") if isinstance(error, dict) else "no result"
        raise ProviderDown(f"{url} refused initialize: {str(detail)[:200]}")
    info = message["result"].get("serverInfo") if isinstance(message["result"], dict) else None
    name = info.get("name") if isinstance(info, dict) else None
    return str(name or "unnamed MCP server")


async def _goodbye(session: aiohttp.ClientSession, url: str, session_id: str) -> None:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with asyncio.timeout(5):
            async with session.delete(url, headers={"Mcp-Session-Id": session_id}):
                pass
