"""MCP across two server instances on a real Redis (docs/scale-out.md, "MCP relays").

A real `infero mcp` process is linked to instance A and fronts a real FastMCP server; the
official SDK client talks through a load balancer that sends each HTTP request to A and B in
turn, so one Streamable HTTP session (its POSTs, its GET stream and its DELETE) alternates
instances.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import mcp_types as types
from aiohttp import web
from redis import asyncio as aioredis

from infero.protocol.delta import EVENT_DELTA, StateDelta
from infero.protocol.state import StateSnapshot
from infero.server.mcp.fleet import RELAY_PREFIX
from support.fleet import federated, instance, redis_server, server_process
from support.server import RunningServer
from support.statestream import StateView

CLIENT_KEY = "relay-secret"
API_KEY = "client-key-1"
RELAY = "fleet-relay"
STARTUP = 30.0
"""Seconds for a fresh `infero mcp` process to import, link and find its provider ready."""

HOP = frozenset({"host", "connection", "keep-alive", "transfer-encoding", "content-length"})


@dataclass
class RoundRobin:
    """A load balancer with no affinity: each request goes to the next instance, raw.

    Each HTTP method has its own turn, starting with the last backend (B), so the session's
    GET stream and its DELETE are forwarded by B while its POSTs alternate.
    """

    backends: list[str]
    http: aiohttp.ClientSession
    seen: list[tuple[str, str]] = field(default_factory=list)
    """(method, backend) of every request, in order."""
    get_open: asyncio.Event = field(default_factory=asyncio.Event)
    """A GET stream's head was passed to the client."""
    get_bytes: bytearray = field(default_factory=bytearray)
    """What GET streams carried."""

    def __post_init__(self) -> None:
        self._turns: dict[str, itertools.cycle[str]] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        turn = self._turns.setdefault(request.method, itertools.cycle(self.backends[::-1]))
        backend = next(turn)
        self.seen.append((request.method, backend))
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP]
        body = await request.read()
        async with self.http.request(
            request.method, backend + request.rel_url.raw_path_qs, headers=headers, data=body
        ) as answer:
            response = web.StreamResponse(status=answer.status)
            for key, value in answer.headers.items():
                if key.lower() not in HOP:
                    response.headers.add(key, value)
            await response.prepare(request)
            if request.method == "GET":
                self.get_open.set()
            async for chunk in answer.content.iter_any():
                if request.method == "GET":
                    self.get_bytes += chunk
                await response.write(chunk)
            await response.write_eof()
            return response


@asynccontextmanager
async def balancer(*servers: RunningServer) -> AsyncIterator[tuple[str, RoundRobin]]:
    """Serve a `RoundRobin` over `servers` on loopback; yields its URL."""
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        robin = RoundRobin([s.url for s in servers], http)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", robin.handle)
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            yield f"http://127.0.0.1:{runner.addresses[0][1]}", robin
        finally:
            await runner.cleanup()


@asynccontextmanager
async def relay_process(
    server: RunningServer | str, provider_url: str, *, complaints: bool = False, **extra: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A real `infero mcp` process linked to `server` (or a SERVER_URL; killed if still running
    at exit); `complaints`: its stderr is a pipe for the test to read."""
    url = server if isinstance(server, str) else link_url(server.url)
    env = {
        **os.environ,
        "SERVER_URL": url,
        "CLIENT_KEY": CLIENT_KEY,
        "CLIENT_ID": RELAY,
        "PROVIDER_URL": provider_url,
        **extra,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from infero.cli import mcp_main; mcp_main()",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE if complaints else asyncio.subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


def link_url(base: str) -> str:
    """The relays' WebSocket URL of a server at `base`."""
    return base.replace("http", "ws", 1) + "/api/mcp/connect"


def status_at(server: RunningServer, relay_id: str = RELAY) -> tuple[str, str] | None:
    """(status, instance) of the relay in the instance's `/api/state`."""
    row = server.relay(relay_id)
    return (row.status, row.instance) if row is not None else None


async def test_one_session_alternates_instances_to_a_relay_linked_to_a(
    tmp_path: Path, stateful_url: str, connect: Any
) -> None:
    changed = asyncio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    options = {"client_key": CLIENT_KEY, "api_key": API_KEY}
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A", **options) as a,
        instance(redis.url, "B", **options) as b,
        relay_process(a, stateful_url),
        balancer(a, b) as (lb_url, robin),
    ):
        async with asyncio.timeout(STARTUP):
            await b.shared.changes.wait_for(lambda: status_at(b) == ("idle", "A"))
        url = f"{lb_url}/api/mcp/id/{RELAY}"
        async with asyncio.timeout(60):
            async with connect(url, message_handler=on_message) as client:
                await client.call_tool("remember", {"value": "kept across instances"})
                recalled = await client.call_tool("recall", {})
                assert recalled.content[0].text == "kept across instances"
                await robin.get_open.wait()
                await client.call_tool("announce", {})
                await changed.wait()  # sent on the GET stream, which went through A or B
                assert a.snapshot().mcp.sessions[0].client_id == RELAY
            await a.wait_for(lambda: a.snapshot().mcp.sessions == [])
        assert {backend for m, backend in robin.seen if m == "POST"} == {a.url, b.url}
        assert ("GET", b.url) in robin.seen
        assert ("DELETE", b.url) in robin.seen
        assert b"notifications/tools/list_changed" in robin.get_bytes
        await b.wait_for(lambda: b.snapshot().mcp.sessions == [])  # ended at B too
        row = a.relay(RELAY)
        assert row is not None
        assert row.functions["tools/call"] >= 3


