"""The connector's status/control port: documents, token file, 401/403/405."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request

from infero.common.buildinfo import BUILD
from infero.protocol import link
from infero.protocol.status import VersionDoc, WorkerStatusDoc
from infero.worker.settings import parse_addr
from infero.worker.statusport import (
    create_status_app,
    is_loopback,
    load_or_create_token,
    token_path,
)
from support.linkfakes import CHAT, ServerFactory, Stack


@pytest.fixture
async def stack(aiohttp_server: ServerFactory) -> AsyncIterator[Stack]:
    s = Stack(aiohttp_server)
    yield s
    await s.close()


async def start_with_port(stack: Stack, tmp_path: Path) -> str:
    config = tmp_path / "conf" / "worker.yaml"
    connector = await stack.start(
        status_addr="127.0.0.1:0",
        drain_timeout=-1,
        connector_args={"config_path": str(config)},
    )
    await stack.connected()
    return connector.status_url


async def test_status_document_has_the_seed_fields(stack: Stack, tmp_path: Path) -> None:
    base = await start_with_port(stack, tmp_path)
    async with aiohttp.ClientSession() as http, http.get(base + "/status") as resp:
        assert resp.status == 200
        doc = WorkerStatusDoc.model_validate(await resp.json())
    assert doc.state == "connected_idle"
    assert doc.connected_to_server
    assert doc.connected_to_backend
    assert (doc.current_jobs, doc.max_concurrency, doc.models) == (0, 2, ["m1"])
    assert (doc.worker_id, doc.worker_name, doc.version) == ("w1", "alpha", BUILD.version)
    assert doc.last_heartbeat is not None
    assert doc.last_error == ""


async def test_version_document(stack: Stack, tmp_path: Path) -> None:
    base = await start_with_port(stack, tmp_path)
    async with aiohttp.ClientSession() as http, http.get(base + "/version") as resp:
        doc = VersionDoc.model_validate(await resp.json())
    assert doc == VersionDoc(version=BUILD.version, build_sha=BUILD.sha, build_date=BUILD.date)


async def test_control_needs_the_token_from_the_file_created_beside_the_config(
    stack: Stack, tmp_path: Path
) -> None:
    base = await start_with_port(stack, tmp_path)
    token_file = tmp_path / "conf" / "worker.token"
    token = token_file.read_text(encoding="utf-8").strip()
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert len(token) == 64
    int(token, 16)
    stack.backend.hold = True
    await stack.server.request(1, "/chat/completions", CHAT)
    async with asyncio.timeout(5):
        await stack.backend.entered.wait()
    async with aiohttp.ClientSession() as http:
        async with http.post(base + "/control/drain") as resp:
            assert resp.status == 401
        async with http.post(base + "/control/drain", headers={"X-Auth-Token": "x" * 64}) as resp:
            assert resp.status == 401
        async with http.get(base + "/control/drain", headers={"X-Auth-Token": token}) as resp:
            assert resp.status == 405
        assert stack.connector is not None
        assert not stack.connector.draining
        async with http.post(base + "/control/drain", headers={"X-Auth-Token": token}) as resp:
            assert resp.status == 200
        assert stack.connector.draining
        async with http.get(base + "/status") as resp:
            assert (await resp.json())["state"] == "draining"
        async with http.post(base + "/control/undrain", headers={"X-Auth-Token": token}) as resp:
            assert resp.status == 200
        assert not stack.connector.draining
        async with http.post(base + "/control/shutdown", headers={"X-Auth-Token": token}) as resp:
            assert resp.status == 200
        async with http.post(base + "/control/undrain", headers={"X-Auth-Token": token}) as resp:
            assert resp.status == 409
    stack.backend.release.set()
    async with asyncio.timeout(5):
        end = await stack.server.next_frame(link.End)
    assert end.error is None
    assert await stack.exit_code() == 0


async def test_control_from_a_non_loopback_peer_is_forbidden(stack: Stack) -> None:
    connector = await stack.start()
    await stack.connected()
    app = create_status_app(connector, "t" * 64)

    class Transport:
        def get_extra_info(self, name: str, default: object = None) -> object:
            return ("192.0.2.7", 40000) if name == "peername" else default

        def is_closing(self) -> bool:
            return False

    request = make_mocked_request(
        "POST",
        "/control/drain",
        headers={"X-Auth-Token": "t" * 64},
        app=app,
        transport=Transport(),
    )
    match = await app.router.resolve(request)
    request._match_info = match
    response = await match.handler(request)
    assert response.status == 403
    assert not connector.draining


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("127.8.9.10")
    assert not is_loopback("10.0.0.1")
    assert not is_loopback(None)
    assert not is_loopback("not-an-ip")


def test_token_is_created_once_then_reused(tmp_path: Path) -> None:
    path = token_path(str(tmp_path / "a" / "worker.yaml"))
    assert path == tmp_path / "a" / "worker.token"
    first = load_or_create_token(path)
    assert load_or_create_token(path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_status_addr_forms() -> None:
    assert parse_addr("127.0.0.1:4555") == ("127.0.0.1", 4555)
    assert parse_addr(":4555") == ("127.0.0.1", 4555)
    assert parse_addr("[::1]:4555") == ("::1", 4555)
    with pytest.raises(ValueError, match="host:port"):
        parse_addr("4555x")


async def test_a_token_header_that_is_not_utf8_is_a_plain_401(stack: Stack, tmp_path: Path) -> None:
    base = await start_with_port(stack, tmp_path)
    host, port = base.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST /control/drain HTTP/1.1\r\nHost: x\r\nX-Auth-Token: \xff\xfe\x80\r\n"
            b"Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        async with asyncio.timeout(5):
            status_line = await reader.readline()
            body = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    assert status_line.startswith(b"HTTP/1.1 401")
    assert b"missing or wrong X-Auth-Token" in body
    assert stack.connector is not None
    assert not stack.connector.draining
