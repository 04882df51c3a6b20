"""The delta protocol of `/api/state/stream`, read by real SSE clients (aiohttp).

Resume with `Last-Event-ID`, a full document when the id cannot be resumed, ordering, scoped
reads, coalesced request traffic, and the plain full-document mode.
"""

from __future__ import annotations

import asyncio
import json
import socket

import aiohttp

from infero.protocol import link as lp
from infero.protocol.state import StateSnapshot
from infero.server.registry import Worker, WorkerStats
from infero.server.state import PUBLISHER, SPACING
from support.connector import scripted_connector
from support.server import RunningServer, running_server
from support.statestream import StateView, next_event

CHAT = "/api/v1/chat/completions"


def _rows(snap: StateSnapshot) -> list[tuple[str, str, int, int]]:
    """What must agree between a document and deltas applied (clock fields aside)."""
    return [(w.id, w.status, w.inflight, w.processed_total) for w in snap.workers]


async def _document(
    http: aiohttp.ClientSession, srv: RunningServer, query: str = ""
) -> StateSnapshot:
    async with http.get(srv.url + "/api/state" + query) as resp:
        assert resp.status == 200
        return StateSnapshot.model_validate_json(await resp.text())


async def test_a_viewer_reconnecting_with_last_event_id_gets_only_the_deltas_it_missed() -> None:
    async with asyncio.timeout(10), running_server() as srv, aiohttp.ClientSession() as http:
        async with http.get(srv.url + "/api/state/stream") as resp:
            view = StateView(resp)
            await view.step()
            async with scripted_connector(srv.url, id="w1") as w1:
                await view.until(lambda s: _rows(s) == [("w1", "idle", 0, 0)])
        held = view.snapshot
        assert held is not None
        last = view.last_id
        async with scripted_connector(srv.url, id="w2"):
            await srv.wait_for(lambda: "w2" in srv.fleet.workers)
            headers = {"Last-Event-ID": last}
            async with http.get(srv.url + "/api/state/stream", headers=headers) as resp:
                resumed = StateView(resp, snapshot=held)
                event = await resumed.step()
                assert event.name == "delta", "a resumable id gets deltas, not a snapshot"
                assert int(event.id.split("-")[1]) > int(last.split("-")[1])
                snap = await resumed.until(lambda s: [w.id for w in s.workers] == ["w2"])
            assert _rows(snap) == _rows(await _document(http, srv))
        del w1


async def test_an_id_of_another_server_process_gets_a_full_snapshot() -> None:
    async with (
        asyncio.timeout(10),
        running_server() as srv,
        aiohttp.ClientSession() as http,
        scripted_connector(srv.url, id="w1"),
    ):
        headers = {"Last-Event-ID": "0badcafe-1"}
        async with http.get(srv.url + "/api/state/stream", headers=headers) as resp:
            event = await next_event(resp)
        assert event.name == "snapshot"
        assert [w.id for w in StateSnapshot.model_validate_json(event.data).workers] == ["w1"]


async def test_deltas_applied_in_order_give_the_same_rows_as_the_full_document() -> None:
    async with (
        asyncio.timeout(10),
        running_server() as srv,
        aiohttp.ClientSession() as http,
        http.get(srv.url + "/api/state/stream") as resp,
    ):
        view = StateView(resp)
        await view.step()
        async with (
            scripted_connector(srv.url, id="a", models=["m"]) as a,
            scripted_connector(srv.url, id="b", models=["m", "n"]),
        ):
            async with scripted_connector(srv.url, id="c"):
                await srv.wait_for(lambda: "c" in srv.fleet.workers)
            await a.status(max_concurrency=1, status="not_ready")
            await srv.wait_for(lambda: srv.fleet.workers["a"].status == "not_ready")
            expected = await _document(http, srv)
            snap = await view.until(lambda s: _rows(s) == _rows(expected))
            assert [m.name for m in snap.models] == ["m", "n"]
            assert snap.workers_summary == expected.workers_summary
        numbers = [int(e.id.split("-")[1]) for e in view.events]
        assert numbers == sorted(set(numbers)), "event ids strictly increase"
        assert len({e.id.split("-")[0] for e in view.events}) == 1


async def test_scoped_streams_carry_only_the_summary_or_one_connector() -> None:
    async with (
        asyncio.timeout(10),
        running_server() as srv,
        aiohttp.ClientSession() as http,
        http.get(srv.url + "/api/state/stream?parts=summary") as summary,
        http.get(srv.url + "/api/state/stream?connector=w2&parts=workers") as one,
    ):
        summary_view, one_view = StateView(summary), StateView(one)
        await summary_view.step()
        await one_view.step()
        async with (
            scripted_connector(srv.url, id="w1", models=["m"]) as w1,
            scripted_connector(srv.url, id="w2", models=["m"]),
        ):
            await summary_view.until(lambda s: s.workers_summary.connected == 2)
            await one_view.until(lambda s: [w.id for w in s.workers] == ["w2"])
            await w1.status(max_concurrency=1, status="draining")
            await summary_view.until(lambda s: s.workers_summary.draining == 1)
        for event in summary_view.events:
            data = json.loads(event.data)
            assert data.get("workers") in (None, []), "no connector rows in a summary stream"
            assert data.get("models") in (None, [])
        for event in one_view.events:
            data = json.loads(event.data)
            rows = data.get("workers", [])
            ids = [w["id"] for w in (rows if isinstance(rows, list) else rows["upsert"])]
            assert set(ids) <= {"w2"}
            assert data.get("models") in (None, [])
        models_only = await _document(http, srv, "?parts=models")
        assert models_only.workers == []


