"""`/api/state` and its SSE stream."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from infero.protocol import link as lp
from infero.protocol.state import StateSnapshot
from infero.server import state
from support.connector import scripted_connector
from support.server import running_server
from support.statestream import StateView

CHAT = "/api/v1/chat/completions"


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


async def test_departed_connector_is_counted_listed_on_request_then_forgotten() -> None:
    async with running_server(gone_retention=300) as srv, aiohttp.ClientSession() as http:
        async with scripted_connector(srv.url, id="w1"):
            pass
        async with asyncio.timeout(5):
            await srv.wait_for(lambda: not srv.fleet.workers["w1"].live)
        async with http.get(srv.url + "/api/state") as resp:
            snap = StateSnapshot.model_validate(await resp.json())
        assert snap.workers == [], "gone connectors are only counted by default"
        assert snap.workers_summary.gone == 1
        async with http.get(srv.url + "/api/state?gone=list") as resp:
            snap = StateSnapshot.model_validate(await resp.json())
        assert [w.status for w in snap.workers] == ["gone"]
        assert snap.server.state == "not_ready"
    async with running_server(gone_retention=0) as srv, aiohttp.ClientSession() as http:
        async with scripted_connector(srv.url, id="w1"):
            pass
        async with asyncio.timeout(5):
            await srv.wait_for(lambda: "w1" not in srv.fleet.workers)
        async with http.get(srv.url + "/api/state?gone=list") as resp:
            snap = StateSnapshot.model_validate(await resp.json())
        assert snap.workers == []
        assert snap.workers_summary.gone == 0


async def test_stream_sends_a_snapshot_at_once_then_deltas_of_what_changed() -> None:
    async with (
        asyncio.timeout(10),
        running_server() as srv,
        aiohttp.ClientSession() as http,
        http.get(srv.url + "/api/state/stream") as resp,
    ):
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["X-Accel-Buffering"] == "no"
        view = StateView(resp)
        first = await view.step()
        assert first.name == "snapshot"
        assert view.snapshot is not None
        assert view.snapshot.workers == []
        async with scripted_connector(srv.url, id="w9") as conn:
            snap = await view.until(lambda s: [w.id for w in s.workers] == ["w9"])
            assert all(e.name == "delta" for e in view.events[1:])
            assert snap.workers_summary.connected == 1
            await conn.status(max_concurrency=1, status="draining")
            await view.until(lambda s: s.workers[0].status == "draining")


async def test_queue_shows_in_the_snapshot() -> None:
    async with (
        running_server() as srv,
        scripted_connector(srv.url, max_concurrency=1) as conn,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(10):
            first = asyncio.create_task(http.post(srv.url + CHAT, json={"model": "m"}))
            held = await conn.next_request()
            second = asyncio.create_task(http.post(srv.url + CHAT, json={"model": "m"}))
            await srv.wait_for(lambda: srv.queue_len("m") == 1)
            async with http.get(srv.url + "/api/state/stream") as resp:
                snap = await StateView(resp).until(lambda s: s.server.scheduler_queue_len == 1)
            assert snap.models[0].queue_len == 1
            assert snap.models[0].queued_since is not None
            assert snap.workers[0].status == "busy"
            assert snap.workers[0].queue_len == 1
            await conn.reply(held.id, b"{}")
            nxt = await conn.next_request()
            await conn.reply(nxt.id, b"{}")
            for call in (first, second):
                (await call).release()


async def test_the_first_waiters_are_listed_and_the_rest_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(state, "WAITERS_LISTED", 2)
    async with (
        running_server() as srv,
        scripted_connector(srv.url, max_concurrency=1) as conn,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(10):
            calls = [asyncio.create_task(http.post(srv.url + CHAT, json={"model": "m"}))]
            held = await conn.next_request()
            for n in range(3):
                calls.append(asyncio.create_task(http.post(srv.url + CHAT, json={"model": "m"})))
                await srv.wait_for(lambda n=n: srv.queue_len("m") == n + 1)
            async with http.get(srv.url + "/api/state/stream") as resp:
                view = StateView(resp)
                snap = await view.until(lambda s: s.server.scheduler_queue_len == 3)
                model = snap.models[0]
                assert [(w.position, w.instance) for w in model.waiters] == [(1, ""), (2, "")]
                assert model.waiters_more == 1
                assert model.queued_since is not None
                assert abs((model.waiters[0].queued_since - model.queued_since).total_seconds()) < 1
                assert model.waiters[0].queued_since <= model.waiters[1].queued_since
                second = model.waiters[1].queued_since
                await conn.reply(held.id, b"{}")  # the head is served: a delta moves the others up
                snap = await view.until(lambda s: s.models[0].waiters_more == 0)
                assert [w.position for w in snap.models[0].waiters] == [1, 2]
                assert snap.models[0].waiters[0].queued_since == second
            for _ in range(3):
                nxt = await conn.next_request()
                await conn.reply(nxt.id, b"{}")
            for call in calls:
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
