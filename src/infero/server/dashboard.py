"""`GET /state`: the web dashboard, one self-contained page driven by `/api/state/stream`.

The page is public (it holds no data); the stream it reads needs the API key, which the page
asks for on 401 and keeps in `sessionStorage` for the tab. Its script and style are inlined
and allowed by hash in a strict Content-Security-Policy: no other script, style, frame, form
target or origin can be used, even if a connector-provided string slipped into the DOM.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

from aiohttp import web

STATIC = files("infero.server") / "static"
"""Packaged assets of the dashboard and the API docs."""


@dataclass(frozen=True, slots=True)
class Page:
    """A rendered page and the policy that allows exactly its inline code."""

    html: bytes
    csp: str


def _hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


@cache
def dashboard_page() -> Page:
    """Inline `dashboard.css` and `dashboard.js` into `dashboard.html` (read once)."""
    html = (STATIC / "dashboard.html").read_text("utf-8")
    css = (STATIC / "dashboard.css").read_text("utf-8")
    js = (STATIC / "dashboard.js").read_text("utf-8")
    if "</style" in css.lower() or "</script" in js.lower():
        raise ValueError("dashboard assets must not close their own element")
    html = html.replace("<!-- style -->", f"<style>{css}</style>", 1)
    html = html.replace("<!-- script -->", f"<script>{js}</script>", 1)
    csp = "; ".join(
        [
            "default-src 'none'",
            f"script-src {_hash(js)}",
            f"style-src {_hash(css)}",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return Page(html=html.encode("utf-8"), csp=csp)


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
"""Sent with every HTML page of the server (dashboard, API docs)."""


async def handle_state_page(request: web.Request) -> web.Response:
    """The dashboard HTML."""
    page = dashboard_page()
    return web.Response(
        body=page.html,
        content_type="text/html",
        charset="utf-8",
        headers={"Content-Security-Policy": page.csp, **SECURITY_HEADERS},
    )


def setup(app: web.Application) -> None:
    """Mount `GET /state` on `app` (the page is built here, so a broken asset fails at start)."""
    dashboard_page()
    app.router.add_get("/state", handle_state_page)
