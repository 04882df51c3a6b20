"""The connector against a scripted link server and a fake backend (real loopback sockets)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from infero.protocol import link
from support.linkfakes import CHAT, ServerFactory, Stack


@pytest.fixture
async def stack(aiohttp_server: ServerFactory) -> AsyncIterator[Stack]:
    s = Stack(aiohttp_server)
    yield s
    await s.close()


async def test_hello_names_the_connector_its_models_and_capacity(stack: Stack) -> None:
    await stack.start(max_concurrency=3)
    hello = await stack.connected()
    assert (hello.id, hello.name, hello.client_key) == ("w1", "alpha", "ck")
    assert hello.kind == "llm"
    assert hello.models == ["m1"]
    assert hello.max_concurrency == 3
    assert hello.status == "ready"
    assert hello.backend == "openai"
    assert hello.protocol == link.PROTOCOL_VERSION


async def test_request_is_relayed_with_head_body_and_end_with_usage(stack: Stack) -> None:
    await stack.start()
    await stack.connected()
    await stack.server.request(
        1, "/chat/completions", CHAT, headers=[("Content-Type", "application/json")]
    )
    async with asyncio.timeout(5):
        head = await stack.server.next_frame(link.Head)
        end = await stack.server.next_frame(link.End)
    assert head.status == 200
    names = {k.lower() for k, _ in head.headers}
    assert "x-backend" in names
    assert "content-length" not in names
    assert "transfer-encoding" not in names
    body = bytes(stack.server.bodies[1])
    assert body.startswith(b'data: {"n":1}\n\n')
    assert body.endswith(b"data: [DONE]\n\n")
    assert end.error is None
    assert end.usage == link.Usage(prompt_tokens=7, completion_tokens=3)
    assert json.loads(stack.backend.bodies[0]) == {"model": "m1", "stream": True}


async def test_client_authorization_is_never_forwarded_and_backend_key_is_sent(
    stack: Stack,
) -> None:
    await stack.start(completion_api_key="backend-secret")
    await stack.connected()
    await stack.server.request(
        1,
        "/chat/completions",
        CHAT,
        headers=[("Authorization", "Bearer client-key"), ("Content-Type", "application/json")],
    )
    async with asyncio.timeout(5):
        await stack.server.next_frame(link.End)
    sent = stack.backend.headers[0]
    assert sent["Authorization"] == "Bearer backend-secret"
    assert sent["Accept-Encoding"] == "identity"
    assert stack.backend.discovery_auth[0] == "Bearer backend-secret"


async def test_without_backend_key_no_authorization_reaches_the_backend(stack: Stack) -> None:
    await stack.start()
    await stack.connected()
    await stack.server.request(
        1, "/chat/completions", CHAT, headers=[("Authorization", "Bearer c")]
    )
    async with asyncio.timeout(5):
        await stack.server.next_frame(link.End)
    assert "Authorization" not in stack.backend.headers[0]


async def test_unreachable_backend_ends_with_backend_unreachable_and_no_head(stack: Stack) -> None:
    await stack.start(models="m1", completion_base_url="http://127.0.0.1:9/v1")
    await stack.connected()
    await stack.server.request(1, "/chat/completions", CHAT)
    async with asyncio.timeout(5):
        frame = await stack.server.next_frame(link.Head, link.End)
    assert isinstance(frame, link.End)
    assert frame.error is not None
    assert frame.error.code == "backend_unreachable"


async def test_no_more_than_the_window_is_sent_before_credit(stack: Stack) -> None:
    stack.server.window = 1000
    stack.backend.answer = bytes(range(256)) * 40  # 10240 bytes
    await stack.start()
    await stack.connected()
    await stack.server.request(1, "/big", b"x")
    async with asyncio.timeout(5):
        await stack.server.next_frame(link.Head)
        await stack.server.wait_body(1, 1000)
        # The writer is FIFO: once the pong to this ping arrives, nothing sent before it is
        # still in flight, so the count below is final until we grant credit.
        await stack.server.send(link.Ping(ts=1.0))
        await stack.server.next_frame(link.Pong)
    assert len(stack.server.bodies[1]) == 1000
    async with asyncio.timeout(5):
        await stack.server.send(link.Credit(id=1, bytes=20000))
        end = await stack.server.next_frame(link.End)
    assert end.error is None
    assert bytes(stack.server.bodies[1]) == stack.backend.answer


async def test_cancel_aborts_the_backend_call(stack: Stack) -> None:
    stack.backend.hold = True
    await stack.start()
    await stack.connected()
    await stack.server.request(1, "/chat/completions", CHAT)
    async with asyncio.timeout(5):
        await stack.server.next_frame(link.Head)
        await stack.backend.entered.wait()
        await stack.server.send(link.Cancel(id=1))
        await stack.backend.cancelled.wait()
        end = await stack.server.next_frame(link.End)
    assert end.error is not None
    assert end.error.code == "cancelled"


async def test_request_over_max_concurrency_is_refused_as_busy(stack: Stack) -> None:
    stack.backend.hold = True
    await stack.start(max_concurrency=1)
    await stack.connected()
    await stack.server.request(1, "/chat/completions", CHAT)
    async with asyncio.timeout(5):
        await stack.backend.entered.wait()
        await stack.server.request(2, "/chat/completions", CHAT)
        end = await stack.server.next_frame(link.End)
    assert end.id == 2
    assert end.error is not None
    assert end.error.code == "busy"
    stack.backend.release.set()
    async with asyncio.timeout(5):
        end = await stack.server.next_frame(link.End)
    assert (end.id, end.error) == (1, None)


async def test_large_request_and_response_bodies_pass(stack: Stack) -> None:
    await stack.start()
    await stack.connected()
    payload = bytes(range(256)) * (5 * 4096)  # 5 MiB
    await stack.server.request(1, "/big", payload)
    async with asyncio.timeout(5):
        head = await stack.server.next_frame(link.Head, link.End)
        assert isinstance(head, link.Head), head
        received = b""
        while len(received) < len(payload):
            await stack.server.wait_body(1, len(received) + 1)
            received = bytes(stack.server.bodies[1])
            await stack.server.send(link.Credit(id=1, bytes=len(payload)))
        end = await stack.server.next_frame(link.End)
    assert end.error is None
    assert received == payload
    assert stack.backend.bodies[0] == payload


async def test_malformed_requests_end_as_invalid_and_the_link_keeps_serving(stack: Stack) -> None:
    await stack.start()
    await stack.connected()
    await stack.server.request(1, "@evil.example/x", CHAT)
    await stack.server.request(2, "/chat/completions", CHAT, headers=[("X-A", "b\r\nX-Evil: 1")])
    async with asyncio.timeout(5):
        first = await stack.server.next_frame(link.End)
        second = await stack.server.next_frame(link.End)
    assert first.error is not None
    assert first.error.code == "invalid"
    assert second.error is not None
    assert second.error.code == "invalid"
    assert stack.backend.headers == []
    await stack.server.request(3, "/chat/completions", CHAT)
    async with asyncio.timeout(5):
        end = await stack.server.next_frame(link.End)
    assert (end.id, end.error) == (3, None)


async def test_a_body_longer_than_announced_is_refused(stack: Stack) -> None:
    await stack.start()
    await stack.connected()
    await stack.server.send(link.Request(id=1, path="/chat/completions", body_len=2))
    assert stack.server.ws is not None
    await stack.server.ws.send_bytes(link.pack_body(link.REQUEST_BODY, 1, b"abc"))
    async with asyncio.timeout(5):
        end = await stack.server.next_frame(link.End)
    assert end.error is not None
    assert end.error.code == "invalid"
    assert stack.backend.bodies == []


async def test_a_stream_without_credit_does_not_stall_another_stream(stack: Stack) -> None:
    stack.server.window = 1000
    stack.backend.answer = b"x" * 50_000
    await stack.start()
    await stack.connected()
    await stack.server.request(1, "/big", b"y")
    async with asyncio.timeout(5):
        await stack.server.wait_body(1, 1000)
        await stack.server.request(2, "/chat/completions", CHAT)
        end = await stack.server.next_frame(link.End)
    assert (end.id, end.error) == (2, None)
    assert len(stack.server.bodies[1]) == 1000


async def test_cookies_set_by_the_backend_are_relayed_but_never_replayed(stack: Stack) -> None:
    await stack.start(backend_host="localhost")  # a host name: cookie jars ignore bare IPs
    await stack.connected()
    await stack.server.request(1, "/chat/completions", CHAT)
    async with asyncio.timeout(5):
        head = await stack.server.next_frame(link.Head)
        await stack.server.next_frame(link.End)
        await stack.server.request(2, "/chat/completions", CHAT)
        await stack.server.next_frame(link.End)
    assert any(k.lower() == "set-cookie" for k, _ in head.headers)
    assert "Cookie" not in stack.backend.headers[1]


async def test_a_backend_silent_for_request_timeout_ends_the_stream_with_timeout(
    stack: Stack,
) -> None:
    stack.backend.hold = True
    # 1 s, not less: a full garbage collection of the test process can pause the loop for
    # a few hundred ms on a busy machine, and the head itself must arrive within the timeout.
    await stack.start(request_timeout=1.0)
    await stack.connected()
    await stack.server.request(1, "/chat/completions", CHAT)
    async with asyncio.timeout(5):
        head = await stack.server.next_frame(link.Head)
        end = await stack.server.next_frame(link.End)
        await stack.backend.cancelled.wait()
    assert head.status == 200
    assert bytes(stack.server.bodies[1]) == b'data: {"n":1}\n\n'
    assert end.error == link.LinkError(code="timeout", message="backend stopped sending")
