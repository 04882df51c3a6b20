"""API keys, the keys file, CORS and request ids."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from infero.common.settings import ConfigError
from infero.server.auth import KeyRing, load_keyring, parse_keys_file
from infero.server.middleware import OriginPolicy
from infero.server.settings import ServerSettings
from support.server import running_server


def test_keys_file_lines_name_a_key_and_an_optional_operator_role() -> None:
    keys = parse_keys_file("# team keys\nalice k1\n\nbob k2 operator  # ops\n", "f")
    assert [(k.name, k.key, k.is_operator) for k in keys] == [
        ("alice", "k1", False),
        ("bob", "k2", True),
    ]
    with pytest.raises(ConfigError, match="f:1"):
        parse_keys_file("alice k1 admin\n", "f")


def test_keyring_matches_exact_keys_only() -> None:
    ring = load_keyring(ServerSettings(api_key="abc", operator_key="op"))
    match = ring.match("abc")
    assert match is not None
    assert match.name == "default"
    assert ring.match("abcd") is None
    assert ring.match("") is None
    op = ring.match("op")
    assert op is not None
    assert op.is_operator
    assert not ring.open


def test_ring_without_client_keys_is_open() -> None:
    assert KeyRing([]).open
    assert load_keyring(ServerSettings(operator_key="op")).open


def test_unreadable_keys_file_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="API_KEYS_FILE"):
        load_keyring(ServerSettings(api_keys_file="/nonexistent/keys"))


@pytest.mark.parametrize(
    ("entries", "origin", "allowed"),
    [
        ((), "https://a.example", False),
        (("https://a.example",), "https://a.example", True),
        (("https://a.example",), "HTTPS://A.EXAMPLE", True),
        (("https://a.example",), "https://b.example", False),
        (("*",), "https://anything", True),
        (("https://*.example.com",), "https://app.example.com", True),
        (("https://*.example.com",), "https://example.com", False),
        (("https://*.example.com",), "http://app.example.com", False),
    ],
)
def test_origin_policy(entries: tuple[str, ...], origin: str, allowed: bool) -> None:
    assert OriginPolicy(entries).allows(origin) is allowed


async def test_cors_is_denied_by_default_and_allowed_origins_get_headers() -> None:
    async with running_server() as srv, aiohttp.ClientSession() as http:
        async with http.get(srv.url + "/api/v1/models", headers={"Origin": "https://x"}) as r:
            assert "Access-Control-Allow-Origin" not in r.headers
        async with http.options(
            srv.url + "/api/v1/chat/completions",
            headers={"Origin": "https://x", "Access-Control-Request-Method": "POST"},
        ) as r:
            assert r.status == 403
    async with (
        running_server(allowed_origins="https://x", api_key="k") as srv,
        aiohttp.ClientSession() as http,
    ):
        async with http.options(
            srv.url + "/api/v1/chat/completions",
            headers={
                "Origin": "https://x",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        ) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == "https://x"
            assert r.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
            assert "POST" in r.headers["Access-Control-Allow-Methods"]
        async with http.get(srv.url + "/api/v1/models", headers={"Origin": "https://x"}) as r:
            assert r.status == 401
            assert r.headers["Access-Control-Allow-Origin"] == "https://x"
            assert "Origin" in r.headers["Vary"]


async def test_request_id_is_echoed_or_generated() -> None:
    async with running_server() as srv, aiohttp.ClientSession() as http:
        async with http.get(srv.url + "/healthz", headers={"X-Request-Id": "r-1"}) as r:
            assert r.headers["X-Request-Id"] == "r-1"
        async with http.get(srv.url + "/healthz") as r:
            assert len(r.headers["X-Request-Id"]) == 32
        async with http.get(srv.url + "/healthz", headers={"X-Request-Id": "bad id\t"}) as r:
            assert r.headers["X-Request-Id"] != "bad id\t"


async def test_unknown_api_route_is_an_openai_shaped_404() -> None:
    async with (
        running_server() as srv,
        aiohttp.ClientSession() as http,
        http.get(srv.url + "/api/v1/nothing") as r,
    ):
        assert r.status == 404
        assert (await r.json())["error"]["type"] == "invalid_request_error"


KEYED_ROUTES = [
    ("POST", "/api/v1/chat/completions"),
    ("POST", "/api/v1/embeddings"),
    ("GET", "/api/v1/models"),
    ("GET", "/api/v1/models/m"),
    ("GET", "/api/v1/responses/resp_1"),
    ("GET", "/api/state"),
    ("GET", "/api/state/stream"),
    ("POST", "/api/workers/w1/drain"),
    ("POST", "/api/mcp/relays/r1/drain"),
    ("POST", "/api/mcp/id/r1"),
]


@pytest.mark.parametrize(("api_key", "operator_key"), [("k", "op"), ("", "op")])
async def test_a_non_utf8_authorization_header_is_a_plain_401_on_every_keyed_route(
    api_key: str, operator_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_server(api_key=api_key, operator_key=operator_key) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        statuses = {}
        for method, path in KEYED_ROUTES:
            if not api_key and "/drain" not in path:
                continue  # open /api/*: only operator actions take a key
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
                + b"Authorization: Bearer \xff\xfe\xc3(\r\n"
                + b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
            )
            async with asyncio.timeout(10):
                answer = await reader.read()
            writer.close()
            statuses[path] = int(answer.split(b" ", 2)[1])
        assert set(statuses.values()) == {401}, statuses
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_an_origin_that_is_not_ascii_is_never_allowed() -> None:
    policy = OriginPolicy(["https://*.example.com"])
    assert policy.allows("https://a.example.com")
    assert not policy.allows("https://\udcff.example.com")