def sessions_of(snapshot: StateSnapshot) -> dict[str, tuple[str, str, int]]:
    """Session id -> (relay, instance, in flight) as a state document lists them."""
    return {s.id: (s.client_id, s.instance, s.inflight) for s in snapshot.mcp.sessions}


def tool_calls(snapshot: StateSnapshot) -> int:
    """The relay's `tools/call` count as a state document shows it."""
    row = next((c for c in snapshot.mcp.clients if c.id == RELAY), None)
    return row.functions.get("tools/call", 0) if row is not None else 0


async def test_sessions_and_method_counts_at_a_reach_b_s_state_and_stream_as_deltas(
    tmp_path: Path, stateful_url: str, connect: Any
) -> None:
    options = {"client_key": CLIENT_KEY, "api_key": API_KEY}
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A", **options) as a,
        instance(redis.url, "B", **options) as b,
        relay_process(a, stateful_url),
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http,
    ):
        async with asyncio.timeout(STARTUP):
            await b.shared.changes.wait_for(lambda: status_at(b) == ("idle", "A"))
        reads = federated(b).membership.whole_reads
        async with asyncio.timeout(60), http.get(b.url + "/api/state/stream") as resp:
            view = StateView(resp)
            await view.until(lambda s: status_at_view(s) == ("idle", "A"))
            seen = len(view.events)
            async with connect(f"{a.url}/api/mcp/id/{RELAY}") as client:  # straight to A
                await client.call_tool("remember", {"value": "x"})
                await client.call_tool("recall", {})
                [session] = a.snapshot().mcp.sessions
                assert session.instance == "A"
                listed = await view.until(
                    lambda s: session.id in sessions_of(s) and tool_calls(s) >= 2
                )
                assert sessions_of(listed)[session.id] == (RELAY, "A", 0)
                document = b.snapshot()  # the full document says the same
                assert sessions_of(document)[session.id] == (RELAY, "A", 0)
                assert tool_calls(document) >= 2
                row = b.relay(RELAY)
                assert row is not None
                assert row.sessions_unlisted == 0
                assert row.functions["initialize"] == 1
                async with http.get(b.url + "/metrics") as answer:
                    metrics = await answer.text()
                for gauge in ("infero_mcp_relays 1.0", "infero_mcp_sessions 1.0"):
                    assert gauge in metrics.splitlines(), "B's gauges count A's relay"
            ended = await view.until(lambda s: s.mcp.sessions == [])  # the SDK's DELETE at A
        events = view.events[seen:]
        assert all(e.name == EVENT_DELTA for e in events), "deltas only, no resync"
        deltas = [StateDelta.model_validate_json(e.data) for e in events]
        upserted = {key for d in deltas if d.mcp_sessions for key in _keys(d.mcp_sessions.upsert)}
        removed = {key for d in deltas if d.mcp_sessions for key in d.mcp_sessions.remove}
        assert upserted == removed == {f"{RELAY}/{session.id}"}
        assert ended.mcp.clients[0].instance == "A"
        assert federated(b).membership.whole_reads == reads, "carried by the change log"


def status_at_view(snapshot: StateSnapshot) -> tuple[str, str] | None:
    """(status, instance) of the relay in a state stream viewer's document."""
    row = next((c for c in snapshot.mcp.clients if c.id == RELAY), None)
    return (row.status, row.instance) if row is not None else None


def _keys(sessions: Any) -> list[str]:
    return [f"{s.client_id}/{s.id}" for s in sessions]


