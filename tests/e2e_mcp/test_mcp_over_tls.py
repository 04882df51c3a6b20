"""`infero mcp` links over wss:// to a TLS server, verified against TLS_CA_FILE."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from infero.common.tls import client_context
from support.certs import TestCA

API_KEY = "client-key-1"


async def test_mcp_connector_relays_calls_over_wss_with_a_private_ca(
    stateless_url: Any, make_stack: Any, tmp_path: Path
) -> None:
    ca = TestCA.create(tmp_path)
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    ca.issue(cert, key)
    server = {"api_key": API_KEY, "tls_cert_file": str(cert), "tls_key_file": str(key)}
    async with make_stack(server, PROVIDER_URL=stateless_url, TLS_CA_FILE=str(ca.ca_file)) as s:
        assert s.url.startswith("https://")
        async with (
            httpx2.AsyncClient(
                headers={"Authorization": f"Bearer {API_KEY}"},
                verify=client_context(str(ca.ca_file)),
                timeout=httpx2.Timeout(30),
            ) as http,
            Client(streamable_http_client(s.url, http_client=http)) as client,
        ):
            result = await client.call_tool("favorite/color", {})
    content = result.content[0]
    assert isinstance(content, types.TextContent)
    assert content.text == "blue with a hint of green"
