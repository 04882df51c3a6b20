"""`infero mcp` in front of a provider that requires OAuth 2.1 (MCP_OAUTH_TOKEN_FILE).

The provider is a real FastMCP server behind a real OAuth authorization server (FastMCP's
in-memory provider on the SDK's auth routes: metadata, registration, PKCE, refresh). The test
plays the person: it follows the authorization URL the relay asks for with an HTTP client, and
the browser-style redirect lands on the relay's loopback callback.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from e2e_mcp.conftest import provider_process
from infero.relay.runtime import McpRelay
from support.server import running_server

API_KEY = "client-key-1"
WAITING = "waiting for authorization: open "


@pytest.fixture(scope="module")
def oauth_url() -> Iterator[str]:
    """FastMCP behind its in-memory OAuth 2.1 authorization server."""
    with provider_process("oauth") as url:
        yield url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_relay_authorizes_once_caches_tokens_0600_and_refreshes_after_a_restart(
    oauth_url: str, tmp_path: Path, start_relay: Any, connect: Any
) -> None:
    token_file = tmp_path / "oauth" / "tokens.json"
    env = {
        "PROVIDER_URL": oauth_url,
        "MCP_OAUTH_TOKEN_FILE": str(token_file),
        "MCP_OAUTH_REDIRECT_URL": f"http://127.0.0.1:{free_port()}/callback",
        "CLIENT_ID": "oauth-relay",
    }
    async with running_server(client_key="relay-secret", api_key=API_KEY) as server:
        public = f"{server.url}/api/mcp/id/oauth-relay"
        async with start_relay(server, env, wait_ready=False) as (relay, _):
            assert isinstance(relay, McpRelay)
            assert relay.oauth is not None
            async with asyncio.timeout(20):
                await relay.monitor.probed.wait()  # set when the flow waits for a person
            status = relay.status_doc()
            assert status.state == "not_ready"
            assert status.authorization.startswith(WAITING)
            assert WAITING in status.last_error
            authorize = status.authorization.removeprefix(WAITING)
            async with httpx2.AsyncClient(follow_redirects=True) as browser:
                landed = await browser.get(authorize)
            assert landed.status_code == 200
            assert "authorized" in landed.text
            async with asyncio.timeout(20):
                await server.wait_for(lambda: _status(server, "oauth-relay") == "ready")
            assert relay.status_doc().authorization == "authorized"
            async with connect(public) as client:
                result = await client.call_tool("favorite/color", {})
            assert result.content[0].text == "blue with a hint of green"
        assert token_file.stat().st_mode & 0o777 == 0o600
        cached = json.loads(token_file.read_text(encoding="utf-8"))
        assert cached["tokens"]["refresh_token"]
        assert cached["client"]["client_id"]  # registered dynamically
        first_access = cached["tokens"]["access_token"]
        cached["expires_at"] = 0  # the access token has expired while the relay was down
        token_file.write_text(json.dumps(cached), encoding="utf-8")

        async with start_relay(server, env) as (relay, _):  # ready without a person
            assert relay.status_doc().authorization == "authorized"
            async with connect(public) as client:
                result = await client.call_tool("favorite/color", {})
            assert result.content[0].text == "blue with a hint of green"
        refreshed = json.loads(token_file.read_text(encoding="utf-8"))
        assert refreshed["tokens"]["access_token"] != first_access


def _status(server: Any, relay_id: str) -> str:
    relay = server.embedded.relays.relays.get(relay_id)
    return str(relay.status) if relay is not None else ""