async def test_a_departed_connector_is_removed_by_default_and_listed_as_gone_on_request() -> None:
    async with (
        asyncio.timeout(10),
        running_server() as srv,
        aiohttp.ClientSession() as http,
        http.get(srv.url + "/api/state/stream") as live,
        http.get(srv.url + "/api/state/stream?gone=list") as all_rows,
    ):
        live_view, all_view = StateView(live), StateView(all_rows)
        await live_view.step()
        await all_view.step()
        async with scripted_connector(srv.url, id="w1"):
            await live_view.until(lambda s: len(s.workers) == 1)
        snap = await live_view.until(lambda s: s.workers_summary.gone == 1)
        assert snap.workers == []
        snap = await all_view.until(lambda s: s.workers_summary.gone == 1)
        assert [(w.id, w.status) for w in snap.workers] == [("w1", "gone")]


async def test_request_traffic_reaches_viewers_as_coalesced_batches_not_one_event_each() -> None:
    requests = 40
    async with (
        asyncio.timeout(20),
        running_server() as srv,
        scripted_connector(srv.url, id="w1", models=["m"], max_concurrency=4) as conn,
        aiohttp.ClientSession() as http,
        http.get(srv.url + "/api/state/stream") as resp,
    ):
        view = StateView(resp)
        await view.until(lambda s: len(s.workers) == 1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        watching = asyncio.create_task(
            view.until(lambda s: s.workers[0].processed_total == requests)
        )
        first = len(view.events)
        for _ in range(requests):
            call = asyncio.create_task(http.post(srv.url + CHAT, json={"model": "m"}))
            incoming = await conn.next_request()
            await conn.reply(incoming.id, b"{}")
            (await call).release()
        await watching
        elapsed = loop.time() - started
        deltas = len(view.events) - first
        assert deltas < requests
        assert deltas <= 2 + elapsed / SPACING, f"{deltas} events in {elapsed:.2f} s"


async def test_full_mode_sends_whole_documents_as_plain_events() -> None:
    async with (
        asyncio.timeout(10),
        running_server() as srv,
        aiohttp.ClientSession() as http,
        http.get(srv.url + "/api/state/stream?mode=full") as resp,
    ):
        first = await next_event(resp)
        assert first.name == "message"
        assert StateSnapshot.model_validate_json(first.data).workers == []
        async with scripted_connector(srv.url, id="w1"):
            while True:
                event = await next_event(resp)
                assert event.name == "message"
                snap = StateSnapshot.model_validate_json(event.data)
                if snap.workers:
                    break
        assert snap.workers[0].id == "w1"


async def test_unknown_scope_or_mode_is_a_400() -> None:
    async with running_server() as srv, aiohttp.ClientSession() as http:
        for path in (
            "/api/state?parts=bogus",
            "/api/state?gone=maybe",
            "/api/state/stream?mode=diff",
            "/api/state/stream?parts=workers,nope",
        ):
            async with http.get(srv.url + path) as resp:
                assert resp.status == 400, path
                body = await resp.json()
                assert body["error"]["type"] == "invalid_request_error"


async def test_a_viewer_that_stops_reading_is_disconnected_after_the_stall_timeout() -> None:
    async with asyncio.timeout(30), running_server(stall_timeout=0.5) as srv:
        publisher = srv.app[PUBLISHER]
        host, port = srv.url.removeprefix("http://").split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, (host, int(port)))
        request = f"GET /api/state/stream HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        await loop.sock_sendall(sock, request)
        try:
            received = b""
            while b"retry:" not in received:  # written once the viewer is attached
                chunk = await loop.sock_recv(sock, 256)
                assert chunk, "the server closed the stream"
                received += chunk
            assert publisher.viewers
            n = 0
            while publisher.viewers or n == 0:
                for _ in range(200):  # rows that the viewer never reads
                    n += 1
                    hello = lp.Hello(id=f"w{n}", name="x" * 100, models=["m"], max_concurrency=1)
                    srv.fleet.register(Worker(hello, None, WorkerStats()))
                publisher.refresh()
                await asyncio.sleep(0.05)  # poll the condition (bounded by the timeout above)
        finally:
            sock.close()
        assert not publisher.viewers


async def test_a_silent_connector_turns_late_in_a_delta_before_it_is_gone_and_recovers() -> None:
    async with (
        asyncio.timeout(20),
        running_server(heartbeat_interval=0.1, link_dead_after=30.0) as srv,
        scripted_connector(srv.url) as conn,
        aiohttp.ClientSession() as http,
        http.get(srv.url + "/api/state/stream") as resp,
    ):
        view = StateView(resp)
        await view.until(lambda s: _rows(s) == [("w1", "idle", 0, 0)])
        assert not view.snapshot or not view.snapshot.workers[0].heartbeat_late
        conn.answer_pings = False
        late = await view.until(lambda s: s.workers[0].heartbeat_late)
        assert view.events[-1].name == "delta"
        row = late.workers[0]
        assert row.status == "idle"
        assert not conn.closed.is_set()
        assert (late.server.now - row.last_heartbeat).total_seconds() >= 0.15
        conn.answer_pings = True
        back = await view.until(lambda s: not s.workers[0].heartbeat_late)
        assert view.events[-1].name == "delta"
        assert back.workers[0].status == "idle"
        assert back.workers[0].last_heartbeat > row.last_heartbeat
