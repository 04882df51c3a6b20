"""The OpenAI routes relayed through a scripted connector."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from infero.protocol import link as lp
from infero.server import keys
from infero.server.events import RequestFinished, RequestRejected
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
        worker = srv.worker("w1")
        assert worker is not None
        assert worker.tokens_out_total == 5
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


async def _post(
    http: aiohttp.ClientSession, url: str, body: object, **kw: object
) -> asyncio.Task[aiohttp.ClientResponse]:
    return asyncio.create_task(http.post(url + "/api/v1/chat/completions", json=body, **kw))  # type: ignore[arg-type]


SSE = [(b'data: {"a":1}\n\n'), (b'data: {"a":2}\n\n'), b"data: [DONE]\n\n"]


async def test_streamed_answer_is_relayed_chunk_by_chunk_with_sse_headers() -> None:
    async with (
        running_server() as srv,
        scripted_connector(srv.url) as conn,
        aiohttp.ClientSession() as http,
    ):
        call = await _post(http, srv.url, {"model": "m", "stream": True})
        async with asyncio.timeout(5):
            incoming = await conn.next_request()
            assert incoming.frame.stream is True
            await conn.head(incoming.id, 200, [("Content-Type", "text/event-stream")])
            resp = await call
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/event-stream"
            assert resp.headers["X-Accel-Buffering"] == "no"
            assert resp.headers["Cache-Control"] == "no-cache"
            for chunk in SSE:
                await conn.body(incoming.id, chunk)
                assert await resp.content.readexactly(len(chunk)) == chunk
            await conn.end(incoming.id)
            assert await resp.content.read() == b""
        resp.release()


@pytest.mark.parametrize("route", ["/completions", "/embeddings", "/responses"])
async def test_every_openai_route_reaches_the_backend_under_its_own_path(route: str) -> None:
    async with (
        running_server() as srv,
        scripted_connector(srv.url) as conn,
        aiohttp.ClientSession() as http,
    ):
        call = asyncio.create_task(
            http.post(srv.url + "/api/v1" + route + "?x=1", json={"model": "m", "input": "a"})
        )
        async with asyncio.timeout(5):
            incoming = await conn.next_request()
            assert incoming.frame.path == route + "?x=1"
            await conn.reply(incoming.id, b"{}")
            resp = await call
        assert resp.status == 200
        resp.release()


@pytest.mark.parametrize(
    ("headers", "data", "status", "code"),
    [
        ({"Content-Type": "text/plain"}, b'{"model":"m"}', 400, None),
        ({"Content-Type": "application/json"}, b"{not json", 400, None),
        ({"Content-Type": "application/json"}, b"[1]", 400, None),
        ({"Content-Type": "application/json"}, b'{"messages":[]}', 400, "missing_model"),
        (
            {"Content-Type": "application/json"},
            b'{"model":"m","x":"' + b"a" * 2000 + b'"}',
            413,
            "request_too_large",
        ),
    ],
)
async def test_bad_requests_get_openai_shaped_errors(
    headers: dict[str, str], data: bytes, status: int, code: str | None
) -> None:
    async with (
        running_server(max_body_bytes=1000) as srv,
        scripted_connector(srv.url),
        aiohttp.ClientSession() as http,
        http.post(srv.url + "/api/v1/chat/completions", data=data, headers=headers) as resp,
    ):
        assert resp.status == status
        error = (await resp.json())["error"]
        assert error["type"] == "invalid_request_error"
        assert isinstance(error["message"], str)
        assert error["code"] == code


async def test_deeply_nested_json_body_is_a_bad_request_not_a_server_error() -> None:
    async with (
        running_server() as srv,
        aiohttp.ClientSession() as http,
        http.post(
            srv.url + "/api/v1/chat/completions",
            data=b"[" * 100_000,
            headers={"Content-Type": "application/json"},
        ) as resp,
    ):
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request_error"


async def test_a_connector_header_with_a_line_break_is_dropped_not_a_broken_answer() -> None:
    async with (
        running_server() as srv,
        scripted_connector(srv.url, models=["m"]) as conn,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(5):
            call = asyncio.create_task(
                http.post(srv.url + "/api/v1/chat/completions", json={"model": "m"})
            )
            incoming = await conn.next_request()
            headers = [("Content-Type", "application/json"), ("X-Split", "a\r\nX-Evil: 1")]
            await conn.head(incoming.id, 200, headers)
            await conn.body(incoming.id, b"{}")
            await conn.end(incoming.id)
            resp = await call
        assert resp.status == 200
        assert "X-Split" not in resp.headers
        assert "X-Evil" not in resp.headers
        assert await resp.read() == b"{}"
        resp.release()


async def test_api_key_is_required_when_configured() -> None:
    async with (
        running_server(api_key="k1") as srv,
        aiohttp.ClientSession() as http,
    ):
        for auth in ({}, {"Authorization": "Bearer wrong"}):
            async with http.get(srv.url + "/api/v1/models", headers=auth) as resp:
                assert resp.status == 401
                assert (await resp.json())["error"]["code"] == "invalid_api_key"
        async with http.get(
            srv.url + "/api/v1/models", headers={"Authorization": "Bearer k1"}
        ) as resp:
            assert resp.status == 200


async def test_models_list_and_detail_with_slashes_and_colons() -> None:
    model = "hf.co/org/model:Q4_K_M"
    async with (
        running_server() as srv,
        scripted_connector(srv.url, id="a", name="Beta", models=[model, "x"]),
        scripted_connector(srv.url, id="b", name="Alpha", models=[model]),
        aiohttp.ClientSession() as http,
    ):
        async with http.get(srv.url + "/api/v1/models") as resp:
            listing = await resp.json()
        assert listing["object"] == "list"
        assert [m["id"] for m in listing["data"]] == [model, "x"]
        assert listing["data"][0]["owned_by"] == "Alpha,Beta"
        assert listing["data"][0]["created"] > 0
        async with http.get(srv.url + "/api/v1/models/" + model) as resp:
            assert resp.status == 200
            assert (await resp.json())["id"] == model
        async with http.get(srv.url + "/api/v1/models/hf.co/org/model") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "model_not_found"


async def test_x_infero_worker_pins_the_request_to_one_connector() -> None:
    async with (
        running_server() as srv,
        scripted_connector(srv.url, id="a", max_concurrency=4) as a,
        scripted_connector(srv.url, id="b", max_concurrency=4) as b,
        aiohttp.ClientSession() as http,
    ):
        call = await _post(http, srv.url, {"model": "m"}, headers={"X-Infero-Worker": "b"})
        async with asyncio.timeout(5):
            incoming = await b.next_request()
            await b.reply(incoming.id, b"{}")
            resp = await call
        resp.release()
        assert a.requests.empty()
        async with http.post(
            srv.url + "/api/v1/chat/completions",
            json={"model": "m"},
            headers={"X-Infero-Worker": "zzz"},
        ) as resp:
            assert resp.status == 404


class _Recorder:
    def __init__(self) -> None:
        self.finished: list[RequestFinished] = []
        self.rejected: list[RequestRejected] = []

    def request_finished(self, event: RequestFinished) -> None:
        self.finished.append(event)

    def request_rejected(self, event: RequestRejected) -> None:
        self.rejected.append(event)

    def request_relayed(self, event: RequestFinished) -> None:
        self.finished.append(event)


async def test_requests_are_reported_on_the_event_bus() -> None:
    recorder = _Recorder()
    async with (
        running_server(api_key="k") as srv,
        scripted_connector(srv.url, id="w1") as conn,
        aiohttp.ClientSession() as http,
    ):
        srv.app[keys.EVENTS].subscribe(recorder)
        auth = {"Authorization": "Bearer k"}
        async with http.post(srv.url + "/api/v1/chat/completions", json={"model": "m"}) as r:
            assert r.status == 401
        async with http.post(
            srv.url + "/api/v1/chat/completions", json={"model": "x"}, headers=auth
        ) as r:
            assert r.status == 404
        call = await _post(http, srv.url, {"model": "m"}, headers=auth)
        async with asyncio.timeout(5):
            incoming = await conn.next_request()
            await conn.reply(
                incoming.id, b"{}", usage=lp.Usage(prompt_tokens=1, completion_tokens=2)
            )
            (await call).release()
    assert [(e.model, e.reason) for e in recorder.rejected] == [
        ("", "unauthorized"),
        ("x", "model_not_found"),
    ]
    (done,) = recorder.finished
    assert (done.model, done.worker_id, done.outcome, done.status) == ("m", "w1", "success", 200)
    assert (done.tokens_in, done.tokens_out) == (1, 2)
    assert done.ttft_s is not None


@pytest.mark.parametrize("padding", [0, 200, 65_400, 65_600, 70_000])
async def test_request_bodies_around_the_frame_size_limits_reach_the_connector_intact(
    padding: int,
) -> None:
    # Small bodies leave in one write with their Request frame (hand-built WebSocket
    # frames); the sizes cross the 126-byte and 64 KiB length encodings and the inline limit.
    async with (
        running_server() as srv,
        scripted_connector(srv.url, models=["m"]) as conn,
        aiohttp.ClientSession() as http,
    ):
        body = json.dumps({"model": "m", "pad": "x" * padding}).encode()
        call = asyncio.create_task(
            http.post(
                srv.url + "/api/v1/chat/completions",
                data=body,
                headers={"Content-Type": "application/json", "Authorization": "Bearer secret"},
            )
        )
        async with asyncio.timeout(5):
            incoming = await conn.next_request()
            assert incoming.frame.body_len == len(body)
            assert incoming.body == body
            await conn.reply(incoming.id, b"{}")
            resp = await call
            assert await resp.read() == b"{}"
        resp.release()
