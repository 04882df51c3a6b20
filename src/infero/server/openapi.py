"""OpenAPI document and offline Swagger UI under `/api/client/` (public, no key).

The Swagger UI files are vendored in `static/swagger-ui/` (see its README) and served from
this process, under a Content-Security-Policy that allows nothing from elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web

from infero.server import metrics
from infero.server.dashboard import SECURITY_HEADERS, STATIC
from infero.server.openapi_doc import build_document
from infero.server.settings import ServerSettings

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

_ASSET_FILES = {
    "swagger-ui-bundle.js": Path(str(STATIC / "swagger-ui" / "swagger-ui-bundle.js")),
    "swagger-ui.css": Path(str(STATIC / "swagger-ui" / "swagger-ui.css")),
    "api-docs.js": Path(str(STATIC / "api-docs.js")),
}
"""The files named in the document (`SWAGGER_ASSETS`): vendored Swagger UI and our start-up."""


def setup(app: web.Application, settings: ServerSettings) -> None:
    """Mount `/api/client/openapi.json`, the Swagger UI page `/api/client/` and its files."""
    on_main_port = metrics.separate_port(settings) is None
    document = json.dumps(build_document(metrics_on_main_port=on_main_port)).encode("utf-8")
    page = (STATIC / "api-docs.html").read_bytes()
    headers = {"Content-Security-Policy": CSP, **SECURITY_HEADERS}

    async def openapi_json(request: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    async def swagger_page(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8", headers=headers)

    async def asset(request: web.Request) -> web.StreamResponse:
        path = _ASSET_FILES.get(request.match_info["asset"])
        if path is None:
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Cache-Control": "no-cache", **headers})

    app.router.add_get("/api/client/openapi.json", openapi_json)
    app.router.add_get("/api/client/", swagger_page)
    app.router.add_get("/api/client/{asset}", asset)
