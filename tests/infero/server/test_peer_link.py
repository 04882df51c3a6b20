"""The peer link: one persistent WebSocket per peer pair, each relayed request a stream."""

from __future__ import annotations

import asyncio
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from infero.protocol import link as lp
from infero.server.peer import PEER_HOME
from infero.server.peerlink import FEATURES_HEADER, KEY_HEADER, LINK_PATH, WHOLE_ANSWERS
from support.connector import ScriptedConnector, scripted_connector
from support.fleet import PEER_KEY, federated, instance, redis_server, sees
from support.server import RunningServer

MESSAGES = [{"role": "user", "content": "hi"}]
BODY = {"model": "m", "messages": MESSAGES}


async def test_requests_to_a_peer_share_one_link_and_large_answers_cross_whole(
    tmp_path: Path,
) -> None:
    big = os.urandom(3 * lp.DEFAULT_WINDOW + 12345)  # several windows: credit must flow
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1", max_concurrency=4) as conn,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(20):
            await b.wait_for(lambda: sees(b, "w1"))
            for _ in range(3):
                call = asyncio.create_task(http.post(b.url + "/api/v1/chat/completions", json=BODY))
                incoming = await conn.next_request()
                assert incoming.frame.path == "/chat/completions"
                await conn.head(incoming.id, 200, [("Content-Type", "application/octet-stream")])
                await conn.body_with_credit(incoming.id, big)
                await conn.end(incoming.id)
                async with await call as resp:
                    assert resp.status == 200
                    assert await resp.read() == big
            link = federated(b).client.links[a.url]
            assert link.dials == 1
            assert not link.exchanges  # every stream was forgotten once finished


async def test_a_link_the_home_closed_is_dialed_again_and_fails_its_streams(
    tmp_path: Path,
) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1", max_concurrency=4) as conn,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(20):
            await b.wait_for(lambda: sees(b, "w1"))
            body = {**BODY, "stream": True}
            call = asyncio.create_task(http.post(b.url + "/api/v1/chat/completions", json=body))
            incoming = await conn.next_request()
            await conn.head(incoming.id, 200, [("Content-Type", "text/event-stream")])
            await conn.body(incoming.id, b"data: {}\n\n")
            resp = await call
            assert await resp.content.readuntil(b"\n\n") == b"data: {}\n\n"
            await a.app[PEER_HOME].close()  # what A's shutdown does to the links dialed to it
            rest = await resp.read()  # the open stream ends with an error event, no hang
            assert b"upstream_error" in rest, rest
            await incoming.cancelled.wait()  # A cancelled it at the connector
            call = asyncio.create_task(http.post(b.url + "/api/v1/chat/completions", json=BODY))
            incoming = await conn.next_request()
            await conn.reply(incoming.id, b'{"id": "x"}')
            async with await call as resp:
                assert resp.status == 200
            assert federated(b).client.links[a.url].dials == 2


async def _relay_once(
    http: aiohttp.ClientSession, via: RunningServer, conn: ScriptedConnector, model: str = "m"
) -> None:
    body = {**BODY, "model": model}
    call = asyncio.create_task(http.post(via.url + "/api/v1/chat/completions", json=body))
    incoming = await conn.next_request()
    await conn.reply(incoming.id, b'{"id": "x"}')
    async with await call as resp:
        assert resp.status == 200


def _drops(monkeypatch: pytest.MonkeyPatch, server: RunningServer) -> dict[str, asyncio.Event]:
    """An event per peer address, set when `server` drops its link there from its table."""
    client = federated(server).client
    events: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
    forget = client.forget

    def spy(address: str, why: str = "the instance left the fleet") -> None:
        forget(address, why)
        events[address].set()

    monkeypatch.setattr(client, "forget", spy)
    return events


