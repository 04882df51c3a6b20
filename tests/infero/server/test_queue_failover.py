"""Queueing, timeouts, failover and broken answers, through a real server and scripted links."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import openai
import pytest

from infero.protocol import link as lp
from infero.protocol.state import WorkerInfo
from infero.server import linkserver
from support.connector import ScriptedConnector, scripted_connector
from support.server import RunningServer, running_server

CHAT = "/api/v1/chat/completions"


async def _read_sse_line(resp: aiohttp.ClientResponse) -> bytes:
    """Next non-empty line of an SSE body."""
    while True:
        line = await resp.content.readline()
        if line.strip():
            return line.strip()


async def test_streaming_client_waits_in_queue_with_position_comments_then_gets_served() -> None:
    async with (
        running_server(queue_headers_after=0) as srv,
        scripted_connector(srv.url, max_concurrency=1) as conn,
        aiohttp.ClientSession() as http,
    ):
        busy = asyncio.create_task(http.post(srv.url + CHAT, json={"model": "m"}))
        async with asyncio.timeout(5):
            first = await conn.next_request()
            queued = await http.post(srv.url + CHAT, json={"model": "m", "stream": True})
            assert queued.status == 200
            assert queued.headers["Content-Type"] == "text/event-stream"
            assert await _read_sse_line(queued) == b": queued position=1"
            assert srv.queue_len("m") == 1
            await conn.reply(first.id, b"{}")
            (await busy).release()
            second = await conn.next_request()
            await conn.head(second.id, 200, [("Content-Type", "text/event-stream")])
            await conn.body(second.id, b"data: {}\n\n")
            await conn.end(second.id)
            assert await _read_sse_line(queued) == b"data: {}"
        queued.release()


async def test_queue_timeout_is_503_with_retry_after() -> None:
    async with (
        running_server(queue_timeout=0.05) as srv,
        scripted_connector(srv.url, max_concurrency=1) as conn,
        aiohttp.ClientSession() as http,
    ):
        busy = asyncio.create_task(http.post(srv.url + CHAT, json={"model": "m"}))
        async with asyncio.timeout(5):
            first = await conn.next_request()
            async with http.post(srv.url + CHAT, json={"model": "m"}) as resp:
                assert resp.status == 503
                assert resp.headers["Retry-After"] == "1"
                assert (await resp.json())["error"]["code"] == "queue_timeout"
            await conn.reply(first.id, b"{}")
            (await busy).release()


async def test_streaming_queue_timeout_ends_with_an_sse_error_event() -> None:
    async with (
        running_server(queue_timeout=0.05, queue_headers_after=0) as srv,
        scripted_connector(srv.url, max_concurrency=1) as conn,
        aiohttp.ClientSession() as http,
    ):
        busy = asyncio.create_task(http.post(srv.url + CHAT, json={"model": "m"}))
        async with asyncio.timeout(5):
            first = await conn.next_request()
            async with http.post(srv.url + CHAT, json={"model": "m", "stream": True}) as resp:
                assert await _read_sse_line(resp) == b": queued position=1"
                event = await _read_sse_line(resp)
                assert event.startswith(b"data: ")
                assert json.loads(event[6:])["error"]["code"] == "queue_timeout"
            await conn.reply(first.id, b"{}")
            (await busy).release()


async def test_queued_stream_gets_the_backends_real_status_through_the_sdk() -> None:
    """A stream that waited less than QUEUE_HEADERS_AFTER has sent nothing: a backend error
    arrives with its real status, so the SDK raises the matching error class."""
    async with (
        running_server(queue_headers_after=60) as srv,
        scripted_connector(srv.url, max_concurrency=1) as conn,
        aiohttp.ClientSession() as http,
        openai.AsyncOpenAI(base_url=srv.url + "/api/v1", api_key="k", max_retries=0) as client,
    ):
        busy = asyncio.create_task(http.post(srv.url + CHAT, json={"model": "m"}))
        async with asyncio.timeout(10):
            first = await conn.next_request()
            queued = asyncio.create_task(
                client.chat.completions.create(model="m", messages=[], stream=True)
            )
            await srv.wait_for(lambda: srv.queue_len("m") == 1)
            await conn.reply(first.id, b"{}")
            (await busy).release()
            second = await conn.next_request()
            error = b'{"error":{"message":"slow down","type":"rate_limit","code":"busy"}}'
            await conn.reply(second.id, error, status=429)
            with pytest.raises(openai.RateLimitError) as raised:
                await queued
        assert raised.value.status_code == 429
        assert raised.value.code == "busy"


async def test_queued_stream_timing_out_before_headers_is_a_plain_503() -> None:
    async with (
        running_server(queue_timeout=0.05, queue_headers_after=60) as srv,
        scripted_connector(srv.url, max_concurrency=1) as conn,
        aiohttp.ClientSession() as http,
    ):
        busy = asyncio.create_task(http.post(srv.url + CHAT, json={"model": "m"}))
        async with asyncio.timeout(5):
            first = await conn.next_request()
            body = {"model": "m", "stream": True}
            async with http.post(srv.url + CHAT, json=body) as resp:
                assert resp.status == 503
                assert resp.headers["Retry-After"] == "1"
                assert (await resp.json())["error"]["code"] == "queue_timeout"
            await conn.reply(first.id, b"{}")
            (await busy).release()


async def test_full_queue_is_429_with_retry_after() -> None:
    async with (
        running_server(queue_max=0) as srv,
        scripted_connector(srv.url, max_concurrency=1) as conn,
        aiohttp.ClientSession() as http,
    ):
        busy = asyncio.create_task(http.post(srv.url + CHAT, json={"model": "m"}))
        async with asyncio.timeout(5):
            first = await conn.next_request()
            async with http.post(srv.url + CHAT, json={"model": "m"}) as resp:
                assert resp.status == 429
                assert resp.headers["Retry-After"] == "1"
                assert (await resp.json())["error"]["code"] == "queue_full"
            await conn.reply(first.id, b"{}")
            (await busy).release()


async def test_concurrent_requests_never_exceed_capacity() -> None:
    async with (
        running_server() as srv,
        scripted_connector(srv.url, id="a", max_concurrency=2) as a,
        scripted_connector(srv.url, id="b", max_concurrency=1) as b,
        aiohttp.ClientSession() as http,
    ):
        calls = [
            asyncio.create_task(http.post(srv.url + CHAT, json={"model": "m"})) for _ in range(9)
        ]
        seen: list[tuple[int, int]] = []

        async def answer(conn: ScriptedConnector) -> None:
            while True:
                incoming = await conn.next_request()
                seen.append((_inflight(srv, "a"), _inflight(srv, "b")))
                await conn.reply(incoming.id, b"{}")

        async with asyncio.timeout(5):
            await srv.wait_for(lambda: srv.queue_len("m") == 6)
            assert (_inflight(srv, "a"), _inflight(srv, "b")) == (2, 1)
            responders = [asyncio.create_task(answer(a)), asyncio.create_task(answer(b))]
            for call in calls:
                (await call).release()
        for responder in responders:
            responder.cancel()
        assert len(seen) == 9
        assert all(ia <= 2 and ib <= 1 for ia, ib in seen)


async def test_connector_failing_before_the_head_is_retried_on_another() -> None:
    async with (
        running_server() as srv,
        scripted_connector(srv.url, id="a") as a,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(5):
            call = asyncio.create_task(http.post(srv.url + CHAT, json={"model": "m"}))
            first = await a.next_request()
            async with scripted_connector(srv.url, id="b") as b:
                await a.end(first.id, error=lp.LinkError(code="backend_unreachable"))
                second = await b.next_request()
                assert second.body == first.body
                await b.reply(second.id, b'{"ok":true}')
                resp = await call
                assert resp.status == 200
                assert await resp.read() == b'{"ok":true}'
        assert _worker(srv, "a").failures_total == 1


async def test_a_stream_with_early_headers_is_still_retried_on_another_before_the_head() -> None:
    """`: keepalive` (or `: queued`) comments are no answer: a `busy` refusal after them fails
    over like one before them (docs/routing.md, Failover)."""
    async with (
        running_server(keepalive_interval=0.01) as srv,
        scripted_connector(srv.url, id="a") as a,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(5):
            call = asyncio.create_task(
                http.post(srv.url + CHAT, json={"model": "m", "stream": True})
            )
            first = await a.next_request()
            resp = await call
            assert await _read_sse_line(resp) == b": keepalive"
            async with scripted_connector(srv.url, id="b") as b:
                await a.end(first.id, error=lp.LinkError(code="busy"))
                second = await b.next_request()
                await b.head(second.id, 200, [("Content-Type", "text/event-stream")])
                await b.body(second.id, b"data: {}\n\n")
                await b.end(second.id)
                while (line := await _read_sse_line(resp)) == b": keepalive":
                    pass
                assert line == b"data: {}"
            resp.release()


async def test_a_busy_refusal_with_no_other_connector_waits_for_its_end_at_the_head() -> None:
    """A connector that answers `busy` runs a call the server does not count: the request
    waits again, ahead of later ones, and gets the slot when the connector ends a call; it is
    counted once, as a success (docs/routing.md, Failover)."""
    async with (
        running_server() as srv,
        scripted_connector(srv.url, id="a") as a,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(5):
            call = asyncio.create_task(http.post(srv.url + CHAT, json={"model": "m", "n": 1}))
            first = await a.next_request()
            later = asyncio.create_task(http.post(srv.url + CHAT, json={"model": "m", "n": 2}))
            await srv.wait_for(lambda: srv.queue_len("m") == 1)
            await a.end(first.id, error=lp.LinkError(code="busy", message="at capacity"))
            await srv.wait_for(lambda: srv.queue_len("m") == 2)
            assert _inflight(srv, "a") == 1, "the refused slot stays taken"
            await a.end(0x7FFFFFFF)  # the call the server did not count ends
            again = await a.next_request()
            assert json.loads(again.body)["n"] == 1, "the refused request kept the head"
            await a.reply(again.id, b'{"ok":true}')
            resp = await call
            assert (resp.status, await resp.read()) == (200, b'{"ok":true}')
            last = await a.next_request()
            await a.reply(last.id, b'{"ok":true}')
            assert (await later).status == 200
        worker = _worker(srv, "a")
        assert (worker.processed_total, worker.failures_total) == (2, 0)


async def test_all_candidates_failing_is_502_upstream_error() -> None:
    async with (
        running_server() as srv,
        scripted_connector(srv.url, id="a") as a,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(5):
            call = asyncio.create_task(http.post(srv.url + CHAT, json={"model": "m"}))
            first = await a.next_request()
            await a.end(first.id, error=lp.LinkError(code="backend_unreachable", message="down"))
            resp = await call
            assert resp.status == 502
            assert (await resp.json())["error"]["code"] == "upstream_error"
            resp.release()


async def test_connector_killed_mid_stream_ends_with_error_event_and_others_keep_working() -> None:
    async with (
        running_server() as srv,
        scripted_connector(srv.url, id="b", max_concurrency=1) as b,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(5):
            async with scripted_connector(srv.url, id="a", max_concurrency=4) as a:
                call = asyncio.create_task(
                    http.post(
                        srv.url + CHAT,
                        json={"model": "m", "stream": True},
                        headers={"X-Infero-Worker": "a"},
                    )
                )
                incoming = await a.next_request()
                await a.head(incoming.id, 200, [("Content-Type", "text/event-stream")])
                await a.body(incoming.id, b"data: {}\n\n")
                resp = await call
                assert await _read_sse_line(resp) == b"data: {}"
            event = await _read_sse_line(resp)
            assert json.loads(event[6:])["error"]["code"] == "upstream_error"
            assert (await resp.content.read()).strip() == b""
            resp.release()
            await srv.wait_for(lambda: srv.status("a") == "gone")
            call = asyncio.create_task(http.post(srv.url + CHAT, json={"model": "m"}))
            incoming = await b.next_request()
            await b.reply(incoming.id, b"{}")
            resp = await call
            assert resp.status == 200
            resp.release()


async def test_client_disconnect_sends_cancel_to_the_connector() -> None:
    async with (
        running_server() as srv,
        scripted_connector(srv.url) as conn,
    ):
        async with asyncio.timeout(5):
            http = aiohttp.ClientSession()
            call = asyncio.create_task(
                http.post(srv.url + CHAT, json={"model": "m", "stream": True})
            )
            incoming = await conn.next_request()
            await conn.head(incoming.id, 200, [("Content-Type", "text/event-stream")])
            resp = await call
            resp.close()
            await http.close()
            await incoming.cancelled.wait()
            assert _inflight(srv, "w1") == 1, "the slot is taken until the connector ended"
            await conn.end(incoming.id, error=lp.LinkError(code="cancelled"))
            await srv.wait_for(lambda: _inflight(srv, "w1") == 0)


async def test_a_connector_that_never_ends_a_cancelled_call_gets_its_slot_back_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(linkserver, "END_GRACE", 0.05)
    async with (
        running_server() as srv,
        scripted_connector(srv.url) as conn,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(5):
            call = asyncio.create_task(
                http.post(srv.url + CHAT, json={"model": "m", "stream": True})
            )
            incoming = await conn.next_request()
            await conn.head(incoming.id, 200, [("Content-Type", "text/event-stream")])
            (await call).close()
            await incoming.cancelled.wait()
            await srv.wait_for(lambda: _inflight(srv, "w1") == 0)  # no `end` ever comes


@pytest.mark.parametrize(
    "pieces",
    [
        # `[DONE]` that arrives in two pieces is still the whole answer (docs/state.md).
        [(b"data: {}\n\ndata: [DO", b"data: {}\n\n"), (b"NE]\n\n", b"data: [DONE]\n\n")],
        # The SSE spec's other line ends (CRLF, CR) end `[DONE]` as well as LF does.
        [(b"data: [DONE]\r\n\r\n", b"data: [DONE]\r\n\r\n")],
        [(b"data:[DONE]\r\r", b"data:[DONE]\r\r")],
    ],
    ids=["split", "crlf", "cr"],
)
async def test_a_client_leaving_right_after_done_is_a_success(
    pieces: list[tuple[bytes, bytes]],
) -> None:
    async with (
        running_server() as srv,
        scripted_connector(srv.url) as conn,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(5):
            call = asyncio.create_task(
                http.post(srv.url + CHAT, json={"model": "m", "stream": True})
            )
            incoming = await conn.next_request()
            await conn.head(incoming.id, 200, [("Content-Type", "text/event-stream")])
            resp = await call
            for sent, seen in pieces:  # each a chunk of its own: the one before was read
                await conn.body(incoming.id, sent)
                assert await resp.content.readexactly(len(seen)) == seen
            resp.close()  # as SDKs do, before the connector's end
            await incoming.cancelled.wait()
            await conn.end(incoming.id, error=lp.LinkError(code="cancelled"))
            await srv.wait_for(lambda: _inflight(srv, "w1") == 0)
        model = srv.snapshot().models[0]
        assert (model.success_total, model.cancelled_total) == (1, 0)


async def test_first_byte_timeout_is_504_and_cancels() -> None:
    async with (
        running_server(first_byte_timeout=0.05) as srv,
        scripted_connector(srv.url) as conn,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(5):
            call = asyncio.create_task(http.post(srv.url + CHAT, json={"model": "m"}))
            incoming = await conn.next_request()
            resp = await call
            assert resp.status == 504
            resp.release()
            await incoming.cancelled.wait()


async def test_backend_error_status_is_relayed_as_is() -> None:
    async with (
        running_server() as srv,
        scripted_connector(srv.url) as conn,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(5):
            call = asyncio.create_task(http.post(srv.url + CHAT, json={"model": "m"}))
            incoming = await conn.next_request()
            await conn.reply(incoming.id, b'{"error":{"message":"bad"}}', status=400)
            resp = await call
            assert resp.status == 400
            assert await resp.json() == {"error": {"message": "bad"}}
            resp.release()


async def test_slow_head_on_a_stream_gets_early_headers_and_keepalives_then_the_answer() -> None:
    async with (
        running_server(keepalive_interval=0.01) as srv,
        scripted_connector(srv.url) as conn,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(5):
            call = asyncio.create_task(
                http.post(srv.url + CHAT, json={"model": "m", "stream": True})
            )
            incoming = await conn.next_request()
            resp = await call
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/event-stream"
            assert float(resp.headers["X-Infero-Overhead-Ms"]) >= 0
            assert await _read_sse_line(resp) == b": keepalive"
            await conn.head(incoming.id, 200, [("Content-Type", "text/event-stream")])
            await conn.body(incoming.id, b"data: {}\n\n")
            await conn.end(incoming.id)
            while (line := await _read_sse_line(resp)) == b": keepalive":
                pass
            assert line == b"data: {}"
            resp.release()


async def test_backend_error_after_early_headers_becomes_an_sse_error_event() -> None:
    async with (
        running_server(keepalive_interval=0.01) as srv,
        scripted_connector(srv.url) as conn,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(5):
            call = asyncio.create_task(
                http.post(srv.url + CHAT, json={"model": "m", "stream": True})
            )
            incoming = await conn.next_request()
            resp = await call
            assert await _read_sse_line(resp) == b": keepalive"
            await conn.reply(
                incoming.id, b'{"error":{"message":"context too long","type":"x"}}', status=400
            )
            while (line := await _read_sse_line(resp)) == b": keepalive":
                pass
            error = json.loads(line[6:])["error"]
            assert error["message"] == "context too long"
            assert error["code"] == "400"
            resp.release()


async def test_idle_connector_mid_stream_times_out_with_an_error_event_and_a_cancel() -> None:
    async with (
        running_server(request_timeout=0.05) as srv,
        scripted_connector(srv.url) as conn,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(5):
            call = asyncio.create_task(
                http.post(srv.url + CHAT, json={"model": "m", "stream": True})
            )
            incoming = await conn.next_request()
            await conn.head(incoming.id, 200, [("Content-Type", "text/event-stream")])
            await conn.body(incoming.id, b"data: 1\n\n")
            resp = await call
            assert await _read_sse_line(resp) == b"data: 1"
            error = json.loads((await _read_sse_line(resp))[6:])["error"]
            assert error["code"] == "upstream_error"
            await incoming.cancelled.wait()
            resp.release()


def _worker(srv: RunningServer, worker_id: str) -> WorkerInfo:
    worker = srv.worker(worker_id)
    assert worker is not None
    return worker


def _inflight(srv: RunningServer, worker_id: str) -> int:
    return _worker(srv, worker_id).inflight
