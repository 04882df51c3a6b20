"""Fleet control: drain, undrain or shut down a connector by id, with an operator key.

`POST /api/workers/{id}/{action}` steers `infero llm` connectors and
`POST /api/mcp/relays/{id}/{action}` steers `infero mcp` relays; the shared state's
`FleetControl` relays a `Control` frame to the connector's link. Drain: no new work, in-flight
work finishes, the connector stays linked until undrained. Shutdown: drain, then exit; an
undrain after it is refused (409). See docs/operations.md and docs/security.md (operator
credential).
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from infero.server import errors
from infero.server.auth import KeyRing, bearer_token
from infero.server.shared import Action, FleetControl, Kind

logger = logging.getLogger(__name__)

_ROUTES: dict[Kind, tuple[str, str]] = {
    "llm": ("/api/workers", "worker"),
    "mcp": ("/api/mcp/relays", "relay"),
}
"""Route prefix and the word used in answers, per connector kind."""


def setup(app: web.Application, fleet: FleetControl, keyring: KeyRing) -> None:
    """Mount `POST {prefix}/{id}/drain|undrain|shutdown` for both connector kinds."""
    for kind, (prefix, what) in _ROUTES.items():
        app.router.add_post(
            prefix + "/{id}/{action:drain|undrain|shutdown}", _handler(kind, what, fleet, keyring)
        )


def _handler(kind: Kind, what: str, fleet: FleetControl, keyring: KeyRing) -> Handler:
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
        logger.info("operator key %r asked %s of %s %s", key.name, action, what, connector_id)
        verdict = await fleet.steer(kind, connector_id, action, key.name)
        if verdict == "not_linked":
            return errors.api_error(
                404, f"No connected {what} {connector_id!r}.", "invalid_request_error", "not_found"
            )
        if verdict == "shutting_down":
            return errors.api_error(
                409,
                f"The {what} {connector_id!r} is shutting down; it cannot be undrained.",
                "invalid_request_error",
                "shutting_down",
            )
        return web.json_response(
            {"id": connector_id, "action": action, "accepted": True}, status=202
        )

    return control
