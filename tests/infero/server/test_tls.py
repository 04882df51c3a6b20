"""TLS in `infero server` and verified TLS in the connector, the console client and ctl.

A private CA made by the test signs the server's certificate; the connector links over
wss://, the openai SDK calls over https://, and a renewed certificate is picked up while
links and streams stay up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import httpx2
import openai
import pytest
from aiohttp import web

from infero.common.settings import ConfigError, load_settings
from infero.common.tls import client_context
from infero.server import tls
from infero.server.app import create_app
from infero.worker.runtime import Connector
from infero.worker.settings import WorkerSettings
from infero_tui.client import ClientError, FleetClient
from support.certs import TestCA, served_serial
from support.linkfakes import FakeBackend
from support.server import RunningServer, running_server
from support.server import settings as server_settings


@dataclass
class Pki:
    ca: TestCA
    cert: Path
    key: Path
    serial: int


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = TestCA.create(tmp_path / "ca")
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    serial = ca.issue(cert, key)
    return Pki(ca, cert, key, serial)


@dataclass
class TlsStack:
    server: RunningServer
    connector: Connector
    task: asyncio.Task[int]
    client: openai.AsyncOpenAI

    @property
    def port(self) -> int:
        return int(self.server.url.rsplit(":", 1)[1])


@asynccontextmanager
async def tls_stack(pki: Pki, backend: FakeBackend) -> AsyncIterator[TlsStack]:
    """TLS server + connector over wss:// (TLS_CA_FILE) + openai SDK over https://."""
    runner = web.AppRunner(backend.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    backend_url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    config = server_settings(
        client_key="ck", api_key="ak", tls_cert_file=str(pki.cert), tls_key_file=str(pki.key)
    )
    try:
        async with running_server(config) as server:
            assert server.url.startswith("https://")
            connector = Connector(
                load_settings(
                    WorkerSettings,
                    environ={
                        "SERVER_URL": server.ws_url,
                        "CLIENT_KEY": "ck",
                        "CLIENT_ID": "w-tls",
                        "COMPLETION_BASE_URL": backend_url,
                        "TLS_CA_FILE": str(pki.ca.ca_file),
                    },
                )
            )
            task = asyncio.create_task(connector.run())
            http = httpx2.AsyncClient(verify=client_context(str(pki.ca.ca_file)))
            client = openai.AsyncOpenAI(
                base_url=server.url + "/api/v1", api_key="ak", http_client=http
            )
            try:
                async with asyncio.timeout(10):
                    await connector.connected.wait()
                    await server.wait_for(lambda: server.status("w-tls") not in (None, "gone"))
                yield TlsStack(server, connector, task, client)
            finally:
                await client.close()
                connector.request_stop()
                async with asyncio.timeout(10):
                    assert await task == 0
    finally:
        await runner.cleanup()


async def test_connector_links_over_wss_and_the_openai_sdk_streams_over_https(pki: Pki) -> None:
    backend = FakeBackend(models=["m1"])
    async with tls_stack(pki, backend) as s, asyncio.timeout(10):
        assert s.server.ws_url.startswith("wss://")
        stream = await s.client.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = [chunk async for chunk in stream]
        models = [m.id async for m in s.client.models.list()]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    assert models == ["m1"]


async def test_a_renewed_certificate_serves_new_handshakes_while_links_and_streams_stay_up(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="infero.server.tls")
    backend = FakeBackend(models=["m1"], hold=True)
    async with tls_stack(pki, backend) as s, asyncio.timeout(20):
        ca_file = pki.ca.ca_file
        assert await asyncio.to_thread(served_serial, s.port, ca_file) == pki.serial
        link_before = s.connector.link_client.link
        stream = await s.client.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        await backend.entered.wait()

        renewed = pki.ca.issue(pki.cert, pki.key)
        certificate = s.server.app[tls.TLS]
        assert certificate.poll(), "the changed files were not noticed"
        assert not certificate.poll(), "unchanged files must not reload again"

        assert await asyncio.to_thread(served_serial, s.port, ca_file) == renewed
        backend.release.set()
        chunks = [chunk async for chunk in stream]
        assert chunks[-1].usage is not None
        assert s.connector.link_client.link is link_before
        assert s.connector.connected.is_set()
        assert s.server.status("w-tls") not in (None, "gone")
    assert "certificate reloaded" in caplog.text


async def test_the_running_server_notices_renewed_files_by_itself(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tls, "POLL_INTERVAL", 0.05)
    reloaded = asyncio.Event()
    original = tls.ServerTls.reload

    def reload(self: tls.ServerTls) -> bool:
        done = original(self)
        if done:
            reloaded.set()
        return done

    monkeypatch.setattr(tls.ServerTls, "reload", reload)
    config = server_settings(tls_cert_file=str(pki.cert), tls_key_file=str(pki.key))
    async with running_server(config) as server, asyncio.timeout(10):
        port = int(server.url.rsplit(":", 1)[1])
        renewed = pki.ca.issue(pki.cert, pki.key)
        await reloaded.wait()  # the watcher noticed the new files, no SIGHUP, no poll() call
        assert await asyncio.to_thread(served_serial, port, pki.ca.ca_file) == renewed


async def test_a_half_written_renewal_keeps_the_current_certificate(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_server(
        server_settings(tls_cert_file=str(pki.cert), tls_key_file=str(pki.key))
    ) as server:
        port = int(server.url.rsplit(":", 1)[1])
        pki.ca.issue(pki.cert, tmp_path / "other.key")  # new certificate, old key beside it
        assert not server.app[tls.TLS].poll()
        serial = await asyncio.to_thread(served_serial, port, pki.ca.ca_file)
    assert serial == pki.serial
    assert "keeping the current certificate" in caplog.text


async def test_an_untrusted_server_certificate_is_one_line_naming_host_and_ca(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """No TLS_CA_FILE: the private CA is not in the system store, so the link is refused."""
    async with running_server(
        server_settings(tls_cert_file=str(pki.cert), tls_key_file=str(pki.key))
    ) as server:
        port = server.url.rsplit(":", 1)[1]
        environ = {"SERVER_URL": server.ws_url, "COMPLETION_BASE_URL": "http://127.0.0.1:9/v1"}
        connector = Connector(load_settings(WorkerSettings, environ=environ))
        async with asyncio.timeout(10):
            assert await connector.run() == 1
    errors = [r for r in caplog.records if r.name == "infero.common.linkclient"]
    assert len(errors) == 1
    (record,) = errors
    assert record.levelno == logging.ERROR
    assert record.exc_info is None
    message = record.getMessage()
    assert "\n" not in message
    assert f"TLS certificate of 127.0.0.1:{port} not trusted" in message
    assert "(CA: the system store" in message or "(CA: SSL_CERT_FILE" in message
    assert "unable to get local issuer certificate" in message


async def test_the_console_client_verifies_https_against_tls_ca_file(pki: Pki) -> None:
    async with running_server(
        server_settings(tls_cert_file=str(pki.cert), tls_key_file=str(pki.key))
    ) as server:
        async with FleetClient(server.url, ca_file=str(pki.ca.ca_file)) as client:
            snapshot = await client.state()
        assert snapshot.workers == []
        async with FleetClient(server.url) as untrusting:
            with pytest.raises(ClientError) as refused:
                await untrusting.state()
    message = str(refused.value)
    assert message.startswith("state: TLS certificate of 127.0.0.1:")
    assert "not trusted (CA: " in message


def test_a_missing_ca_file_is_a_setting_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"TLS_CA_FILE \(environment\).*no such file"):
        load_settings(WorkerSettings, environ={"TLS_CA_FILE": str(tmp_path / "nope.pem")})
    with pytest.raises(ClientError, match="TLS_CA_FILE: no such file"):
        FleetClient("https://example.test", ca_file=str(tmp_path / "nope.pem"))


def test_unusable_tls_files_stop_the_server_with_one_line(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ConfigError, match=r"TLS_KEY_FILE .* is set but TLS_CERT_FILE is not"):
        create_app(server_settings(tls_key_file=str(pki.key)))
    with pytest.raises(ConfigError, match=r"cannot read .*missing\.crt"):
        create_app(server_settings(tls_cert_file=str(tmp_path / "missing.crt")))
    with pytest.raises(ConfigError, match="cannot use"):
        create_app(server_settings(tls_cert_file=str(pki.ca.ca_file), tls_key_file=str(pki.key)))


async def test_a_separate_metrics_port_serves_https_too(pki: Pki) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        metrics_port = sock.getsockname()[1]
    config = server_settings(
        tls_cert_file=str(pki.cert), tls_key_file=str(pki.key), metrics_port=metrics_port
    )
    async with (
        running_server(config),
        httpx.AsyncClient(verify=client_context(str(pki.ca.ca_file))) as http,
    ):
        response = await http.get(f"https://127.0.0.1:{metrics_port}/metrics")
    assert response.status_code == 200
    assert "infero_build_info" in response.text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _serve_then(port: int, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from infero.cli import main; main()",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *args,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "LOG_LEVEL": "info"},
    )


async def _line_with(proc: asyncio.subprocess.Process, text: bytes) -> bytes:
    assert proc.stderr is not None
    while True:
        line = await proc.stderr.readline()
        assert line, f"server exited before logging {text!r}"
        if text in line:
            return line


async def test_infero_server_reloads_its_certificate_on_sighup(pki: Pki) -> None:
    port = _free_port()
    proc = await _serve_then(port, "--tls-cert", str(pki.cert), "--tls-key", str(pki.key))
    try:
        async with asyncio.timeout(20):
            assert b"(https)" in await _line_with(proc, b"listening on")
            renewed = pki.ca.issue(pki.cert, pki.key)
            proc.send_signal(signal.SIGHUP)
            await _line_with(proc, b"certificate reloaded")
            assert await asyncio.to_thread(served_serial, port, pki.ca.ca_file) == renewed
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_sighup_without_tls_is_logged_and_does_not_stop_the_server() -> None:
    proc = await _serve_then(_free_port())
    try:
        async with asyncio.timeout(20):
            assert b"(http)" in await _line_with(proc, b"listening on")
            proc.send_signal(signal.SIGHUP)
            await _line_with(proc, b"SIGHUP: nothing to reload")
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_ssl_cert_file_is_trusted_when_tls_ca_file_is_not_set(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca.ca_file))
    async with running_server(
        server_settings(tls_cert_file=str(pki.cert), tls_key_file=str(pki.key))
    ) as server:
        async with FleetClient(server.url) as client:
            snapshot = await client.state()
        environ = {"SERVER_URL": server.ws_url, "CLIENT_ID": "w-env", "MODELS": "m1"}
        connector = Connector(load_settings(WorkerSettings, environ=environ))
        task = asyncio.create_task(connector.run())
        try:
            async with asyncio.timeout(10):
                await connector.connected.wait()
        finally:
            connector.request_stop()
            async with asyncio.timeout(10):
                await task
    assert snapshot.workers == []


async def test_a_server_list_may_mix_wss_and_ws_urls(pki: Pki) -> None:
    """A TLS server that is down first, then a plain one: the ws:// URL gets no TLS context."""
    async with running_server() as plain:
        environ = {
            "SERVER_URL": f"wss://127.0.0.1:{_free_port()}/api/llm/connect, {plain.ws_url}",
            "CLIENT_ID": "w-mixed",
            "MODELS": "m1",
            "TLS_CA_FILE": str(pki.ca.ca_file),
        }
        connector = Connector(load_settings(WorkerSettings, environ=environ))
        task = asyncio.create_task(connector.run())
        try:
            async with asyncio.timeout(10):
                await connector.connected.wait()
        finally:
            connector.request_stop()
            async with asyncio.timeout(10):
                assert await task == 0