async def test_the_link_to_an_instance_that_left_the_fleet_is_closed_and_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "B") as b,
        aiohttp.ClientSession() as http,
    ):
        links = federated(b).client.links
        dropped = _drops(monkeypatch, b)
        async with asyncio.timeout(30):
            async with (
                instance(redis.url, "A") as a,
                scripted_connector(a.url, client_key="ck", id="w1") as conn,
            ):
                await b.wait_for(lambda: sees(b, "w1"))
                await _relay_once(http, b, conn)
                address, link = a.url, links[a.url]
            # A said goodbye: B drops and closes its link, reader included (once Redis has
            # answered for a TTL without listing A again)
            await dropped[address].wait()
            assert address not in links
            assert link.closed
            closing = [t for t in asyncio.all_tasks() if t.get_name().startswith("peer-link-")]
            await asyncio.gather(*closing)
            assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("peer-link-")]
            port = int(address.rsplit(":", 1)[1])
            async with (
                instance(redis.url, "A", port=port) as a,
                scripted_connector(a.url, client_key="ck", id="w1") as conn,
            ):
                await b.wait_for(lambda: sees(b, "w1"))
                await _relay_once(http, b, conn)  # back at the same address: a fresh link
                assert links[address] is not link
                assert links[address].dials == 1


async def test_links_to_instances_that_left_while_redis_was_down_go_once_it_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B forgot A and C while Redis was unreachable (their leases may have expired), without
    taking it for their departure. A stops meanwhile; C lives on. Redis comes back empty:
    once it has answered for a TTL, B drops its link to A (not listed again) and keeps its
    link to C, which re-announced itself."""
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "B") as b,
        instance(redis.url, "C") as c,
        scripted_connector(c.url, client_key="ck", id="w2", models=["n"]) as at_c,
        aiohttp.ClientSession() as http,
    ):
        links = federated(b).client.links
        dropped = _drops(monkeypatch, b)
        async with asyncio.timeout(40):
            async with (
                instance(redis.url, "A") as a,
                scripted_connector(a.url, client_key="ck", id="w1") as at_a,
            ):
                await b.wait_for(lambda: sees(b, "w1") and sees(b, "w2"))
                await _relay_once(http, b, at_a)
                await _relay_once(http, b, at_c, model="n")
                to_a, to_c = links[a.url], links[c.url]
                await redis.stop()
                await b.wait_for(lambda: not sees(b, "w1") and not sees(b, "w2"))
                assert links == {a.url: to_a, c.url: to_c}, "Redis down proves no departure"
            assert not to_a.connected  # A stopped: it closed the links dialed to it
            await redis.start()
            await dropped[a.url].wait()
            assert not dropped[c.url].is_set()
            assert to_a.closed
            assert links == {c.url: to_c}
            await b.wait_for(lambda: sees(b, "w2"))
            await _relay_once(http, b, at_c, model="n")
            assert to_c.dials == 1, "the link to C outlived the outage"


async def test_a_link_left_without_a_connection_and_unused_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A departure B never sees (A stops while Redis is unreachable, and Redis stays away):
    the link, closed by A and unused, leaves B's table by itself."""
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "B") as b,
        aiohttp.ClientSession() as http,
    ):
        client = federated(b).client
        client.unused_after = 0.2
        dropped = _drops(monkeypatch, b)
        async with asyncio.timeout(30):
            async with (
                instance(redis.url, "A") as a,
                scripted_connector(a.url, client_key="ck", id="w1") as conn,
            ):
                await b.wait_for(lambda: sees(b, "w1"))
                await _relay_once(http, b, conn)
                address, link = a.url, client.links[a.url]
                await redis.stop()
                await b.wait_for(lambda: federated(b).membership.degraded)
                assert not dropped[address].is_set(), "a connected link is kept, however idle"
            await dropped[address].wait()
            assert address not in client.links
            assert link.closed


async def test_streams_beyond_a_link_s_limit_are_refused_busy_at_either_end(
    tmp_path: Path,
) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1", max_concurrency=4) as conn,
        aiohttp.ClientSession() as http,
    ):
        home = a.app[PEER_HOME]
        home.max_streams = 1  # for links dialed from now on
        async with asyncio.timeout(20):
            await b.wait_for(lambda: sees(b, "w1"))
            url = b.url + "/api/v1/chat/completions"
            held = asyncio.create_task(http.post(url, json=BODY))
            first = await conn.next_request()
            async with http.post(url, json=BODY) as resp:  # refused by A
                assert resp.status == 502
                assert "(busy)" in (await resp.json())["error"]["message"]
            (link,) = home.links
            link.max_streams = 2
            federated(b).client.links[a.url].max_streams = 1
            async with http.post(url, json=BODY) as resp:  # refused by B
                assert resp.status == 502
                assert "1 requests open to" in (await resp.json())["error"]["message"]
            await conn.reply(first.id, b'{"id": "x"}')
            async with await held as resp:
                assert resp.status == 200


