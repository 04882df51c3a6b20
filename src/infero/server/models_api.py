"""`GET /api/v1/models` and `GET /api/v1/models/{id}`: the union of live connectors' models."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from infero.server import errors
from infero.server.registry import Fleet


def model_objects(fleet: Fleet) -> dict[str, dict[str, Any]]:
    """OpenAI model objects by id: every model a live connector advertises (ready or not)."""
    owners: dict[str, set[str]] = {}
    for worker in fleet.workers.values():
        if not worker.live:
            continue
        for model in worker.models:
            owners.setdefault(model, set()).add(worker.name)
    return {
        model: {
            "id": model,
            "object": "model",
            "created": fleet.model_first_seen.get(model, 0),
            "owned_by": ",".join(sorted(names)),
        }
        for model, names in sorted(owners.items())
    }


def setup(app: web.Application, fleet: Fleet) -> None:
    """Mount the two model routes."""

    async def list_models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": list(model_objects(fleet).values())})

    async def get_model(request: web.Request) -> web.Response:
        model = request.match_info["id"]
        found = model_objects(fleet).get(model)
        if found is None:
            return errors.model_not_found(model)
        return web.json_response(found)

    app.router.add_get("/api/v1/models", list_models)
    app.router.add_get("/api/v1/models/{id:.+}", get_model)
