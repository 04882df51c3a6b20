"""`/api/client/`: the OpenAPI document matches the live routes; Swagger UI is served offline."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from aiohttp import web
from pytest_aiohttp import AiohttpClient

from infero.protocol.state import StateSnapshot
from infero.server.app import create_app
from infero.server.openapi_doc import SWAGGER_ASSETS, build_document
from infero.server.settings import ServerSettings

HTTP_METHODS = {"get", "post", "put", "patch", "delete"}


def _live_routes(app: web.Application) -> set[tuple[str, str]]:
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method not in ("HEAD", "OPTIONS")
    }


def _documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


async def _document(client: Any) -> dict[str, Any]:
    response = await client.get("/api/client/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    document: dict[str, Any] = await response.json()
    return document


async def test_document_lists_exactly_the_routes_the_server_mounts(
    aiohttp_client: AiohttpClient,
) -> None:
    app = create_app(ServerSettings(host="127.0.0.1"))
    client = await aiohttp_client(app)
    document = await _document(client)
    assert document["openapi"].startswith("3.1.")
    live = _live_routes(app)
    assert _documented(document) - live == set(), "documented but not mounted"
    assert live - _documented(document) == set(), "mounted but not documented"
    assert ("get", "/metrics") in live


async def test_metrics_on_their_own_port_leave_the_main_app_and_the_document(
    aiohttp_client: AiohttpClient,
) -> None:
    app = create_app(ServerSettings(host="127.0.0.1", port=8080, metrics_port=0))
    client = await aiohttp_client(app)
    document = await _document(client)
    assert "/metrics" not in document["paths"]
    assert _documented(document) == _live_routes(app)


async def test_docs_are_public_even_when_the_api_needs_a_key(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(create_app(ServerSettings(host="127.0.0.1", api_key="k")))
    assert (await client.get("/api/state")).status == 401
    await _document(client)
    page = await client.get("/api/client/")
    assert page.status == 200
    assert page.content_type == "text/html"
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self'" in policy
    assert "unsafe" not in policy
    for asset in SWAGGER_ASSETS:
        response = await client.get(f"/api/client/{asset}")
        assert response.status == 200, asset
        assert len(await response.read()) > 100
    assert (await client.get("/api/client/swagger-ui.js.map")).status == 404
    assert (await client.get("/api/client/..%2fdashboard.py")).status == 404


async def test_swagger_page_loads_only_its_local_files(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(create_app(ServerSettings(host="127.0.0.1")))
    html = await (await client.get("/api/client/")).text()
    references = re.findall(r"""(?:src|href)="([^"]*)\"""", html)
    assert sorted(references) == sorted(SWAGGER_ASSETS)
    script = await (await client.get("/api/client/api-docs.js")).text()
    assert 'url: "openapi.json"' in script
    assert "validatorUrl: null" in script


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def test_every_reference_resolves_and_every_path_parameter_is_declared() -> None:
    document = build_document(metrics_on_main_port=True)
    schemas = document["components"]["schemas"]
    for ref in _refs(document):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    schemes = document["components"]["securitySchemes"]
    for path, item in document["paths"].items():
        templated = set(re.findall(r"{(\w+)}", path))
        for method, operation in item.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == templated, (method, path)
            assert operation["responses"], (method, path)
            for requirement in operation.get("security", []):
                assert set(requirement) <= set(schemes), (method, path)


def test_state_schema_is_generated_from_the_protocol_models() -> None:
    schemas = build_document(metrics_on_main_port=True)["components"]["schemas"]
    assert set(schemas["StateSnapshot"]["properties"]) == set(StateSnapshot.model_fields)
    assert "WorkerInfo" in schemas
    assert "McpSessionInfo" in schemas


def test_docs_api_md_lists_every_documented_route() -> None:
    text = (Path(__file__).parents[3] / "docs" / "api.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| ([A-Z, ]+) \| `([^`]+)` \|", text, re.M)
    listed = {
        (method.strip().lower(), path) for methods, path in rows for method in methods.split(",")
    }
    assert listed == _documented(build_document(metrics_on_main_port=True))