async def test_small_and_large_request_bodies_reach_the_connector_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole: list[int] = []  # body sizes sent in one frame with their request
    pack = lp.pack_new_request

    def counted(stream_id: int, *, body: bytes | bytearray, **fields: Any) -> bytes:
        whole.append(len(body))
        return pack(stream_id, body=body, **fields)

    monkeypatch.setattr(lp, "pack_new_request", counted)
    small = {**BODY, "user": "s" * 1000}  # one frame with its request on the peer link
    large = {**BODY, "user": "l" * (2 * lp.BODY_CHUNK)}  # request frame, then body frames
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1", max_concurrency=4) as conn,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(20):
            await b.wait_for(lambda: sees(b, "w1"))
            for body in (small, large, small):
                sent = json.dumps(body).encode()
                call = asyncio.create_task(
                    http.post(
                        b.url + "/api/v1/chat/completions",
                        data=sent,
                        headers={"Content-Type": "application/json"},
                    )
                )
                incoming = await conn.next_request()
                assert incoming.body == sent
                await conn.reply(incoming.id, b'{"id": "x"}')
                async with await call as resp:
                    assert resp.status == 200
                    assert await resp.read() == b'{"id": "x"}'
        assert len(whole) == 2
        assert all(size < 2000 for size in whole)


def test_a_request_with_its_body_in_one_frame_decodes_back() -> None:
    frame = lp.Request(id=7, path="/relay/chat/completions", body_len=3, model="m")
    kind, sid, payload = lp.unpack_body(lp.pack_request(frame, b"abc"))
    assert (kind, sid) == (lp.REQUEST_WITH_BODY, 7)
    decoded, body = lp.unpack_request(payload)
    assert decoded == frame
    assert bytes(body) == b"abc"
    with pytest.raises(lp.BadFrame):
        lp.unpack_request(payload[:10])


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain",
        'quote " backslash \\ slash /',
        "controls \b\f\n\r\t \x00\x01\x1f \x7f",
        "caf\u00e9 \u2603 \U0001f600",  # not ASCII: built as pydantic builds it
        "\udcff",  # a lone surrogate (a header byte that is not UTF-8): as pydantic fails
    ],
)
def test_a_request_packed_without_its_model_is_the_same_frame(text: str) -> None:
    fields: dict[str, Any] = {
        "request_id": f"rid {text}",
        "method": "POST",
        "path": f"/relay/chat/completions?q={text}",
        "headers": [("Content-Type", "application/json"), (f"X-{text}", text)],
        "stream": bool(len(text) % 2),
        "model": f"m {text}",
    }
    body = b'{"model": "m"}'
    try:
        expected = lp.pack_request(lp.Request(id=7, body_len=len(body), **fields), body)
    except ValueError as failure:
        with pytest.raises(type(failure)):
            lp.pack_new_request(7, body=body, **fields)
        return
    assert lp.pack_new_request(7, body=body, **fields) == expected
    assert lp.pack_new_request(0xFFFFFFFF, body=b"", **fields) == lp.pack_request(
        lp.Request(id=0xFFFFFFFF, body_len=0, **fields), b""
    )


def test_an_answer_in_one_frame_decodes_back() -> None:
    head = lp.Head(id=9, status=201, headers=[("Content-Type", "application/json")])
    kind, sid, payload = lp.unpack_body(lp.pack_answer(head, b'{"id": "x"}'))
    assert (kind, sid) == (lp.RESPONSE_WHOLE, 9)
    decoded, body = lp.unpack_answer(payload)
    assert decoded == head
    assert bytes(body) == b'{"id": "x"}'
    with pytest.raises(lp.BadFrame):
        lp.unpack_answer(payload[:6])


