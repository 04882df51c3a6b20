"""OAuth 2.0 Protected Resource Metadata (RFC 9728) for `/api/mcp/id/{id}`.

MCP clients that get a 401 look for `/.well-known/oauth-protected-resource` (the MCP
authorization spec) before starting an OAuth flow. infero has no authorization server: its
bearer tokens are API keys issued by the operator (or a relay's AUTH_TOKEN). The metadata
says so, with no `authorization_servers`, so clients ask the user for a key instead.
"""

from __future__ import annotations

from aiohttp import web

WELL_KNOWN = "/.well-known/oauth-protected-resource"


def _origin(request: web.Request) -> str:
    scheme = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
    return f"{scheme}://{request.host}"


def metadata_url(request: web.Request) -> str:
    """The path-suffixed metadata URL of the resource `request` addressed (RFC 9728 3.1)."""
    return _origin(request) + WELL_KNOWN + request.path


async def metadata(request: web.Request) -> web.Response:
    """`GET /.well-known/oauth-protected-resource[/api/mcp/id/<id>]`."""
    relay = request.match_info.get("id")
    return web.json_response(
        {
            "resource": _origin(request) + (f"/api/mcp/id/{relay}" if relay else "/"),
            "bearer_methods_supported": ["header"],
            "resource_name": "infero MCP relays",
            "infero_bearer_token": (
                "an API key issued by the operator of this server (or the relay's AUTH_TOKEN), "
                "sent as Authorization: Bearer <key>; there is no OAuth authorization server"
            ),
        },
        headers={"Cache-Control": "public, max-age=3600"},
    )


def mount(app: web.Application) -> None:
    """Serve the metadata, bare and for every relay path."""
    app.router.add_get(WELL_KNOWN, metadata)
    app.router.add_get(WELL_KNOWN + "/api/mcp/id/{id}", metadata)
