"""`/api/state` and its SSE stream."""

from __future__ import annotations

import asyncio

import aiohttp

from infero.protocol import link as lp
from infero.protocol.state import StateSnapshot
from infero.server import keys
from support.connector import scripted_connector
from support.server import running_server

CHAT = "/api/v1/chat/completions"


async def _event(resp: aiohttp.ClientResponse) -> tuple[int, StateSnapshot]:
    """Next `id:` + `data:` event (comments and retry lines skipped)."""
    event_id = -1
    while True:
        line = (await resp.content.readline()).decode().rstrip("\n")
        if line.startswith("id: "):
            event_id = int(line[4:])
        elif line.startswith("data: "):
            return event_id, StateSnapshot.model_validate_json(line[6:])


async def test_snapshot_carries_worker_model_and_server_fields() -> None:
    async with (
        running_server() as srv,
        scripted_connector(
            srv.url,
            id="w1",
            name="Alpha",
            models=["m"],
            max_concurrency=2,
            version="1.2.3",
            backend="ollama",
        ) as conn,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(5):
            call = asyncio.create_task(http.post(srv.url + CHAT, json={"model": "m"}))
            incoming = await conn.next_request()
            await conn.head(incoming.id, 200, [("Content-Type", "application/json")])
            await conn.body(incoming.id, b"{}")
            await conn.end(incoming.id, usage=lp.Usage(prompt_tokens=4, completion_tokens=6))
            (await call).release()
        async with http.get(srv.url + "/api/state") as resp:
            assert resp.status == 200
            snap = StateSnapshot.model_validate(await resp.json())
        assert snap.server.state == "ready"
        assert snap.server.jobs_completed_total == 1
        assert snap.workers_summary.connected == 1
        assert snap.workers_summary.idle == 1
        (worker,) = snap.workers
        assert (worker.id, worker.name, worker.status) == ("w1", "Alpha", "idle")
        assert (worker.version, worker.backend, worker.protocol) == ("1.2.3", "ollama", 1)
        assert worker.models_supported == ["m"]
        assert worker.max_concurrency == 2
        assert worker.processed_total == 1
        assert (worker.tokens_in_total, worker.tokens_out_total, worker.tokens_total) == (4, 6, 10)
        assert worker.per_model["m"].success_total == 1
        (model,) = snap.models
        assert (model.name, model.workers, model.ready_workers) == ("m", 1, 1)
        assert (model.requests_total, model.tokens_out_total) == (1, 6)
        assert model.avg_duration_ms > 0


async def test_departed_connector_stays_gone_then_disappears() -> None:
    async with running_server(gone_retention=0) as srv, aiohttp.ClientSession() as http:
        async with scripted_connector(srv.url, id="w1"):
            pass
        async with asyncio.timeout(5):
            await srv.wait_for(lambda: not srv.fleet.workers["w1"].live)
        async with http.get(srv.url + "/api/state") as resp:
            snap = StateSnapshot.model_validate(await resp.json())
        assert snap.workers == []
    async with running_server(gone_retention=300) as srv, aiohttp.ClientSession() as http:
        async with scripted_connector(srv.url, id="w1"):
            pass
        async with asyncio.timeout(5):
            await srv.wait_for(lambda: not srv.fleet.workers["w1"].live)
        async with http.get(srv.url + "/api/state") as resp:
            snap = StateSnapshot.model_validate(await resp.json())
        assert [w.status for w in snap.workers] == ["gone"]
        assert snap.workers_summary.gone == 1
        assert snap.server.state == "not_ready"


async def test_stream_sends_a_first_event_at_once_and_pushes_changes() -> None:
    async with (
        asyncio.timeout(5),
        running_server() as srv,
        aiohttp.ClientSession() as http,
        http.get(srv.url + "/api/state/stream") as resp,
    ):
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["X-Accel-Buffering"] == "no"
        first_id, first = await _event(resp)
        assert first.workers == []
        async with scripted_connector(srv.url, id="w9") as conn:
            while True:
                event_id, snap = await _event(resp)
                assert event_id > first_id
                if snap.workers:
                    break
            assert snap.workers[0].id == "w9"
            await conn.status(max_concurrency=1, status="draining")
            while snap.workers[0].status != "draining":
                _, snap = await _event(resp)


async def test_queue_shows_in_the_snapshot() -> None:
    async with (
        running_server() as srv,
        scripted_connector(srv.url, max_concurrency=1) as conn,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(5):
            first = asyncio.create_task(http.post(srv.url + CHAT, json={"model": "m"}))
            held = await conn.next_request()
            second = asyncio.create_task(http.post(srv.url + CHAT, json={"model": "m"}))
            await srv.wait_for(lambda: srv.app[keys.SCHEDULER].queue_len("m") == 1)
            async with http.get(srv.url + "/api/state/stream") as resp:
                while True:
                    _, snap = await _event(resp)
                    if snap.server.scheduler_queue_len == 1:
                        break
            assert snap.models[0].queue_len == 1
            assert snap.workers[0].status == "busy"
            assert snap.workers[0].queue_len == 1
            await conn.reply(held.id, b"{}")
            nxt = await conn.next_request()
            await conn.reply(nxt.id, b"{}")
            for call in (first, second):
                (await call).release()


async def test_link_in_its_handshake_is_listed_as_connecting_until_its_hello_is_accepted() -> None:
    async with (
        running_server() as srv,
        aiohttp.ClientSession() as http,
        http.ws_connect(srv.url + "/api/workers/connect") as ws,
    ):
        async with asyncio.timeout(5):
            await srv.wait_for(lambda: bool(srv.fleet.pending))
        async with http.get(srv.url + "/api/state") as resp:
            snap = StateSnapshot.model_validate(await resp.json())
        (pending,) = snap.workers
        assert (pending.status, pending.name) == ("connecting", "127.0.0.1")
        assert pending.id.startswith("pending-")
        assert snap.workers_summary.connected == 0
        await ws.send_str(lp.encode(lp.Hello(id="w1", models=["m"], max_concurrency=1)))
        assert isinstance(lp.SERVER_FRAMES.validate_json(await ws.receive_str()), lp.Welcome)
        async with asyncio.timeout(5):
            await srv.wait_for(lambda: not srv.fleet.pending)
        async with http.get(srv.url + "/api/state") as resp:
            snap = StateSnapshot.model_validate(await resp.json())
        assert [(w.id, w.status) for w in snap.workers] == [("w1", "idle")]


async def test_refused_link_stops_being_listed_as_connecting() -> None:
    async with (
        running_server(client_key="right") as srv,
        aiohttp.ClientSession() as http,
        http.ws_connect(srv.url + "/api/workers/connect") as ws,
    ):
        async with asyncio.timeout(5):
            await srv.wait_for(lambda: bool(srv.fleet.pending))
            await ws.send_str(lp.encode(lp.Hello(id="w1", client_key="wrong")))
            refused = lp.SERVER_FRAMES.validate_json(await ws.receive_str())
            assert isinstance(refused, lp.Refused)
            assert (await ws.receive()).type == aiohttp.WSMsgType.CLOSE
            await srv.wait_for(lambda: not srv.fleet.pending)
        async with http.get(srv.url + "/api/state") as resp:
            snap = StateSnapshot.model_validate(await resp.json())
        assert snap.workers == []
