"""Fleet control: `POST /api/workers/{id}/drain|undrain|shutdown` with an operator key."""

from __future__ import annotations

import logging
from typing import Literal

from aiohttp import web

from infero.protocol.link import Control
from infero.server import errors
from infero.server.auth import KeyRing, bearer_token
from infero.server.registry import Fleet

logger = logging.getLogger(__name__)

Action = Literal["drain", "undrain", "shutdown"]


def setup(app: web.Application, fleet: Fleet, keyring: KeyRing) -> None:
    """Mount the control route."""

    async def control(request: web.Request) -> web.Response:
        action: Action = request.match_info["action"]  # type: ignore[assignment]
        worker_id = request.match_info["id"]
        if not keyring.has_operator:
            return errors.forbidden("No operator key is configured on this server.")
        token = bearer_token(request)
        key = keyring.match(token) if token is not None else None
        if key is None:
            return errors.unauthorized()
        if not key.is_operator:
            return errors.forbidden("This key may not steer connectors (operator role needed).")
        worker = fleet.get_live(worker_id)
        if worker is None or worker.link is None:
            return errors.api_error(
                404, f"No connected worker {worker_id!r}.", "invalid_request_error", "not_found"
            )
        logger.info("operator key %r asked %s of worker %s", key.name, action, worker_id)
        await worker.link.send(Control(action=action, by=key.name))
        return web.json_response({"id": worker_id, "action": action, "accepted": True}, status=202)

    app.router.add_post("/api/workers/{id}/{action:drain|undrain|shutdown}", control)