async def test_a_small_answer_crosses_in_one_frame_to_an_instance_that_reads_it(
    tmp_path: Path,
) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(20):
            frame = lp.Request(id=5, path="/queue/wake", body_len=2)
            ws = await http.ws_connect(
                a.url + LINK_PATH,
                headers={KEY_HEADER: PEER_KEY, FEATURES_HEADER: WHOLE_ANSWERS},
                max_msg_size=lp.MAX_FRAME,
            )
            await ws.send_bytes(lp.pack_request(frame, b"{}"))
            kind, sid, payload = lp.unpack_body(await ws.receive_bytes())
            assert (kind, sid) == (lp.RESPONSE_WHOLE, 5)
            head, body = lp.unpack_answer(payload)
            assert head.status == 200
            assert bytes(body) == b"{}"
            names = {key.lower() for key, _ in head.headers}
            assert "content-type" in names  # the answer's own headers cross
            assert not names & {"date", "server", "content-length", "x-infero-request-id"}
            await ws.close()
            ws = await http.ws_connect(  # an instance that did not announce it: three frames
                a.url + LINK_PATH, headers={KEY_HEADER: PEER_KEY}, max_msg_size=lp.MAX_FRAME
            )
            await ws.send_bytes(lp.pack_request(frame, b"{}"))
            assert isinstance(lp.CONNECTOR_FRAMES.validate_json(await ws.receive_str()), lp.Head)
            assert lp.unpack_body(await ws.receive_bytes())[0] == lp.RESPONSE_BODY
            assert isinstance(lp.CONNECTOR_FRAMES.validate_json(await ws.receive_str()), lp.End)
            await ws.close()


async def test_a_small_answer_relayed_across_keeps_the_backends_headers(tmp_path: Path) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1", max_concurrency=4) as conn,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(20):
            await b.wait_for(lambda: sees(b, "w1"))
            headers = {"X-Request-Id": "rid-1", "Content-Type": "application/json"}
            call = asyncio.create_task(
                http.post(b.url + "/api/v1/chat/completions", json=BODY, headers=headers)
            )
            incoming = await conn.next_request()
            await conn.head(
                incoming.id, 201, [("Content-Type", "application/json"), ("X-Backend", "yes")]
            )
            await conn.body(incoming.id, b'{"id": "x"}')
            await conn.end(incoming.id)
            async with await call as resp:
                assert resp.status == 201
                assert await resp.read() == b'{"id": "x"}'
                assert resp.headers["X-Backend"] == "yes"
                assert resp.headers.getall("X-Request-Id") == ["rid-1"]
                assert resp.headers.getall("X-Infero-Request-Id") == ["rid-1"]
                assert len(resp.headers.getall("Date")) == 1


async def test_a_backends_own_infero_headers_never_pass_for_the_homes(tmp_path: Path) -> None:
    """A backend answering with `X-Infero-Peer-Error` is not taken for the home refusing the
    request (B would fail over, then answer 502): its answer reaches the client as sent."""
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        instance(redis.url, "B") as b,
        scripted_connector(a.url, client_key="ck", id="w1", max_concurrency=4) as conn,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(20):
            await b.wait_for(lambda: sees(b, "w1"))
            call = asyncio.create_task(http.post(b.url + "/api/v1/chat/completions", json=BODY))
            incoming = await conn.next_request()
            sent = [("Content-Type", "application/json"), ("X-Infero-Peer-Error", "draining")]
            await conn.head(incoming.id, 200, sent)
            await conn.body(incoming.id, b'{"id": "y"}')
            await conn.end(incoming.id)
            async with await call as resp:
                assert resp.status == 200
                assert await resp.read() == b'{"id": "y"}'
                assert "X-Infero-Peer-Error" not in resp.headers


async def test_a_whole_request_whose_body_is_not_as_announced_is_refused(tmp_path: Path) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A") as a,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(20):
            ws = await http.ws_connect(
                a.url + LINK_PATH, headers={KEY_HEADER: PEER_KEY}, max_msg_size=lp.MAX_FRAME
            )
            frame = lp.Request(id=3, path="/queue/wake", body_len=10)
            await ws.send_bytes(lp.pack_request(frame, b"{}"))  # 2 bytes, not 10
            end = lp.CONNECTOR_FRAMES.validate_json(await ws.receive_str())
            assert isinstance(end, lp.End)
            assert end.id == 3
            assert end.error is not None
            assert end.error.code == "invalid"
            frame = lp.Request(id=4, path="/queue/wake", body_len=2)
            await ws.send_bytes(lp.pack_request(frame, b"{}"))  # as announced: served
            head = lp.CONNECTOR_FRAMES.validate_json(await ws.receive_str())
            assert isinstance(head, lp.Head)
            assert (head.id, head.status) == (4, 200)
            await ws.close()
