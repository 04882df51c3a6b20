"""MCP across instances sharing one real Redis (docs/scale-out.md, "MCP").

A relay (scripted, speaking the real link protocol) is linked to instance A; MCP clients call
instance B, which forwards each exchange to A over the peer channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from redis import asyncio as aioredis
from redis.asyncio.client import Monitor

from infero.protocol import link as lp
from infero.server.mcp.access import token_digest
from infero.server.mcp.fleet import RELAY_PREFIX, UNKNOWN_TTL
from infero.server.membership import MEMBERS, PREFIX, Lease, RelaySummary
from support.connector import ScriptedConnector, scripted_connector
from support.fleet import federated, free_port, instance, redis_cluster, redis_server
from support.server import RunningServer

CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "t"}}
RAW_CALL = b'{"jsonrpc": "2.0",  "id": 7, "method": "tools/call", "params": {"name": "t"}}'
RESULT = b'{"jsonrpc":"2.0","id":7,"result":{}}'
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
EVENTS = (
    b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress",'
    b'"params":{"progressToken":1,"progress":1}}\n\n',
    b'event: message\ndata: {"jsonrpc":"2.0","id":7,"result":{"content":[]}}\n\n',
)


async def until_value(url: str, key: str, wanted: bytes | None) -> None:
    """Return once `key` holds `wanted` (None: absent)."""
    await until_key(url, key, lambda value: value == wanted)


async def until_key(url: str, key: str, check: Callable[[Any], bool]) -> None:
    """Return once `check(value of key)` holds, woken by keyspace notifications."""
    store = aioredis.from_url(url)
    try:
        await store.config_set("notify-keyspace-events", "Kg$x")
        async with store.pubsub() as events:
            await events.subscribe(f"__keyspace@0__:{key}")
            while not check(await store.get(key)):
                await events.get_message(timeout=None)  # any event on the key: look again
    finally:
        await store.aclose()


async def answered(
    http: aiohttp.ClientSession, url: str, relay: ScriptedConnector, **request: Any
) -> aiohttp.ClientResponse:
    """POST a call to `url`; the relay answers it with RESULT."""
    call = asyncio.create_task(http.post(url, **request))
    incoming = await relay.next_request()
    await relay.reply(incoming.id, RESULT)
    return await call


def sees_relay(server: RunningServer, relay_id: str) -> bool:
    """The instance knows a relay linked to another instance."""
    return federated(server).relays.remote(relay_id) is not None


@asynccontextmanager
async def relay_at(server: RunningServer, relay_id: str, **hello: Any) -> AsyncIterator[Any]:
    """A scripted `infero mcp` link to `server`."""
    fields: dict[str, Any] = {"kind": "mcp", "id": relay_id, "client_key": "ck"}
    fields.update(hello)
    async with scripted_connector(server.url, path="/api/mcp/connect", **fields) as relay:
        yield relay


@asynccontextmanager
async def two_instances(tmp_path: Path, **options: Any) -> AsyncIterator[tuple[Any, Any, Any]]:
    """Redis, A and B."""
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A", **options) as a,
        instance(redis.url, "B", **options) as b,
    ):
        yield redis, a, b


async def stream_answer(relay: ScriptedConnector, sid: int) -> None:
    await relay.head(sid, 200, [("Content-Type", "text/event-stream"), ("Mcp-Session-Id", "s1")])
    for event in EVENTS:
        await relay.body(sid, event)
    await relay.end(sid)


async def test_b_forwards_calls_to_a_relay_linked_to_a_byte_for_byte(tmp_path: Path) -> None:
    async with (
        two_instances(tmp_path) as (_, a, b),
        relay_at(a, "r1") as relay,
        aiohttp.ClientSession(headers=ACCEPT) as http,
    ):
        async with asyncio.timeout(15):
            await b.wait_for(lambda: sees_relay(b, "r1"))
            answers: dict[str, tuple[int, str, str, bytes]] = {}
            for server in (a, b):
                call = asyncio.create_task(
                    http.post(
                        server.url + "/api/mcp/id/r1?x=1",
                        data=RAW_CALL,
                        headers={"Mcp-Session-Id": "s1", "Authorization": "Bearer secret"},
                    )
                )
                incoming = await relay.next_request()
                assert incoming.frame.method == "POST"
                assert incoming.frame.path == "/?x=1"
                sent = {k.lower(): v for k, v in incoming.frame.headers}
                assert sent["mcp-session-id"] == "s1"
                assert "authorization" not in sent
                assert not any(k.startswith("x-infero") for k in sent)
                assert incoming.body == RAW_CALL
                await stream_answer(relay, incoming.id)
                resp = await call
                answers[server.url] = (
                    resp.status,
                    resp.headers["Content-Type"],
                    resp.headers["Mcp-Session-Id"],
                    await resp.read(),
                )
            assert answers[a.url] == answers[b.url]
            assert answers[b.url][3] == b"".join(EVENTS)

            json_call = asyncio.create_task(http.post(b.url + "/api/mcp/id/r1", json=CALL))
            incoming = await relay.next_request()
            await relay.reply(incoming.id, b'{"jsonrpc":"2.0","id":7,"result":{}}')
            resp = await json_call
            assert resp.status == 200
            assert await resp.read() == b'{"jsonrpc":"2.0","id":7,"result":{}}'

            await a.wait_for(lambda: _sessions(a) == ["s1"])
            await b.wait_for(lambda: _sessions(b) == ["s1"])  # A shares it through Redis
        assert b.snapshot().mcp.sessions[0].instance == "A"
        row = a.relay("r1")  # counted once per call, at the relay's home
        assert row is not None
        assert row.calls_total == 3


def _sessions(server: RunningServer) -> list[str]:
    return [s.id for s in server.snapshot().mcp.sessions]


def lists_relay(relay_id: str) -> Callable[[bytes | None], bool]:
    """Whether a header read from Redis lists the relay."""
    return lambda raw: raw is not None and any(r.id == relay_id for r in Lease.load(raw).relays)


async def test_a_relay_linked_a_moment_ago_is_reached_before_b_reads_a_s_header(
    tmp_path: Path,
) -> None:
    """B's view of the other instances does not list the relay yet (as in the second before
    its next read of A's header): B finds it in Redis, by its id lease and A's header. An id
    found nowhere is not read again for UNKNOWN_TTL (B's clock is the test's)."""
    async with (
        two_instances(tmp_path) as (redis, a, b),
        aiohttp.ClientSession(headers=ACCEPT) as http,
    ):
        tables = federated(b).relays
        tables.peers, tables.version = tuple, lambda: -1  # B has read no header of A yet
        ticks = [1000.0]
        tables.clock = lambda: ticks[0]
        secret = {"Authorization": "Bearer secret"}
        url = b.url + "/api/mcp/id/r1"
        async with asyncio.timeout(15):
            early = await http.post(url, json=CALL, headers=secret)
            assert early.status == 503, "asked before the relay linked: B remembers the id"
            async with relay_at(a, "r1", auth_sha256=token_digest("secret")) as relay:
                await until_key(redis.url, PREFIX + "instance:A", lists_relay("r1"))
                assert tables.remote("r1") is None
                again = await http.post(url, json=CALL, headers=secret)
                assert again.status == 503, "within UNKNOWN_TTL of the first ask, not read again"
                ticks[0] += UNKNOWN_TTL
                resp = await answered(http, url, relay, json=CALL, headers=secret)
                assert resp.status == 200
                assert await resp.read() == RESULT
                denied = await http.post(b.url + "/api/mcp/id/r1", json=CALL)
                assert denied.status == 401, "the caller is checked with the digest read"
            unknown = await http.post(b.url + "/api/mcp/id/r2", json=CALL, headers=secret)
            assert unknown.status == 503


async def test_get_and_delete_at_b_reach_the_relay_and_end_the_session_at_a(
    tmp_path: Path,
) -> None:
    async with (
        two_instances(tmp_path) as (_, a, b),
        relay_at(a, "r1") as relay,
        aiohttp.ClientSession(headers=ACCEPT) as http,
    ):
        async with asyncio.timeout(15):
            await b.wait_for(lambda: sees_relay(b, "r1"))
            call = asyncio.create_task(http.post(b.url + "/api/mcp/id/r1", json=CALL))
            incoming = await relay.next_request()
            await stream_answer(relay, incoming.id)
            (await call).release()
            await a.wait_for(lambda: _sessions(a) == ["s1"])

            session = {"Mcp-Session-Id": "s1"}
            listen = asyncio.create_task(http.get(b.url + "/api/mcp/id/r1", headers=session))
            incoming = await relay.next_request()
            assert incoming.frame.method == "GET"
            await relay.head(incoming.id, 200, [("Content-Type", "text/event-stream")])
            await relay.body(incoming.id, EVENTS[0])
            stream = await listen
            assert await stream.content.readuntil(b"\n\n") == EVENTS[0]
            stream.close()  # the caller leaves B: the listening stream ends at the relay
            await incoming.cancelled.wait()

            delete = asyncio.create_task(http.delete(b.url + "/api/mcp/id/r1", headers=session))
            incoming = await relay.next_request()
            assert incoming.frame.method == "DELETE"
            await relay.reply(incoming.id, b"")
            assert (await delete).status == 200
            await a.wait_for(lambda: _sessions(a) == [])


async def test_a_caller_leaving_b_cancels_the_call_at_the_relay(tmp_path: Path) -> None:
    async with (
        two_instances(tmp_path) as (_, a, b),
        relay_at(a, "r1") as relay,
        aiohttp.ClientSession(headers=ACCEPT) as http,
    ):
        async with asyncio.timeout(15):
            await b.wait_for(lambda: sees_relay(b, "r1"))
            call = asyncio.create_task(http.post(b.url + "/api/mcp/id/r1", json=CALL))
            incoming = await relay.next_request()
            await relay.head(incoming.id, 200, [("Content-Type", "text/event-stream")])
            await relay.body(incoming.id, EVENTS[0])
            resp = await call
            assert await resp.content.readuntil(b"\n\n") == EVENTS[0]
            resp.close()
            await incoming.cancelled.wait()
            await a.wait_for(lambda: (row := a.relay("r1")) is not None and row.inflight == 0)


async def test_b_checks_the_caller_and_keeps_the_errors_of_one_instance(tmp_path: Path) -> None:
    async with (
        two_instances(tmp_path, api_key="client-key") as (_, a, b),
        relay_at(a, "r1", auth_sha256=token_digest("relay-token")) as relay,
        aiohttp.ClientSession(headers=ACCEPT) as http,
    ):
        async with asyncio.timeout(15):
            await b.wait_for(lambda: sees_relay(b, "r1"))
            url = b.url + "/api/mcp/id/r1"
            async with http.post(url, json=CALL) as resp:
                assert resp.status == 401
                assert "resource_metadata" in resp.headers["WWW-Authenticate"]
            async with http.post(url, data=b"{", headers=_bearer("relay-token")) as resp:
                assert resp.status == 400
                assert (await resp.json())["error"]["data"] == {"mcp": "MCP_SCHEMA_ERROR"}
            async with http.post(
                b.url + "/api/mcp/id/nobody", json=CALL, headers=_bearer("client-key")
            ) as resp:
                assert resp.status == 503
            call = asyncio.create_task(http.post(url, json=CALL, headers=_bearer("relay-token")))
            incoming = await relay.next_request()
            await relay.ws.close()  # the relay goes away before answering
            resp = await call
            assert resp.status == 503
            body = await resp.json()
            assert (body["id"], body["error"]["data"]) == (7, {"mcp": "MCP_PROVIDER_UNAVAILABLE"})
            assert incoming.frame.method == "POST"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def commands_until(monitor: Monitor, store: aioredis.Redis, marker: str) -> list[str]:
    """The commands Redis ran since the last call, up to an `ECHO marker` sent now (MONITOR
    lists commands in the order Redis runs them)."""
    await store.echo(marker)
    seen: list[str] = []
    while (command := (await monitor.next_command())["command"]) != f"ECHO {marker}":
        seen.append(command)
    return seen


async def test_a_caller_no_relay_accepts_gets_401_without_a_redis_command(tmp_path: Path) -> None:
    """On a keyed server, a caller with neither an API key nor the AUTH_TOKEN of a relay the
    instance knows is answered 401 before the relay id is looked up: however many ids it
    tries, Redis runs no command for it (MONITOR). Key holders and relay tokens get the
    answers they got before, an unknown id still read from Redis once."""
    async with (
        two_instances(tmp_path, api_key="client-key") as (redis, a, b),
        relay_at(a, "r1", auth_sha256=token_digest("relay-token")) as relay,
        aiohttp.ClientSession(headers=ACCEPT) as http,
    ):
        store = aioredis.from_url(redis.url)
        try:
            async with asyncio.timeout(20), store.monitor() as monitor:
                await b.wait_for(lambda: sees_relay(b, "r1"))
                await commands_until(monitor, store, "start")
                for n, headers in enumerate([{}, _bearer("wrong"), {"Authorization": "Basic x"}]):
                    for method in ("POST", "GET", "DELETE"):
                        url = f"{b.url}/api/mcp/id/probe-{n}-{method}"
                        async with http.request(method, url, json=CALL, headers=headers) as resp:
                            assert resp.status == 401
                            assert "resource_metadata" in resp.headers["WWW-Authenticate"]
                            body = await resp.json()
                            assert body["error"]["data"] == {"mcp": "MCP_UNAUTHORIZED"}
                    async with http.post(b.url + "/api/mcp/id/r1", json=CALL, headers=headers) as r:
                        assert r.status == 401, "a relay B knows: refused as before"
                seen = await commands_until(monitor, store, "unauthenticated")
                assert not [c for c in seen if "probe-" in c or "relay:" in c], seen

                async with http.post(
                    b.url + "/api/mcp/id/probe-key", json=CALL, headers=_bearer("client-key")
                ) as resp:
                    assert resp.status == 503
                    body = await resp.json()
                    assert body["error"]["data"] == {"mcp": "MCP_PROVIDER_UNAVAILABLE"}
                async with http.post(
                    b.url + "/api/mcp/id/probe-token", json=CALL, headers=_bearer("relay-token")
                ) as resp:
                    assert resp.status == 401, "a relay's token learns no other id"
                seen = await commands_until(monitor, store, "credentialed")
                assert "GET {infero}:relay:probe-key" in seen, "a key holder's id is looked up"
                assert "GET {infero}:relay:probe-token" in seen

                resp = await answered(
                    http, b.url + "/api/mcp/id/r1", relay, json=CALL, headers=_bearer("relay-token")
                )
                assert resp.status == 200
        finally:
            await store.aclose()


async def test_a_relay_id_is_unique_across_instances(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with two_instances(tmp_path) as (redis, a, b):
        async with relay_at(a, "r1", instance="nonce-1") as first:
            assert isinstance(first.answer, lp.Welcome)
            async with relay_at(b, "r1", instance="nonce-2") as second:
                assert second.answer == lp.Refused(
                    reason="duplicate",
                    message="another connector with CLIENT_ID=r1 is linked; "
                    "give each connector its own CLIENT_ID",
                )
            assert "refused (duplicate): another connector with CLIENT_ID=r1" in caplog.text
            # The same relay process reconnecting through B takes its id over; A lets go.
            async with relay_at(b, "r1", instance="nonce-1") as again:
                assert isinstance(again.answer, lp.Welcome)
                async with asyncio.timeout(10):
                    await first.closed.wait()
                    await a.wait_for(lambda: getattr(a.relay("r1"), "instance", "") == "B")
                assert b.relay("r1") is not None
            async with asyncio.timeout(10):
                await b.wait_for(lambda: b.relay("r1") is None)
        async with asyncio.timeout(10):
            await until_value(redis.url, RELAY_PREFIX + "r1", None)  # released at unlink
        async with relay_at(a, "r1", instance="nonce-3") as third:
            assert isinstance(third.answer, lp.Welcome)


async def test_relay_leases_are_rewritten_after_redis_restarts_empty(tmp_path: Path) -> None:
    async with two_instances(tmp_path) as (redis, a, b), relay_at(a, "r1", instance="n1"):
        store = aioredis.from_url(redis.url)
        assert await store.get(RELAY_PREFIX + "r1") == b"A\nn1"
        await store.aclose()
        await redis.stop()
        await redis.start()  # empty
        async with asyncio.timeout(10):
            await until_value(redis.url, RELAY_PREFIX + "r1", b"A\nn1")
        async with relay_at(b, "r1", instance="n2") as other:
            assert isinstance(other.answer, lp.Refused)


async def test_control_asked_at_b_reaches_the_relay_linked_to_a(tmp_path: Path) -> None:
    async with (
        two_instances(tmp_path, operator_key="op") as (_, a, b),
        relay_at(a, "r1") as relay,
        aiohttp.ClientSession(headers={"Authorization": "Bearer op"}) as http,
    ):
        async with asyncio.timeout(15):
            await b.wait_for(lambda: sees_relay(b, "r1"))
            async with http.post(b.url + "/api/mcp/relays/r1/drain") as resp:
                assert resp.status == 202
            assert await relay.controls.get() == lp.Control(action="drain", by="operator")
            await relay.status(status="draining", max_concurrency=1)
            await b.wait_for(lambda: getattr(b.relay("r1"), "status", "") == "draining")
            async with http.post(b.url + "/api/mcp/relays/nobody/drain") as resp:
                assert resp.status == 404


async def test_every_instance_lists_every_relay_with_its_instance(tmp_path: Path) -> None:
    async with (
        two_instances(tmp_path) as (_, a, b),
        relay_at(a, "r1", name="one"),
        relay_at(b, "r2", name="two"),
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(15):
            await b.wait_for(lambda: b.relay("r1") is not None)
            await a.wait_for(lambda: a.relay("r2") is not None)
            for server in (a, b):
                async with http.get(server.url + "/api/state") as resp:
                    clients = (await resp.json())["mcp"]["clients"]
                assert {c["id"]: (c["name"], c["instance"]) for c in clients} == {
                    "r1": ("one", "A"),
                    "r2": ("two", "B"),
                }


async def test_without_redis_an_instance_links_and_serves_its_own_relays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with two_instances(tmp_path) as (redis, a, _), aiohttp.ClientSession() as http:
        await redis.stop()
        async with asyncio.timeout(15):
            await a.wait_for(lambda: federated(a).membership.degraded)
            async with relay_at(a, "r9") as relay:
                assert isinstance(relay.answer, lp.Welcome)
                url = a.url + "/api/mcp/id/r9"
                resp = await answered(http, url, relay, data=RAW_CALL, headers=ACCEPT)
                assert resp.status == 200
                resp.release()
        assert "mcp relay r9: Redis unreachable" in caplog.text


PARTIAL = b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress"'


@asynccontextmanager
async def breaking_home() -> AsyncIterator[str]:
    """An instance whose MCP answers break off in the middle of an SSE event; yields its URL."""

    async def serve(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:  # the peer link: answer the first stream's head and some body
            kind, _, payload = lp.unpack_body(msg.data)  # a small request comes whole
            assert kind == lp.REQUEST_WITH_BODY
            frame, _ = lp.unpack_request(payload)
            assert frame.path == "/mcp/rb"
            sse = [("Content-Type", "text/event-stream")]
            await ws.send_str(lp.encode(lp.Head(id=frame.id, status=200, headers=sse)))
            await ws.send_bytes(lp.pack_body(lp.RESPONSE_BODY, frame.id, PARTIAL))
            break
        assert request.transport is not None
        request.transport.close()  # gone, as a killed process
        return ws

    app = web.Application()
    app.router.add_get("/api/peer/v1/link", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def announce(redis_url: str, instance_id: str, address: str, relay_id: str) -> None:
    """Publish an instance lease (no connectors) listing one relay, as a home would."""
    relay = RelaySummary(relay_id, relay_id, "0", "idle", 0, 0.0, "")
    lease = Lease(instance_id, address, "0", 0.0, 1, 0, relays=(relay,))
    store = aioredis.from_url(redis_url)
    try:
        await store.set(PREFIX + "instance:" + instance_id, lease.dump(), px=60_000)
        await store.sadd(MEMBERS, instance_id)
    finally:
        await store.aclose()


async def test_a_home_breaking_off_or_unreachable_gives_the_errors_of_a_lost_relay(
    tmp_path: Path,
) -> None:
    async with (
        two_instances(tmp_path) as (redis, _, b),
        breaking_home() as home,
        aiohttp.ClientSession(headers=ACCEPT) as http,
    ):
        await announce(redis.url, "broken", home, "rb")
        await announce(redis.url, "ghost", f"http://127.0.0.1:{free_port()}", "rg")
        async with asyncio.timeout(15):
            await b.wait_for(lambda: sees_relay(b, "rb") and sees_relay(b, "rg"))
            async with http.post(b.url + "/api/mcp/id/rb", data=RAW_CALL) as resp:
                assert resp.status == 200
                body = await resp.read()
            assert body.startswith(PARTIAL + b"\nevent: infero-discarded\n\n")
            error = json.loads(body.split(b"data: ")[-1])
            assert error["id"] == 7
            assert error["error"]["data"] == {"mcp": "MCP_PROVIDER_UNAVAILABLE"}
            async with http.post(b.url + "/api/mcp/id/rg", data=RAW_CALL) as resp:
                assert resp.status == 503
                assert resp.headers["Retry-After"] == "5"
                answer = await resp.json()
            assert answer["id"] == 7
            assert answer["error"]["data"] == {"mcp": "MCP_PROVIDER_UNAVAILABLE"}


async def test_relay_ids_are_leased_on_a_redis_cluster_too(tmp_path: Path) -> None:
    async with (
        redis_cluster(tmp_path) as redis_addr,
        instance(redis_addr, "A") as a,
        instance(redis_addr, "B") as b,
        relay_at(a, "r1", instance="n1") as first,
        aiohttp.ClientSession(headers=ACCEPT) as http,
    ):
        assert isinstance(first.answer, lp.Welcome)
        async with relay_at(b, "r1", instance="n2") as second:
            assert isinstance(second.answer, lp.Refused)
        async with asyncio.timeout(15):
            await b.wait_for(lambda: sees_relay(b, "r1"))
            call = asyncio.create_task(http.post(b.url + "/api/mcp/id/r1", data=RAW_CALL))
            incoming = await first.next_request()
            await first.reply(incoming.id, b'{"jsonrpc":"2.0","id":7,"result":{}}')
            resp = await call
            assert resp.status == 200
            resp.release()


async def test_an_instance_shutting_down_releases_its_relay_ids(tmp_path: Path) -> None:
    async with redis_server(tmp_path) as redis, contextlib.AsyncExitStack() as relays:
        async with instance(redis.url, "A") as a:
            await relays.enter_async_context(relay_at(a, "r1"))
            await relays.enter_async_context(relay_at(a, "r2"))
            store = aioredis.from_url(redis.url)
            assert await store.exists(RELAY_PREFIX + "r1", RELAY_PREFIX + "r2") == 2
        try:
            assert await store.exists(RELAY_PREFIX + "r1", RELAY_PREFIX + "r2") == 0
        finally:
            await store.aclose()


async def test_a_relay_that_moved_is_listed_once_where_it_is_linked_now(tmp_path: Path) -> None:
    async with two_instances(tmp_path) as (redis, a, b), aiohttp.ClientSession() as http:
        # The relay's old home died a moment ago: its lease still lists the relay.
        await announce(redis.url, "old", f"http://127.0.0.1:{free_port()}", "r1")
        async with asyncio.timeout(15):
            await a.wait_for(lambda: federated(a).membership.peers.get("old") is not None)
            await b.wait_for(lambda: federated(b).membership.peers.get("old") is not None)
            async with relay_at(b, "r1"):
                await a.wait_for(lambda: getattr(a.relay("r1"), "instance", "") == "B")
                for server in (a, b):
                    async with http.get(server.url + "/api/state") as resp:
                        clients = (await resp.json())["mcp"]["clients"]
                    assert [(c["id"], c["instance"]) for c in clients] == [("r1", "B")]
                remote = federated(a).relays.remote("r1")
                assert remote is not None
                assert remote.instance == "B"


async def test_one_id_taken_twice_while_redis_was_down_is_kept_by_one_instance(
    tmp_path: Path,
) -> None:
    async with two_instances(tmp_path) as (redis, a, b):
        await redis.stop()
        async with asyncio.timeout(15):
            await a.wait_for(lambda: federated(a).membership.degraded)
            await b.wait_for(lambda: federated(b).membership.degraded)
        async with (
            relay_at(a, "r1", instance="n1") as first,
            relay_at(b, "r1", instance="n2") as second,
        ):
            assert isinstance(first.answer, lp.Welcome)
            assert isinstance(second.answer, lp.Welcome)  # each instance checked only its own
            await redis.start()  # empty: the first instance to renew keeps the id
            async with asyncio.timeout(15):
                closed = [asyncio.ensure_future(r.closed.wait()) for r in (first, second)]
                done, pending = await asyncio.wait(closed, return_when=asyncio.FIRST_COMPLETED)
                for waiter in pending:
                    waiter.cancel()
            loser = first if closed[0] in done else second
            keeper, home = (second, b) if loser is first else (first, a)
            assert len(done) == 1
            assert not keeper.closed.is_set()
            await home.wait_for(lambda: home.relay("r1") is not None)
