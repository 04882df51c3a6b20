"""A fake backend that implements stored responses (Responses API) in memory.

Each instance has a `name` that it writes into every answer's text, so a test sees which
backend answered; a `previous_response_id` or a response id it does not hold is a 404, as
OpenAI answers. Background responses stay `in_progress` until cancelled.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from aiohttp import web

_ids = itertools.count(1)


def _not_found(what: str, param: str | None = None) -> web.Response:
    error = {"message": f"{what} not found.", "type": "invalid_request_error", "param": param}
    return web.json_response({"error": error | {"code": None}}, status=404)


class StoredResponsesBackend:
    """`/v1/models`, `POST /v1/responses` and the stored-response routes of one backend
    (serve it with `support.backend.serving`)."""

    def __init__(self, name: str, models: tuple[str, ...] = ("m",)) -> None:
        self.name = name
        self.models = models
        self.responses: dict[str, dict[str, Any]] = {}
        self.inputs: dict[str, list[dict[str, Any]]] = {}
        self.url = ""
        """`http://127.0.0.1:<port>/v1` once serving."""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/responses", self._create)
        app.router.add_get("/v1/responses/{id}", self._retrieve)
        app.router.add_delete("/v1/responses/{id}", self._delete)
        app.router.add_post("/v1/responses/{id}/cancel", self._cancel)
        app.router.add_get("/v1/responses/{id}/input_items", self._input_items)
        return app

    async def _models(self, _: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "owned_by": self.name} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _create(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        previous = body.get("previous_response_id")
        depth = 1
        if previous is not None:
            if previous not in self.responses:
                return _not_found(f"Previous response with id '{previous}'", "previous_response_id")
            depth = self.responses[previous]["metadata"]["depth"] + 1
        text = f"{self.name} turn {depth}: {body.get('input')}"
        response_id = f"resp_{self.name}_{next(_ids)}"
        background = body.get("background") is True
        response = {
            "id": response_id,
            "object": "response",
            "created_at": 1,
            "status": "in_progress" if background else "completed",
            "model": body["model"],
            "background": background,
            "previous_response_id": previous,
            "metadata": {"depth": depth, "text": text},
            "output": []
            if background
            else [
                {
                    "type": "message",
                    "id": f"msg_{response_id}",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
        }
        self.responses[response_id] = response
        self.inputs[response_id] = [
            {
                "type": "message",
                "id": f"in_{response_id}",
                "role": "user",
                "content": [{"type": "input_text", "text": str(body.get("input"))}],
            }
        ]
        if body.get("stream") is True:
            return await self._stream(request, response, text)
        return web.json_response(response)

    async def _stream(
        self, request: web.Request, response: dict[str, Any], text: str
    ) -> web.StreamResponse:
        answer = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await answer.prepare(request)
        created = response | {"status": "in_progress", "output": []}
        events: list[dict[str, Any]] = [
            {"type": "response.created", "sequence_number": 0, "response": created},
            {
                "type": "response.output_text.delta",
                "sequence_number": 1,
                "item_id": f"msg_{response['id']}",
                "output_index": 0,
                "content_index": 0,
                "delta": text,
                "logprobs": [],
            },
            {"type": "response.completed", "sequence_number": 2, "response": response},
        ]
        for event in events:
            await answer.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
        await answer.write_eof()
        return answer

    async def _retrieve(self, request: web.Request) -> web.StreamResponse:
        response = self.responses.get(request.match_info["id"])
        if response is None:
            return _not_found(f"Response with id '{request.match_info['id']}'")
        if request.query.get("stream") == "true":
            return await self._stream(request, response, response["metadata"]["text"])
        return web.json_response(response)

    async def _delete(self, request: web.Request) -> web.Response:
        response_id = request.match_info["id"]
        if self.responses.pop(response_id, None) is None:
            return _not_found(f"Response with id '{response_id}'")
        del self.inputs[response_id]
        return web.json_response({"id": response_id, "object": "response", "deleted": True})

    async def _cancel(self, request: web.Request) -> web.Response:
        response = self.responses.get(request.match_info["id"])
        if response is None:
            return _not_found(f"Response with id '{request.match_info['id']}'")
        if not response["background"]:
            error = {"message": "Only background responses can be cancelled.", "code": None}
            return web.json_response(
                {"error": error | {"type": "invalid_request_error"}}, status=400
            )
        response["status"] = "cancelled"
        return web.json_response(response)

    async def _input_items(self, request: web.Request) -> web.Response:
        items = self.inputs.get(request.match_info["id"])
        if items is None:
            return _not_found(f"Response with id '{request.match_info['id']}'")
        return web.json_response(
            {
                "object": "list",
                "data": items,
                "first_id": items[0]["id"],
                "last_id": items[-1]["id"],
                "has_more": False,
            }
        )
