"""`GET /api/v1/models` and `GET /api/v1/models/{id}`: the union of live connectors' models."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from infero.server import errors
from infero.server.shared import ModelEntry, SharedState


def model_object(entry: ModelEntry) -> dict[str, Any]:
    """The OpenAI model object of one model (ready or not)."""
    return {
        "id": entry.id,
        "object": "model",
        "created": entry.created,
        "owned_by": ",".join(entry.owners),
    }


def setup(app: web.Application, shared: SharedState) -> None:
    """Mount the two model routes."""

    async def list_models(_: web.Request) -> web.Response:
        data = [model_object(entry) for entry in shared.models()]
        return web.json_response({"object": "list", "data": data})

    async def get_model(request: web.Request) -> web.Response:
        model = request.match_info["id"]
        found = next((entry for entry in shared.models() if entry.id == model), None)
        if found is None:
            return errors.model_not_found(model)
        return web.json_response(model_object(found))

    app.router.add_get("/api/v1/models", list_models)
    app.router.add_get("/api/v1/models/{id:.+}", get_model)