async def test_duplicate_ids_are_refused_across_instances_and_control_works_from_b(
    tmp_path: Path, stateful_url: str
) -> None:
    options = {"client_key": CLIENT_KEY, "api_key": API_KEY, "operator_key": "op"}
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A", **options) as a,
        instance(redis.url, "B", **options) as b,
        relay_process(a, stateful_url),
        aiohttp.ClientSession(headers={"Authorization": "Bearer op"}) as http,
    ):
        async with asyncio.timeout(STARTUP):
            await b.shared.changes.wait_for(lambda: status_at(b) == ("idle", "A"))
            assert status_at(a) == ("idle", "A")
            async with relay_process(b, stateful_url, complaints=True) as second:
                assert second.stderr is not None
                complaint = (await second.stderr.read()).decode()
                assert await second.wait() == 1
            assert "CLIENT_ID=fleet-relay is linked" in complaint, complaint
        async with asyncio.timeout(20):
            async with http.post(b.url + f"/api/mcp/relays/{RELAY}/drain") as resp:
                assert resp.status == 202
            await a.wait_for(lambda: status_at(a) == ("draining", "A"))
            await b.wait_for(lambda: status_at(b) == ("draining", "A"))
            async with http.post(b.url + f"/api/mcp/relays/{RELAY}/undrain") as resp:
                assert resp.status == 202
            await b.wait_for(lambda: status_at(b) == ("idle", "A"))


async def test_a_client_pinned_to_2026_07_28_works_across_instances(
    tmp_path: Path, stateful_url: str, connect: Any
) -> None:
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    options = {"client_key": CLIENT_KEY, "api_key": API_KEY}
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "A", **options) as a,
        instance(redis.url, "B", **options) as b,
        relay_process(a, stateful_url),
        balancer(a, b) as (lb_url, robin),
    ):
        async with asyncio.timeout(STARTUP):
            await b.shared.changes.wait_for(lambda: status_at(b) == ("idle", "A"))
        async with asyncio.timeout(60):
            async with connect(f"{lb_url}/api/mcp/id/{RELAY}", mode="2026-07-28") as client:
                assert client.protocol_version == "2026-07-28"
                counted = await client.call_tool(
                    "count_up", {"steps": 2}, progress_callback=on_progress
                )
                assert counted.content[0].text == "counted to 2"
                assert seen == [1, 2]
                resource = await client.read_resource("pref://theme")
                assert resource.contents[0].text == "dark"
        assert {backend for m, backend in robin.seen if m == "POST"} == {a.url, b.url}


async def test_a_relay_whose_home_is_killed_moves_to_b_and_keeps_its_id(
    tmp_path: Path, stateful_url: str, connect: Any
) -> None:
    env = {"CLIENT_KEY": CLIENT_KEY, "API_KEY": API_KEY}
    async with (
        redis_server(tmp_path) as redis,
        server_process(redis.url, "A", **env) as a,
        instance(redis.url, "B", client_key=CLIENT_KEY, api_key=API_KEY) as b,
    ):
        async with aiohttp.ClientSession() as http, asyncio.timeout(STARTUP):
            while True:  # the process needs a moment to listen
                try:
                    async with http.get(a.url + "/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)  # polling a port with a bound: no event to wait on
        urls = f"{link_url(a.url)},{link_url(b.url)}"
        async with relay_process(urls, stateful_url, RECONNECT="true"):
            async with asyncio.timeout(STARTUP):
                await b.shared.changes.wait_for(lambda: status_at(b) == ("idle", "A"))
            url = f"{b.url}/api/mcp/id/{RELAY}"
            async with asyncio.timeout(30), connect(url) as client:
                assert (await client.call_tool("recall", {})).content[0].text == ""
            store = aioredis.from_url(redis.url)
            try:
                held = await store.get(RELAY_PREFIX + RELAY)
                assert isinstance(held, bytes)
                assert held.startswith(b"A\n")
                a.proc.kill()  # the relay's home dies without releasing the relay's id
                await a.proc.wait()
                async with asyncio.timeout(STARTUP):  # the relay reconnects, B takes its id
                    await b.shared.changes.wait_for(lambda: status_at(b) == ("idle", "B"))
                # the same relay process (same nonce) holds its id, now at B
                assert await store.get(RELAY_PREFIX + RELAY) == b"B\n" + held.split(b"\n")[1]
            finally:
                await store.aclose()
            async with asyncio.timeout(30), connect(url) as client:
                color = await client.call_tool("favorite/color", {})
                assert color.content[0].text == "blue with a hint of green"
