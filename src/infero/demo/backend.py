"""A fast fake OpenAI + Ollama backend. It is not a model: every answer says so.

Used by `infero demo` (so a newcomer can try the relay without an LLM runtime) and by the
benchmark (configurable tokens per answer and delay between tokens).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web

BANNER = (
    "This answer comes from infero's demo backend, not from a real model. "
    "Point a connector at Ollama, vLLM or llama.cpp to get real answers."
)
WORDS = tuple(BANNER.split())


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """Shape of the fake answers."""

    models: tuple[str, ...] = ("demo",)
    tokens: int = len(WORDS)
    """Tokens per answer unless the request sets `max_tokens` (default: the whole banner, one
    word a token, so the hint at its end arrives)."""
    token_delay: float = 0.0
    """Seconds between two streamed tokens."""
    model_delays: tuple[tuple[str, float], ...] = ()
    """Per-model overrides of `token_delay`, as (model, seconds) pairs (the benchmark's
    slow streams of several speeds from one backend)."""
    embedding_dim: int = 8


def _delay(cfg: DemoConfig, model: str) -> float:
    for name, seconds in cfg.model_delays:
        if name == model:
            return seconds
    return cfg.token_delay


def _token(i: int) -> str:
    return ("" if i == 0 else " ") + WORDS[i % len(WORDS)]


def _wanted_tokens(body: dict[str, Any], cfg: DemoConfig) -> int:
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return cfg.tokens


async def _read_json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(
            text='{"error":{"message":"invalid JSON","type":"invalid_request_error"}}',
            content_type="application/json",
        ) from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text='{"error":{"message":"expected an object","type":"invalid_request_error"}}',
            content_type="application/json",
        )
    return body


def _check_model(body: dict[str, Any], cfg: DemoConfig) -> str:
    model = body.get("model")
    if not isinstance(model, str) or model not in cfg.models:
        raise web.HTTPNotFound(
            text=json.dumps(
                {"error": {"message": f"model {model!r} not found", "type": "not_found_error"}}
            ),
            content_type="application/json",
        )
    return model


def create_app(cfg: DemoConfig | None = None) -> web.Application:
    """The demo backend as an aiohttp app: OpenAI routes under `/v1`, Ollama `/api/tags`."""
    cfg = cfg or DemoConfig()
    created = int(time.time())

    async def models(_: web.Request) -> web.Response:
        data = [
            {"id": m, "object": "model", "created": created, "owned_by": "demo"} for m in cfg.models
        ]
        return web.json_response({"object": "list", "data": data})

    async def tags(_: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": m, "model": m} for m in cfg.models]})

    async def sse(request: web.Request, events: Any) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        async for event in events:
            await resp.write(event)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await _read_json(request)
        model = _check_model(body, cfg)
        delay = _delay(cfg, model)
        n = _wanted_tokens(body, cfg)
        rid = "chatcmpl-demo-" + uuid.uuid4().hex[:12]
        usage = {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}
        if not body.get("stream"):
            text = "".join(_token(i) for i in range(n))
            return web.json_response(
                {
                    "id": rid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            )

        async def events() -> Any:
            for i in range(n):
                if delay:
                    await asyncio.sleep(delay)
                delta: dict[str, Any] = {"content": _token(i)}
                if i == 0:
                    delta["role"] = "assistant"
                chunk = {
                    "id": rid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                }
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
            last = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                "usage": usage,
            }
            yield b"data: " + json.dumps(last).encode() + b"\n\n"

        return await sse(request, events())

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await _read_json(request)
        model = _check_model(body, cfg)
        delay = _delay(cfg, model)
        n = _wanted_tokens(body, cfg)
        rid = "cmpl-demo-" + uuid.uuid4().hex[:12]
        usage = {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}
        if not body.get("stream"):
            text = "".join(_token(i) for i in range(n))
            return web.json_response(
                {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                    "usage": usage,
                }
            )

        async def events() -> Any:
            for i in range(n):
                if delay:
                    await asyncio.sleep(delay)
                chunk = {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "text": _token(i), "finish_reason": None}],
                }
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"

        return await sse(request, events())

    async def embeddings(request: web.Request) -> web.Response:
        body = await _read_json(request)
        model = _check_model(body, cfg)
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": [((i + k) % 7) / 7 for k in range(cfg.embedding_dim)],
            }
            for i in range(len(items))
        ]
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": len(items), "total_tokens": len(items)},
            }
        )

    async def responses(request: web.Request) -> web.StreamResponse:
        body = await _read_json(request)
        model = _check_model(body, cfg)
        delay = _delay(cfg, model)
        n = _wanted_tokens(body, cfg)
        rid = "resp_demo" + uuid.uuid4().hex[:12]
        text = "".join(_token(i) for i in range(n))
        usage = {"input_tokens": 1, "output_tokens": n, "total_tokens": n + 1}
        message = {
            "type": "message",
            "id": "msg_demo",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
        final = {
            "id": rid,
            "object": "response",
            "created_at": created,
            "status": "completed",
            "model": model,
            "output": [message],
            "usage": usage,
        }
        if not body.get("stream"):
            return web.json_response(final)

        async def events() -> Any:
            seq = 0
            for i in range(n):
                if delay:
                    await asyncio.sleep(delay)
                ev = {
                    "type": "response.output_text.delta",
                    "sequence_number": seq,
                    "item_id": "msg_demo",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": _token(i),
                }
                seq += 1
                yield (
                    b"event: response.output_text.delta\ndata: " + json.dumps(ev).encode() + b"\n\n"
                )
            done = {"type": "response.completed", "sequence_number": seq, "response": final}
            yield b"event: response.completed\ndata: " + json.dumps(done).encode() + b"\n\n"

        return await sse(request, events())

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/api/tags", tags)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/responses", responses)
    return app
