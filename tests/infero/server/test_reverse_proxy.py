"""The documented reverse proxy configurations in front of a real server.

Real nginx (Debian package `nginx`) and real Caddy (Debian package `caddy`) run the files in
deploy/ with only ports and paths replaced: a connector links through them over wss://, the
openai SDK streams through them chunk by chunk, and the server believes their
X-Forwarded-For because TRUSTED_PROXIES names them (and only then).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import httpx2
import openai
import pytest
from aiohttp import web

from infero.common.settings import load_settings
from infero.common.tls import client_context
from infero.server.proxies import ProxyTrust, parse_networks
from infero.worker.runtime import Connector
from infero.worker.settings import WorkerSettings
from support.certs import TestCA
from support.linkfakes import FakeBackend
from support.server import RunningServer, running_server
from support.server import settings as server_settings

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CADDY = shutil.which("caddy") or "/usr/bin/caddy"
STARTUP = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll until the proxy accepts connections (bounded), or fail with its log."""
    for _ in range(int(STARTUP / 0.05)):
        if proc.poll() is not None:
            raise AssertionError(f"proxy exited: {log.read_text(encoding='utf-8')}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.05):
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.05)
    raise AssertionError(f"proxy not listening on {port}: {log.read_text(encoding='utf-8')}")


