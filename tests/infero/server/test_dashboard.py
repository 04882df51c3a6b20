"""`GET /state`: one self-contained page under a strict Content-Security-Policy.

The page's behaviour in a real browser is tested in tests/browser/.
"""

from __future__ import annotations

import base64
import hashlib
import re

from aiohttp import web
from pytest_aiohttp import AiohttpClient

from infero.server import dashboard
from infero.server.app import create_app
from infero.server.settings import ServerSettings


def _app() -> web.Application:
    app = web.Application()
    dashboard.setup(app)
    return app


def _sha256(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


async def test_state_page_is_html_allowed_only_its_own_inline_script_and_style(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(_app())
    response = await client.get("/state")
    assert response.status == 200
    assert response.content_type == "text/html"
    html = await response.text()

    (script,) = re.findall(r"<script>(.*?)</script>", html, re.S)
    (style,) = re.findall(r"<style>(.*?)</style>", html, re.S)
    policy = dict(
        directive.strip().split(" ", 1)
        for directive in response.headers["Content-Security-Policy"].split(";")
    )
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == _sha256(script)
    assert policy["style-src"] == _sha256(style)
    assert policy["connect-src"] == "'self'"
    assert "unsafe" not in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"


async def test_state_page_loads_nothing_from_elsewhere(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(_app())
    html = await (await client.get("/state")).text()
    assert not re.search(r"""\b(src|href)\s*=""", html)
    assert "http://" not in html
    assert "https://" not in html
    assert "@import" not in html


def test_dashboard_script_never_turns_data_into_html() -> None:
    script = (dashboard.STATIC / "dashboard.js").read_text("utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script


async def test_state_page_is_public_while_its_data_needs_the_key(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(create_app(ServerSettings(host="127.0.0.1", api_key="k")))
    assert (await client.get("/state")).status == 200
    assert (await client.get("/api/state/stream")).status == 401
