"""The link endpoint: handshake, large bodies, flow control, liveness, duplicates."""

from __future__ import annotations

import asyncio
import io
import logging
from typing import cast

import aiohttp
import pytest
from aiohttp import web

from infero.common.liveness import Liveness
from infero.protocol import link as lp
from infero.server import keys
from infero.server.exchange import Exchange, ExchangeFailed
from infero.server.linkserver import Link
from support.connector import scripted_connector
from support.server import running_server

CHAT = "/api/v1/chat/completions"
MB5 = 5 * 1024 * 1024


async def test_five_megabytes_pass_both_ways() -> None:
    big_prompt = b'{"model":"m","prompt":"' + b"p" * MB5 + b'"}'
    big_answer = bytes(range(256)) * (MB5 // 256)
    async with (
        running_server() as srv,
        scripted_connector(srv.url) as conn,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(5):
            call = asyncio.create_task(
                http.post(
                    srv.url + CHAT,
                    data=io.BytesIO(big_prompt),
                    headers={"Content-Type": "application/json"},
                )
            )
            incoming = await conn.next_request()
            assert incoming.body == big_prompt
            await conn.head(incoming.id, 200, [("Content-Type", "application/octet-stream")])
            await conn.body_with_credit(incoming.id, big_answer)
            await conn.end(incoming.id)
            resp = await call
            assert await resp.read() == big_answer
            resp.release()


class _Sent:
    def __init__(self) -> None:
        self.frames: list[lp.Cancel | lp.Credit] = []

    async def send(self, frame: lp.Cancel | lp.Credit) -> None:
        self.frames.append(frame)


async def test_credit_is_granted_as_the_client_consumes_and_overrun_fails_the_stream() -> None:
    link = _Sent()
    exchange = Exchange(link, 7, window=100)
    exchange.on_head(lp.Head(id=7, status=200))
    assert (await exchange.head(1)).status == 200
    assert exchange.on_body(memoryview(b"x" * 60))
    assert await exchange.chunk(1) == b"x" * 60
    await exchange.consumed(60)
    assert link.frames == [lp.Credit(id=7, bytes=60)]
    assert exchange.on_body(memoryview(b"y" * 100)), "60 credit + 40 left of the window"
    assert not exchange.on_body(memoryview(b"z")), "one byte past the window"
    assert await exchange.chunk(1) == b"y" * 100
    with pytest.raises(ExchangeFailed) as failed:
        await exchange.chunk(1)
    assert failed.value.code == "flow_control"
    await exchange.cancel()
    assert link.frames[-1] == lp.Cancel(id=7)


async def test_slow_reader_does_not_stall_another_stream_on_the_same_link() -> None:
    async with (
        running_server() as srv,
        scripted_connector(srv.url, max_concurrency=2) as conn,
        aiohttp.ClientSession() as slow_http,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(5):
            slow_call = asyncio.create_task(
                slow_http.post(srv.url + CHAT, json={"model": "m", "stream": True})
            )
            slow = await conn.next_request()
            await conn.head(slow.id, 200, [("Content-Type", "text/event-stream")])
            slow_resp = await slow_call
            # the slow client reads nothing; the connector fills the whole window
            await conn.body(slow.id, b"x" * conn.welcome.window)
            fast_call = asyncio.create_task(
                http.post(srv.url + CHAT, json={"model": "m", "stream": True})
            )
            fast = await conn.next_request()
            await conn.head(fast.id, 200, [("Content-Type", "text/event-stream")])
            fast_resp = await fast_call
            for i in range(20):
                event = f"data: {i}\n\n".encode()
                await conn.body(fast.id, event)
                assert await fast_resp.content.readexactly(len(event)) == event
            await conn.end(fast.id)
            fast_resp.release()
            await conn.end(slow.id)
            assert len(await slow_resp.read()) == conn.welcome.window
            slow_resp.release()


async def test_silent_link_is_closed_by_the_heartbeat_and_becomes_gone() -> None:
    async with (
        running_server(heartbeat_interval=0.02, link_dead_after=0.06) as srv,
        scripted_connector(srv.url) as conn,
    ):
        conn.answer_pings = False
        async with asyncio.timeout(5):
            await conn.closed.wait()
            await srv.wait_for(lambda: srv.status("w1") == "gone")
        assert conn.pings >= 1


async def test_a_second_connector_with_a_live_id_is_refused_and_the_first_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "infero.server.linkserver")
    async with (
        running_server() as srv,
        scripted_connector(srv.url, id="dup", instance="a", models=["old"]) as first,
        scripted_connector(srv.url, id="dup", instance="b", models=["new"]) as second,
    ):
        assert isinstance(second.answer, lp.Refused)
        assert second.answer.reason == "duplicate"
        assert second.answer.message == (
            "another connector with CLIENT_ID=dup is linked; give each connector its own CLIENT_ID"
        )
        worker = srv.embedded.fleet.workers["dup"]
        assert worker.live
        assert worker.link is not None
        assert not worker.link.closed
        assert worker.models == {"old"}
        assert not first.closed.is_set()
    assert "refused (duplicate)" in caplog.text


async def test_the_same_instance_reconnecting_replaces_its_own_link_at_once() -> None:
    async with (
        running_server() as srv,
        scripted_connector(srv.url, id="dup", instance="a", models=["old"]) as first,
        scripted_connector(srv.url, id="dup", instance="a", models=["new"]) as second,
    ):
        assert isinstance(second.answer, lp.Welcome)
        async with asyncio.timeout(5):
            await first.closed.wait()
        worker = srv.worker("dup")
        assert worker is not None
        assert worker.status == "idle"
        assert worker.models_supported == ["new"]
        assert srv.snapshot().workers_summary.connected == 1


def test_a_link_silent_for_two_heartbeats_is_stale_and_may_be_replaced() -> None:
    now = [0.0]
    liveness = Liveness(interval=5.0, dead_after=15.0, now=0.0)
    holder = Link(
        cast(web.WebSocketResponse, None),
        lp.Hello(id="w", instance="a"),
        "w",
        window=lp.DEFAULT_WINDOW,
        liveness=liveness,
        clock=lambda: now[0],
    )
    other, same, unknown = (lp.Hello(id="w", instance=i) for i in ("b", "a", ""))
    now[0] = 9.0
    assert not holder.replaceable_by(other)
    assert not holder.replaceable_by(unknown)
    assert holder.replaceable_by(same)
    liveness.received(9.0)
    now[0] = 18.5
    assert not holder.replaceable_by(other)
    now[0] = 19.0
    assert holder.replaceable_by(other)
    assert holder.replaceable_by(unknown)


async def test_wrong_client_key_is_refused_and_the_reason_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "infero.server.linkserver")
    async with running_server(client_key="right-key") as srv:
        async with scripted_connector(srv.url, client_key="wrong-key") as conn:
            assert isinstance(conn.answer, lp.Refused)
            assert conn.answer.reason == "unauthorized"
        async with scripted_connector(srv.url, client_key="right-key") as conn:
            assert isinstance(conn.answer, lp.Welcome)
    assert "refused (unauthorized)" in caplog.text
    assert "wrong-key" not in caplog.text
    assert "right-key" not in caplog.text


async def test_unsupported_protocol_version_is_refused() -> None:
    async with (
        running_server() as srv,
        aiohttp.ClientSession() as http,
        http.ws_connect(srv.url + "/api/llm/connect") as ws,
    ):
        await ws.send_str('{"type":"hello","protocol":99,"id":"x"}')
        refused = lp.SERVER_FRAMES.validate_json((await ws.receive()).data)
        assert isinstance(refused, lp.Refused)
        assert refused.reason == "protocol"
        closing = await ws.receive()
        assert closing.type == aiohttp.WSMsgType.CLOSE
        assert closing.data == 1008


async def test_deeply_nested_hello_is_refused_as_invalid() -> None:
    async with (
        running_server() as srv,
        aiohttp.ClientSession() as http,
        http.ws_connect(srv.url + "/api/llm/connect") as ws,
    ):
        await ws.send_str("[" * 100_000)
        refused = lp.SERVER_FRAMES.validate_json((await ws.receive()).data)
        assert isinstance(refused, lp.Refused)
        assert refused.reason == "invalid"


async def test_status_update_applies_at_once() -> None:
    async with running_server() as srv, scripted_connector(srv.url, models=["a"]) as conn:
        await conn.status(models=["b", "c"], max_concurrency=3, status="draining")
        async with asyncio.timeout(5):
            await srv.wait_for(lambda: srv.status("w1") == "draining")
        worker = srv.worker("w1")
        assert worker is not None
        assert worker.models_supported == ["b", "c"]
        assert worker.max_concurrency == 3
        dispatcher = srv.shared.dispatcher
        assert not dispatcher.known("a", None)
        assert dispatcher.known("b", None)


async def test_draining_server_refuses_new_links() -> None:
    async with running_server() as srv:
        srv.app[keys.LIFECYCLE].start_drain()
        async with scripted_connector(srv.url) as conn:
            assert isinstance(conn.answer, lp.Refused)
            assert conn.answer.reason == "draining"


async def test_malformed_frames_are_ignored_and_the_link_keeps_working() -> None:
    async with (
        running_server() as srv,
        scripted_connector(srv.url) as conn,
        aiohttp.ClientSession() as http,
    ):
        await conn.ws.send_str('{"type":"nonsense"}')
        await conn.ws.send_str("not json at all")
        await conn.ws.send_bytes(b"\x09")
        await conn.ws.send_str('{"type":"head","id":999,"status":200}')
        async with asyncio.timeout(5):
            call = asyncio.create_task(http.post(srv.url + CHAT, json={"model": "m"}))
            incoming = await conn.next_request()
            await conn.reply(incoming.id, b"{}")
            resp = await call
            assert resp.status == 200
            resp.release()


async def test_llm_endpoint_refuses_mcp_relays_and_connectors_without_id() -> None:
    async with running_server() as srv:
        async with scripted_connector(srv.url, kind="mcp", id="r1") as conn:
            assert isinstance(conn.answer, lp.Refused)
            assert conn.answer.reason == "invalid"
        async with scripted_connector(srv.url, id="") as conn:
            assert isinstance(conn.answer, lp.Refused)
            assert conn.answer.reason == "invalid"
        assert [w.id for w in srv.snapshot().workers if w.status != "connecting"] == []


async def test_a_hello_with_a_lone_surrogate_is_refused_not_dropped() -> None:
    async with (
        running_server(client_key="k") as srv,
        aiohttp.ClientSession() as http,
        http.ws_connect(srv.url + "/api/llm/connect") as ws,
    ):
        await ws.send_str('{"type":"hello","protocol":1,"id":"x","client_key":"\\ud800"}')
        refused = lp.SERVER_FRAMES.validate_json((await ws.receive()).data)
        assert isinstance(refused, lp.Refused)
        assert refused.reason == "invalid"
        closing = await ws.receive()
        assert closing.type == aiohttp.WSMsgType.CLOSE
        assert closing.data == 1008
        assert [w.id for w in srv.snapshot().workers if w.status != "connecting"] == []


@pytest.mark.parametrize("path", ["/api/llm/connect", "/api/mcp/connect"])
async def test_a_link_waiting_for_its_hello_is_closed_at_shutdown(path: str) -> None:
    """Shutdown does not wait HELLO_TIMEOUT for a link that sent no hello: it closes it (1001)."""
    async with aiohttp.ClientSession() as http:
        async with running_server() as srv:
            # Served in this loop: the handler is in its handshake before the upgrade's
            # answer reaches us.
            ws = await http.ws_connect(srv.url + path)
        async with asyncio.timeout(5):  # HELLO_TIMEOUT is 10 s
            msg = await ws.receive()
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert msg.data == 1001
