"""Fleet control: drain, undrain or shut down a connector by id, with an operator key.

`POST /api/workers/{id}/{action}` steers `infero llm` connectors and
`POST /api/mcp/relays/{id}/{action}` steers `infero mcp` relays; both send a `Control`
frame over the connector's link. Drain: no new work, in-flight work finishes, the connector
stays linked until undrained. Shutdown: drain, then exit; an undrain after it is refused
(409). See docs/operations.md and docs/security.md (operator credential).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

from aiohttp import web

from infero.protocol.link import Control
from infero.server import errors
from infero.server.auth import KeyRing, bearer_token
from infero.server.linkserver import Link
from infero.server.registry import Fleet

logger = logging.getLogger(__name__)

Action = Literal["drain", "undrain", "shutdown"]
LinkLookup = Callable[[str], Link | None]
"""The live link of a connector id, or None."""


def mount(
    app: web.Application, prefix: str, what: str, lookup: LinkLookup, keyring: KeyRing
) -> None:
    """Mount `POST {prefix}/{id}/drain|undrain|shutdown` for connectors found by `lookup`."""

    async def control(request: web.Request) -> web.Response:
        action: Action = request.match_info["action"]  # type: ignore[assignment]
        connector_id = request.match_info["id"]
        if not keyring.has_operator:
            return errors.forbidden("No operator key is configured on this server.")
        token = bearer_token(request)
        key = keyring.match(token) if token is not None else None
        if key is None:
            return errors.unauthorized()
        if not key.is_operator:
            return errors.forbidden("This key may not steer connectors (operator role needed).")
        link = lookup(connector_id)
        if link is None:
            return errors.api_error(
                404, f"No connected {what} {connector_id!r}.", "invalid_request_error", "not_found"
            )
        logger.info("operator key %r asked %s of %s %s", key.name, action, what, connector_id)
        if action == "undrain" and link.shutting_down:
            return errors.api_error(
                409,
                f"The {what} {connector_id!r} is shutting down; it cannot be undrained.",
                "invalid_request_error",
                "shutting_down",
            )
        await link.send(Control(action=action, by=key.name))
        if action == "shutdown":
            link.shutting_down = True
        return web.json_response(
            {"id": connector_id, "action": action, "accepted": True}, status=202
        )

    app.router.add_post(prefix + "/{id}/{action:drain|undrain|shutdown}", control)


def setup(app: web.Application, fleet: Fleet, keyring: KeyRing) -> None:
    """Mount the route for LLM connectors (MCP relays: `infero.server.mcp.setup`)."""

    def worker_link(worker_id: str) -> Link | None:
        worker = fleet.get_live(worker_id)
        return worker.link if worker is not None else None

    mount(app, "/api/workers", "worker", worker_link, keyring)