@contextlib.contextmanager
def nginx(folder: Path, listen: int, upstream: int, cert: Path, key: Path) -> Iterator[None]:
    """deploy/nginx/infero.conf with ports and certificate paths replaced."""
    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed (Debian package nginx; .ci/run installs it)")
    site = (DEPLOY / "nginx" / "infero.conf").read_text(encoding="utf-8")
    site = site.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream};")
    site = site.replace("listen 443 ssl;", f"listen 127.0.0.1:{listen} ssl;")
    site = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};", site)
    site = re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};", site)
    (folder / "infero.conf").write_text(site, encoding="utf-8")
    log = folder / "error.log"
    main = f"""
daemon off;
master_process off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {log} info;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    include {folder}/infero.conf;
}}
"""
    (folder / "nginx.conf").write_text(main, encoding="utf-8")
    proc = subprocess.Popen(
        [NGINX, "-p", str(folder), "-c", str(folder / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(listen, proc, log)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def caddy(folder: Path, listen: int, upstream: int, cert: Path, key: Path) -> Iterator[None]:
    """deploy/caddy/Caddyfile with the address, upstream port and certificate replaced."""
    if not Path(CADDY).exists():
        pytest.skip("caddy is not installed (Debian package caddy; .ci/run installs it)")
    site = (DEPLOY / "caddy" / "Caddyfile").read_text(encoding="utf-8")
    site = site.replace("reverse_proxy 127.0.0.1:8080", f"reverse_proxy 127.0.0.1:{upstream}")
    site = site.replace("gw.example.com {", f"https://127.0.0.1:{listen} {{\n\ttls {cert} {key}", 1)
    config = (
        f"{{\n\tadmin off\n\tauto_https disable_redirects\n\tstorage file_system {folder}\n}}\n"
    )
    (folder / "Caddyfile").write_text(config + site, encoding="utf-8")
    log = folder / "caddy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [CADDY, "run", "--config", str(folder / "Caddyfile"), "--adapter", "caddyfile"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={"HOME": str(folder), "XDG_DATA_HOME": str(folder), "PATH": "/usr/bin:/bin"},
        )
        try:
            _wait_listening(listen, proc, log)
            yield
        finally:
            proc.terminate()
            proc.wait(10)


Proxy = Callable[[Path, int, int, Path, Path], contextlib.AbstractContextManager[None]]


@asynccontextmanager
async def behind(
    proxy: Proxy, tmp_path: Path, **server_options: object
) -> AsyncIterator[tuple[RunningServer, str, TestCA]]:
    """A plain-HTTP server on loopback and the proxy in front of it with TLS: (server, url, CA)."""
    ca = TestCA.create(tmp_path / "ca")
    cert, key = tmp_path / "proxy.crt", tmp_path / "proxy.key"
    ca.issue(cert, key)
    options = {"client_key": "ck", "api_key": "ak", **server_options}
    async with running_server(server_settings(**options)) as server:
        upstream = int(server.url.rsplit(":", 1)[1])
        listen = _free_port()
        folder = tmp_path / "proxy"
        folder.mkdir()
        with proxy(folder, listen, upstream, cert, key):
            yield server, f"https://127.0.0.1:{listen}", ca


@pytest.fixture(params=["nginx", "caddy"])
def proxy(request: pytest.FixtureRequest) -> Proxy:
    return nginx if request.param == "nginx" else caddy


async def test_a_connector_links_and_answers_stream_chunk_by_chunk_through_the_proxy(
    proxy: Proxy, tmp_path: Path
) -> None:
    backend = FakeBackend(models=["m1"], hold=True)
    runner = web.AppRunner(backend.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with behind(proxy, tmp_path, trusted_proxies=("127.0.0.1",)) as (server, url, ca):
            environ = {
                "SERVER_URL": "wss" + url.removeprefix("https") + "/api/llm/connect",
                "CLIENT_KEY": "ck",
                "CLIENT_ID": "w-proxied",
                "COMPLETION_BASE_URL": f"http://127.0.0.1:{runner.addresses[0][1]}/v1",
                "TLS_CA_FILE": str(ca.ca_file),
            }
            connector = Connector(load_settings(WorkerSettings, environ=environ))
            task = asyncio.create_task(connector.run())
            http = httpx2.AsyncClient(verify=client_context(str(ca.ca_file)))
            client = openai.AsyncOpenAI(base_url=url + "/api/v1", api_key="ak", http_client=http)
            try:
                async with asyncio.timeout(20):
                    await connector.connected.wait()
                    await server.wait_for(lambda: server.fleet.get_live("w-proxied") is not None)
                    stream = await client.chat.completions.create(
                        model="m1", messages=[{"role": "user", "content": "hi"}], stream=True
                    )
                    chunks = aiter(stream)
                    first = await anext(chunks)
                    assert not backend.release.is_set()  # the backend has not finished yet
                    backend.release.set()
                    rest = [chunk async for chunk in chunks]
            finally:
                await client.close()
                connector.request_stop()
                async with asyncio.timeout(10):
                    await task
    finally:
        await runner.cleanup()
    assert first.model_extra == {"n": 1}
    assert rest[-1].usage is not None
    assert rest[-1].usage.completion_tokens == 3


async def _link_from(address: str, url: str, ca: TestCA, claimed: str) -> None:
    """Open a link from local `address` claiming `claimed`; the server refuses it and logs."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    ssl = client_context(str(ca.ca_file)) if url.startswith("wss") else True
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.ws_connect(url, headers={"X-Forwarded-For": claimed}, ssl=ssl) as ws,
    ):
        await ws.send_str('{"type": "hello", "bad": true}')
        await ws.receive(timeout=10)


def _refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]


async def test_the_client_address_is_believed_only_from_trusted_proxies(
    proxy: Proxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The client dials from 127.0.0.2, the proxy from 127.0.0.1 (the trusted one)."""
    caplog.set_level(logging.INFO, logger="infero.server.linkserver")
    async with behind(proxy, tmp_path, trusted_proxies=("127.0.0.1",)) as (server, url, ca):
        proxied = "wss" + url.removeprefix("https") + "/api/llm/connect"
        await _link_from("127.0.0.2", proxied, ca, claimed="198.51.100.9")
        (through_proxy,) = _refusals(caplog)
        caplog.clear()
        await _link_from("127.0.0.2", server.ws_url, ca, claimed="198.51.100.9")
        (direct,) = _refusals(caplog)
    assert "from 127.0.0.2 refused" in through_proxy  # the proxy's header is believed
    assert "from 127.0.0.2 refused" in direct  # an untrusted peer's header is not
    assert "198.51.100.9" not in through_proxy + direct  # the client's own claim never is


def test_forwarded_for_is_read_from_the_right_and_only_from_trusted_peers() -> None:
    trust = ProxyTrust(parse_networks(["127.0.0.1", "10.0.0.0/8"]))
    assert trust.client("127.0.0.1", "203.0.113.7") == "203.0.113.7"
    assert trust.client("127.0.0.1", "6.6.6.6, 203.0.113.7, 10.1.2.3") == "203.0.113.7"
    assert trust.client("192.0.2.1", "203.0.113.7") is None  # peer is not a trusted proxy
    assert trust.client("127.0.0.1", "") is None
    assert trust.client("127.0.0.1", "not-an-ip") is None
    assert trust.client("127.0.0.1", "10.0.0.5, 127.0.0.1") == "10.0.0.5"  # all trusted
    with pytest.raises(ValueError, match="'bogus' is not an IP address or network"):
        parse_networks(["bogus"])


def test_docs_show_the_tested_proxy_files_verbatim() -> None:
    doc = (DEPLOY.parent / "docs" / "deploy.md").read_text(encoding="utf-8")
    for path in (DEPLOY / "nginx" / "infero.conf", DEPLOY / "caddy" / "Caddyfile"):
        assert path.read_text(encoding="utf-8") in doc, f"docs/deploy.md must show {path.name}"
