"""The console's HTTP client against httpx mock transports (no Textual involved)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from infero.protocol.delta import Changes, StateDelta
from infero.protocol.state import StateSnapshot, WorkerInfo
from infero_tui.client import (
    AuthRefused,
    ClientError,
    Credentials,
    FleetClient,
    LocalClient,
    NotFound,
    StreamLost,
)

DATA = Path(__file__).resolve().parents[1] / "data"


SNAPSHOT = (DATA / "fleet.json").read_text(encoding="utf-8")
COMPACT = json.dumps(json.loads(SNAPSHOT))


def error(status: int, message: str) -> httpx.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": None}}
    return httpx.Response(status, json=body)


async def test_stream_yields_snapshots_skipping_ids_comments_and_bad_events() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = (
            f": keepalive\n\nid: 1\ndata: {COMPACT}\n\n"
            f"data: {{not json\n\nid: 2\ndata: {COMPACT}\n\n"
        )
        return httpx.Response(200, text=body, headers={"Content-Type": "text/event-stream"})

    client = FleetClient(
        "http://infero.test", Credentials(api_key="k1"), transport=httpx.MockTransport(handler)
    )
    got = []

    async def read_all() -> None:
        async for snapshot in client.snapshots():
            got.append(snapshot)  # noqa: PERF401  (the stream ends by raising)

    async with client:
        with pytest.raises(StreamLost):
            await read_all()
    assert [s.workers[0].name for s in got] == ["alpha", "alpha"]
    assert seen[0].url.path == "/api/state/stream"
    assert seen[0].url.params["mode"] == "delta"
    assert seen[0].url.params["gone"] == "list"
    assert seen[0].headers["Authorization"] == "Bearer k1"


async def test_deltas_apply_to_the_document_and_a_reconnect_resumes_from_the_last_id() -> None:
    seen: list[httpx.Request] = []
    first = StateSnapshot.model_validate_json(COMPACT)
    worker = first.workers[0]
    draining = worker.model_copy(update={"status": "draining", "draining": True})
    delta = StateDelta(
        now=first.server.now + timedelta(seconds=2),
        workers=Changes[WorkerInfo](upsert=[draining]),
    )
    body = (
        f"event: snapshot\nid: e-1\ndata: {COMPACT}\n\n"
        f"event: delta\nid: e-2\ndata: {delta.model_dump_json()}\n\n"
    )

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        text = body if len(seen) == 1 else ""
        return httpx.Response(200, text=text, headers={"Content-Type": "text/event-stream"})

    client = FleetClient("http://infero.test", transport=httpx.MockTransport(handler))
    got: list[StateSnapshot] = []

    async def read_all() -> None:
        async for snapshot in client.snapshots():
            got.append(snapshot)  # noqa: PERF401  (the stream ends by raising)

    async with client:
        for _ in range(2):
            with pytest.raises(StreamLost):
                await read_all()
    assert [(s.workers[0].status, s.server.now) for s in got] == [
        ("busy", first.server.now),
        ("draining", delta.now),
    ]
    assert "Last-Event-ID" not in seen[0].headers
    assert seen[1].headers["Last-Event-ID"] == "e-2"


async def test_stream_401_raises_auth_refused_with_the_server_message() -> None:
    transport = httpx.MockTransport(lambda r: error(401, "invalid API key"))
    async with FleetClient("http://infero.test", transport=transport) as client:
        with pytest.raises(AuthRefused, match="invalid API key") as info:
            async for _ in client.snapshots():
                pass
    assert info.value.status == 401


async def test_unreachable_server_is_a_lost_stream() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with FleetClient("http://infero.test", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(StreamLost):
            async for _ in client.snapshots():
                pass
        with pytest.raises(ClientError, match="unreachable"):
            await client.state()


async def test_control_posts_to_the_worker_route_with_the_operator_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"id": "w/1", "action": "drain", "accepted": True})

    creds = Credentials(api_key="reader", operator_key="boss")
    async with FleetClient(
        "http://infero.test/", creds, transport=httpx.MockTransport(handler)
    ) as client:
        result = await client.control("w/1", "drain")
    assert result.accepted
    assert seen[0].method == "POST"
    assert seen[0].url.raw_path == b"/api/workers/w%2F1/drain"
    assert seen[0].headers["Authorization"] == "Bearer boss"


@pytest.mark.parametrize(
    ("status", "exc"), [(401, AuthRefused), (403, AuthRefused), (404, NotFound), (500, ClientError)]
)
async def test_control_errors_map_to_exceptions(status: int, exc: type[Exception]) -> None:
    transport = httpx.MockTransport(lambda r: error(status, "nope"))
    async with FleetClient("http://infero.test", transport=transport) as client:
        with pytest.raises(exc, match="drain: nope"):
            await client.control("w1", "drain")


async def test_state_refuses_a_malformed_document() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(200, json={"server": {}}))
    async with FleetClient("http://infero.test", transport=transport) as client:
        with pytest.raises(ClientError, match="unexpected answer"):
            await client.state()


async def test_local_control_sends_the_token_from_the_file(tmp_path: Path) -> None:
    token = tmp_path / "worker.token"
    token.write_text("abc123\n", encoding="utf-8")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    async with LocalClient(
        "127.0.0.1:4555", token, transport=httpx.MockTransport(handler)
    ) as client:
        await client.control("undrain")
    assert seen[0].url == "http://127.0.0.1:4555/control/undrain"
    assert seen[0].headers["X-Auth-Token"] == "abc123"


async def test_local_control_without_a_token_file_sends_nothing(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request expected")

    client = LocalClient(
        "127.0.0.1:4555", tmp_path / "missing", transport=httpx.MockTransport(handler)
    )
    async with client:
        with pytest.raises(AuthRefused, match="no control token"):
            await client.control("drain")


async def test_local_status_parses_the_status_document() -> None:
    body = (DATA / "local_status.json").read_text(encoding="utf-8")
    transport = httpx.MockTransport(lambda r: httpx.Response(200, text=body))
    async with LocalClient("127.0.0.1:4555", Path("x"), transport=transport) as client:
        status = await client.status()
    assert status.state == "connected_busy"
    assert status.current_jobs == 1
