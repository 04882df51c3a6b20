"""The OpenAI routes relayed through a scripted connector."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from infero.protocol import link as lp
from support.connector import scripted_connector
from support.server import running_server


async def test_chat_completion_is_relayed_byte_exact_with_overhead_and_request_id() -> None:
    async with (
        running_server() as srv,
        scripted_connector(srv.url, models=["m"]) as conn,
        aiohttp.ClientSession() as http,
    ):
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        call = asyncio.create_task(
            http.post(
                srv.url + "/api/v1/chat/completions",
                json=body,
                headers={"X-Request-Id": "abc-1", "Authorization": "Bearer secret"},
            )
        )
        async with asyncio.timeout(5):
            incoming = await conn.next_request()
        assert incoming.frame.path == "/chat/completions"
        assert incoming.frame.model == "m"
        assert incoming.frame.request_id == "abc-1"
        assert json.loads(incoming.body) == body
        assert all(k.lower() != "authorization" for k, _ in incoming.frame.headers)
        answer = b'{"id":"x","object":"chat.completion"}'
        await conn.reply(incoming.id, answer, usage=lp.Usage(prompt_tokens=3, completion_tokens=5))
        async with asyncio.timeout(5):
            resp = await call
            data = await resp.read()
        resp.release()
        assert resp.status == 200
        assert data == answer
        assert resp.headers["X-Request-Id"] == "abc-1"
        assert float(resp.headers["X-Infero-Overhead-Ms"]) >= 0
        worker = srv.fleet.workers["w1"]
        assert worker.stats.total.tokens_out_total == 5
        assert worker.inflight == 0


async def test_unknown_model_is_404_model_not_found_without_queueing() -> None:
    async with (
        running_server() as srv,
        scripted_connector(srv.url, models=["m"]),
        aiohttp.ClientSession() as http,
        http.post(
            srv.url + "/api/v1/chat/completions", json={"model": "nope", "messages": []}
        ) as resp,
    ):
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "model_not_found"
