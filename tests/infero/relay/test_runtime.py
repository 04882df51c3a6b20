"""The relay runtime: provider probe, monitor, hello, drain on SIGTERM, metrics port."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from infero.common.backoff import Backoff
from infero.common.settings import load_settings
from infero.protocol.status import WorkerStatusDoc
from infero.relay.probe import ProviderDown, probe
from infero.relay.runtime import (
    McpRelay,
    ProviderMonitor,
    provider_path,
    provider_session,
    split_endpoint,
)
from infero.relay.settings import RelaySettings
from support.server import RunningServer, running_server

INIT_RESULT = {
    "jsonrpc": "2.0",
    "id": "infero-probe",
    "result": {"protocolVersion": "2025-06-18", "serverInfo": {"name": "fake", "version": "1"}},
}


@asynccontextmanager
async def fake_provider(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """A tiny HTTP server answering POST/DELETE /mcp with `handler`."""
    app = web.Application()
    app.router.add_route("*", "/mcp", handler)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/mcp"
    finally:
        await runner.cleanup()


def relay_d1(server: RunningServer, provider_url: str, **env: str) -> McpRelay:
    """Relay `d1` (CLIENT_KEY `ck`) for `server`, relaying to `provider_url`."""
    environ = {
        "SERVER_URL": server.url.replace("http", "ws", 1) + "/api/mcp/connect",
        "CLIENT_KEY": "ck",
        "CLIENT_ID": "d1",
        "PROVIDER_URL": provider_url,
        **env,
    }
    return McpRelay(load_settings(RelaySettings, environ=environ))


def relay_is(server: RunningServer, status: str) -> Callable[[], bool]:
    """`server.wait_for` predicate: relay `d1` is connected with `status`."""
    relays = server.embedded.relays.relays
    return lambda: "d1" in relays and relays["d1"].status == status


def test_requests_are_pointed_at_the_provider_path_with_merged_queries() -> None:
    assert split_endpoint("http://h:1/mcp?x=1") == ("http://h:1", "/mcp", "x=1")
    assert split_endpoint("https://h") == ("https://h", "/", "")
    assert provider_path("/mcp", "", "/") == "/mcp"
    assert provider_path("/mcp", "x=1", "/?y=2") == "/mcp?x=1&y=2"


async def test_probe_accepts_json_and_sse_answers_and_ends_the_session_it_opened() -> None:
    deleted: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.method == "DELETE":
            deleted.append(request.headers["Mcp-Session-Id"])
            return web.Response()
        body = await request.json()
        assert body["method"] == "initialize"
        assert body["params"]["protocolVersion"] == "2025-03-26"
        if "text/event-stream" in request.headers["Accept"]:
            data = json.dumps(INIT_RESULT)
            return web.Response(
                text=f"event: message\ndata: {data}\n\n",
                content_type="text/event-stream",
                headers={"Mcp-Session-Id": "s-1"},
            )
        return web.json_response(INIT_RESULT)

    async with fake_provider(handle) as url, aiohttp.ClientSession() as http:
        name = await probe(http, url, protocol_version="2025-03-26", within=5)
    assert name == "fake"
    assert deleted == ["s-1"]


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (500, "boom", "HTTP 500"),
        (200, '{"jsonrpc":"2.0","id":"infero-probe","error":{"code":-1,"message":"no"}}', "no"),
        (200, "not json", "not JSON-RPC"),
    ],
)
async def test_probe_explains_why_a_provider_is_not_ready(
    status: int, body: str, reason: str
) -> None:
    async def handle(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text=body, content_type="application/json")

    async with fake_provider(handle) as url, aiohttp.ClientSession() as http:
        with pytest.raises(ProviderDown, match=reason):
            await probe(http, url, protocol_version="2025-06-18", within=5)


async def test_probe_of_an_unreachable_provider_fails_cleanly() -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(ProviderDown, match="cannot reach"):
            await probe(http, "http://127.0.0.1:9/mcp", protocol_version="2025-06-18", within=5)


async def test_monitor_reports_not_ready_until_the_provider_answers() -> None:
    answers: list[str | ProviderDown] = [ProviderDown("down"), ProviderDown("down"), "srv"]
    changes: list[bool] = []

    async def check() -> str:
        answer = answers.pop(0)
        if isinstance(answer, ProviderDown):
            raise answer
        return answer

    monitor = ProviderMonitor(
        check,
        interval=60,
        on_change=lambda: changes.append(monitor.healthy),
        backoff=Backoff(schedule=(1, 5), ceiling=30),
    )
    delays = [await monitor.probe_once() for _ in range(3)]
    assert changes == [False, True]
    assert delays == [1, 5, 60]
    assert monitor.healthy
    assert monitor.last_error == ""


def test_the_hello_announces_a_hash_of_auth_token_never_the_token() -> None:
    settings = load_settings(
        RelaySettings, environ={"AUTH_TOKEN": "s3cret", "CLIENT_ID": "r1", "CLIENT_KEY": "ck"}
    )
    hello = McpRelay(settings).hello()
    assert hello.kind == "mcp"
    assert hello.id == "r1"
    assert hello.auth_sha256 == hashlib.sha256(b"s3cret").hexdigest()
    assert "s3cret" not in hello.model_dump_json()
    assert hello.status == "not_ready"


async def test_sigterm_drains_in_flight_calls_then_the_relay_exits() -> None:
    release = asyncio.Event()
    entered = asyncio.Event()
    notified: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body["method"] == "initialize":
            return web.json_response(INIT_RESULT)
        if "id" not in body:
            notified.append(body["method"])
            return web.Response(status=202)
        entered.set()
        await release.wait()
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": {}})

    async with running_server(client_key="ck") as server, fake_provider(handle) as url:
        relay = relay_d1(server, url, METRICS_PORT="0")
        task = asyncio.create_task(relay.run())
        async with asyncio.timeout(5):
            await relay.connected.wait()
            await server.wait_for(relay_is(server, "ready"))
        public = f"{server.url}/api/mcp/id/d1"
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x"}}
        async with aiohttp.ClientSession() as http:
            slow = asyncio.create_task(http.post(public, json=call))
            async with asyncio.timeout(5):
                await entered.wait()
            relay.signal_received("SIGTERM")
            async with asyncio.timeout(5):
                await server.wait_for(relay_is(server, "draining"))
            async with http.post(public, json=call) as refused:
                assert refused.status == 503
            note = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {}}
            async with http.post(public, json=note) as passed:
                assert passed.status == 202  # notifications still reach the provider
            assert notified == ["notifications/cancelled"]
            async with http.get(relay.metrics_url) as metrics:
                assert "infero_mcp_relay_exchanges_inflight 1.0" in await metrics.text()
            release.set()
            async with asyncio.timeout(5):
                finished = await slow
                assert finished.status == 200
                finished.release()
                assert await task == 0


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (key, cert), made by the openssl CLI."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


async def test_provider_tls_is_verified_unless_insecure_skip_verify(
    tls_files: tuple[Path, Path],
) -> None:
    key, cert = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def handle(request: web.Request) -> web.StreamResponse:
        return web.json_response(INIT_RESULT)

    app = web.Application()
    app.router.add_post("/mcp", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}/mcp"
    try:
        async with provider_session(verify_tls=True) as verified:
            with pytest.raises(ProviderDown, match="cannot reach"):
                await probe(verified, url, protocol_version="2025-06-18", within=5)
        async with provider_session(verify_tls=False) as insecure:
            assert await probe(insecure, url, protocol_version="2025-06-18", within=5) == "fake"
    finally:
        await runner.cleanup()


async def test_operator_drains_undrains_and_shuts_down_a_relay_through_the_server(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "infero.server.control")
    release = asyncio.Event()
    entered = asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body["method"] == "initialize":
            return web.json_response(INIT_RESULT)
        entered.set()
        await release.wait()
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": {}})

    async with (
        running_server(client_key="ck", api_key="client", operator_key="op") as server,
        fake_provider(handle) as url,
        aiohttp.ClientSession() as http,
    ):
        task = asyncio.create_task(relay_d1(server, url, DRAIN_TIMEOUT="-1").run())

        async def steer(action: str, key: str = "op", relay_id: str = "d1") -> int:
            async with http.post(
                f"{server.url}/api/mcp/relays/{relay_id}/{action}",
                headers={"Authorization": f"Bearer {key}"},
            ) as resp:
                if resp.status == 202:
                    assert await resp.json() == {"id": relay_id, "action": action, "accepted": True}
                return resp.status

        public = f"{server.url}/api/mcp/id/d1"
        client = {"Authorization": "Bearer client"}
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x"}}
        async with asyncio.timeout(5):
            await server.wait_for(relay_is(server, "ready"))
            assert await steer("drain", key="client") == 403
            assert await steer("drain", relay_id="nobody") == 404
            slow = asyncio.create_task(http.post(public, json=call, headers=client))
            await entered.wait()
            assert await steer("drain") == 202
            await server.wait_for(relay_is(server, "draining"))
            async with http.post(public, json=call, headers=client) as refused:
                assert refused.status == 503
            assert await steer("undrain") == 202
            await server.wait_for(relay_is(server, "ready"))
            assert await steer("shutdown") == 202
            await server.wait_for(relay_is(server, "draining"))
            assert await steer("undrain") == 409
            release.set()
            finished = await slow
            assert finished.status == 200
            finished.release()
            assert await task == 0
    assert "operator key 'operator' asked undrain of relay d1" in caplog.text


async def test_an_idle_relay_drained_by_the_server_stays_linked_until_shut_down() -> None:
    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body["method"] == "initialize":
            return web.json_response(INIT_RESULT)
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": {}})

    async with (
        running_server(client_key="ck", operator_key="op") as server,
        fake_provider(handle) as url,
        aiohttp.ClientSession(headers={"Authorization": "Bearer op"}) as http,
    ):
        relay = relay_d1(server, url, RECONNECT="true")
        task = asyncio.create_task(relay.run())
        steer = f"{server.url}/api/mcp/relays/d1/"
        async with asyncio.timeout(10):
            await server.wait_for(relay_is(server, "ready"))
            async with http.post(steer + "drain") as resp:
                assert resp.status == 202
            await server.wait_for(relay_is(server, "draining"))
            assert not task.done()
            async with http.post(steer + "undrain") as resp:
                assert resp.status == 202
            await server.wait_for(relay_is(server, "ready"))
            call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x"}}
            async with http.post(f"{server.url}/api/mcp/id/d1", json=call) as answer:
                assert answer.status == 200
            async with http.post(steer + "shutdown") as resp:
                assert resp.status == 202
            assert await task == 0


async def test_a_provider_answering_deeply_nested_json_is_not_ready_and_sigterm_still_works(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handle(request: web.Request) -> web.StreamResponse:
        return web.Response(text="[" * 200_000, content_type="application/json")

    async with running_server(client_key="ck") as server, fake_provider(handle) as url:
        relay = relay_d1(server, url)
        task = asyncio.create_task(relay.run())
        async with asyncio.timeout(5):
            await relay.connected.wait()
            await server.wait_for(relay_is(server, "not_ready"))
        assert "nested too deeply" in relay.monitor.last_error
        relay.signal_received("SIGTERM")
        async with asyncio.timeout(5):
            assert await task == 0


async def test_the_monitor_survives_an_unexpected_probe_error_as_not_ready() -> None:
    async def check() -> str:
        raise RuntimeError("a bug")

    monitor = ProviderMonitor(check, interval=60, on_change=lambda: None)
    await monitor.probe_once()
    assert not monitor.healthy
    assert "RuntimeError('a bug')" in monitor.last_error
    assert monitor.probed.is_set()


async def test_a_relay_stopped_before_its_first_probe_ends_exits() -> None:
    started = asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        started.set()
        await asyncio.Event().wait()  # never answers the probe
        raise AssertionError

    async with running_server(client_key="ck") as server, fake_provider(handle) as url:
        relay = relay_d1(server, url)
        task = asyncio.create_task(relay.run())
        async with asyncio.timeout(5):
            await started.wait()
        relay.signal_received("SIGTERM")
        async with asyncio.timeout(5):
            assert await task == 0


async def test_a_call_that_cannot_reach_the_provider_triggers_a_probe_at_once() -> None:
    up = True

    async def handle(request: web.Request) -> web.StreamResponse:
        if not up:
            assert request.transport is not None
            request.transport.close()  # the provider dies under the call
            raise web.HTTPInternalServerError
        return web.json_response(INIT_RESULT)

    async with running_server(client_key="ck") as server, fake_provider(handle) as url:
        relay = relay_d1(server, url, MCP_PROBE_INTERVAL="1h")
        task = asyncio.create_task(relay.run())
        async with asyncio.timeout(5):
            await server.wait_for(relay_is(server, "ready"))
        up = False
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        public = f"{server.url}/api/mcp/id/d1"
        async with aiohttp.ClientSession() as http, http.post(public, json=call) as failed:
            assert failed.status == 502
            assert failed.headers["Retry-After"] == "5"
        async with asyncio.timeout(5):
            await server.wait_for(relay_is(server, "not_ready"))
        relay.request_stop()
        async with asyncio.timeout(5):
            await task


async def test_a_listening_stream_may_stay_silent_longer_than_mcp_http_timeout() -> None:
    listening = asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            listening.set()
            await asyncio.Event().wait()  # silent for good
        return web.json_response(INIT_RESULT)

    async with running_server(client_key="ck") as server, fake_provider(handle) as url:
        relay = relay_d1(server, url, MCP_HTTP_TIMEOUT="0.2s", MCP_SESSION_IDLE_TIMEOUT="1h")
        task = asyncio.create_task(relay.run())
        async with asyncio.timeout(5):
            await server.wait_for(relay_is(server, "ready"))
        listen = {"Accept": "text/event-stream", "Mcp-Session-Id": "s1"}
        public = f"{server.url}/api/mcp/id/d1"
        async with aiohttp.ClientSession() as http, http.get(public, headers=listen) as stream:
            async with asyncio.timeout(5):
                await listening.wait()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1):  # five times MCP_HTTP_TIMEOUT: still open
                    await stream.content.read(1)
        relay.request_stop()
        async with asyncio.timeout(5):
            await task


async def test_the_status_port_reports_the_relay_and_steers_its_drain(tmp_path: Path) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body["method"] == "tools/call":
            entered.set()
            await release.wait()
        return web.json_response({**INIT_RESULT, "id": body["id"]})

    config = tmp_path / "mcp.yaml"
    async with running_server(client_key="ck") as server, fake_provider(handle) as url:
        environ = {
            "SERVER_URL": server.url.replace("http", "ws", 1) + "/api/mcp/connect",
            "CLIENT_KEY": "ck",
            "CLIENT_ID": "d1",
            "PROVIDER_URL": url,
            "STATUS_ADDR": "127.0.0.1:0",
            "METRICS_PORT": "0",
        }
        relay = McpRelay(load_settings(RelaySettings, environ=environ), config_path=str(config))
        task = asyncio.create_task(relay.run())
        async with asyncio.timeout(5):
            await server.wait_for(relay_is(server, "ready"))
        token_file = tmp_path / "worker.token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = {"X-Auth-Token": token_file.read_text(encoding="utf-8").strip()}
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x"}}
        async with aiohttp.ClientSession(relay.status_url) as http:
            async with http.get("/status") as resp:
                status = WorkerStatusDoc.model_validate(await resp.json())
            assert status.kind == "mcp"
            assert status.state == "connected_idle"
            assert status.connected_to_server
            assert status.connected_to_backend
            assert status.worker_id == "d1"
            assert status.provider == url
            assert status.max_concurrency == 16
            async with http.get("/version") as resp:
                assert resp.status == 200
            held = asyncio.create_task(http.post(f"{server.url}/api/mcp/id/d1", json=call))
            async with asyncio.timeout(5):
                await entered.wait()
            async with http.post("/control/drain") as resp:
                assert resp.status == 401
            async with http.post("/control/drain", headers=token) as resp:
                assert resp.status == 200
            async with asyncio.timeout(5):
                await server.wait_for(relay_is(server, "draining"))
            async with http.get("/status") as resp:
                draining = WorkerStatusDoc.model_validate(await resp.json())
            assert draining.state == "draining"
            assert draining.current_jobs == 1
            async with http.get(relay.metrics_url) as resp:
                metrics = await resp.text()
            assert "infero_mcp_relay_draining 1.0" in metrics
            assert "infero_mcp_relay_calls_inflight 1.0" in metrics
            assert "infero_mcp_relay_sessions 0.0" in metrics
            async with http.post("/control/undrain", headers=token) as resp:
                assert resp.status == 200
            release.set()
            async with asyncio.timeout(5):
                (await held).release()
            async with http.post("/control/shutdown", headers=token) as resp:
                assert resp.status == 200
        async with asyncio.timeout(5):
            assert await task == 0


async def test_a_draining_relay_lets_the_clients_delete_through_before_it_exits() -> None:
    release = asyncio.Event()
    entered = asyncio.Event()
    deleted: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.method == "DELETE":
            deleted.append(request.headers["Mcp-Session-Id"])
            return web.Response(status=200)
        body = await request.json()
        if body["method"] == "initialize":
            return web.json_response(INIT_RESULT)
        entered.set()
        await release.wait()
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": {}})

    async with running_server(client_key="ck") as server, fake_provider(handle) as url:
        relay = relay_d1(server, url)
        task = asyncio.create_task(relay.run())
        async with asyncio.timeout(5):
            await server.wait_for(relay_is(server, "ready"))
        public = f"{server.url}/api/mcp/id/d1"
        session = {"Mcp-Session-Id": "s1"}
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x"}}
        async with aiohttp.ClientSession() as http:
            slow = asyncio.create_task(http.post(public, json=call, headers=session))
            async with asyncio.timeout(5):
                await entered.wait()
            relay.signal_received("SIGTERM")
            release.set()
            async with asyncio.timeout(5):
                (await slow).release()
                async with http.delete(public, headers=session) as goodbye:
                    assert goodbye.status == 200
                assert await task == 0
        assert deleted == ["s1"]
