"""An event stream that breaks mid-event: the client gets every complete event, then the
error event, never a fragment before it; a clean stream arrives byte for byte however its
chunks split its events (docs/errors.md)."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest

from infero.protocol import link as lp
from infero.server.openai_api import HELD_LIMIT
from support.connector import scripted_connector
from support.server import running_server

CHAT = "/api/v1/chat/completions"
SSE = [("Content-Type", "text/event-stream")]
MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def _event(content: str, end: str) -> bytes:
    data = (
        '{"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
        f'"choices":[{{"index":0,"delta":{{"content":"{content}"}},"finish_reason":null}}]}}'
    )
    return f"data: {data}{end}{end}".encode()


@pytest.mark.parametrize(
    ("end", "cut", "together", "complete"),
    [
        ("\n", 30, True, 2),  # in the middle of the JSON, in the frame of the second event
        ("\n", -1, False, 2),  # after the data line's own line end: half the blank line
        ("\r\n", -2, True, 2),
        ("\r", -1, False, 2),
        ("\r\n", -1, True, 3),  # CRLF then CR: a blank line already, the event is complete
    ],
)
@pytest.mark.parametrize("breaks", ["error_end", "link_closed"])
async def test_a_stream_cut_mid_event_gives_the_sdk_its_complete_chunks_then_an_api_error(
    end: str, cut: int, together: bool, complete: int, breaks: str
) -> None:
    events = [_event(content, end) for content in ("Hel", "lo", "!")]
    sent = events[0] + events[1] + events[2][:cut]
    async with (
        running_server() as srv,
        scripted_connector(srv.url) as conn,
        openai.AsyncOpenAI(base_url=srv.url + "/api/v1", api_key="k", max_retries=0) as client,
    ):
        async with asyncio.timeout(5):
            call = asyncio.create_task(
                client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            )
            incoming = await conn.next_request()
            await conn.head(incoming.id, 200, SSE)
            for part in [sent] if together else [events[0], events[1], events[2][:cut]]:
                await conn.body(incoming.id, part)
            if breaks == "error_end":
                await conn.end(incoming.id, error=lp.LinkError(code="backend_error", message="cut"))
            else:
                await conn.close()
            chunks = aiter(await call)
            for content in ["Hel", "lo", "!"][:complete]:
                assert (await anext(chunks)).choices[0].delta.content == content
            with pytest.raises(openai.APIError) as failed:
                await anext(chunks)
    code = "backend_error" if breaks == "error_end" else "link_lost"
    assert failed.value.message.startswith(f"Upstream failure ({code})")
    assert isinstance(failed.value.body, dict)
    assert failed.value.body["code"] == "upstream_error"


@pytest.mark.parametrize("end_apart", [True, False])
async def test_a_clean_stream_split_anywhere_arrives_byte_for_byte(end_apart: bool) -> None:
    """Events cut across chunks (also inside a blank line, with each kind of line end), a last
    event without its blank line: the client reads each event once it is complete, and the
    whole body exactly as the backend sent it. The end comes once the server took the rest of
    the last event, or with it. Credit (granted per half window taken) shows what the server
    took."""
    pieces = [
        (b"data: 1\n\nda", b"data: 1\n\n"),
        (b"ta: 2\n", b""),
        (b"\ndata: 3\r\n\r", b"data: 2\n\n"),
        (
            b"\n: note\r\rid: 4\rdata: 4\r\r" + b"x" * 300_000,
            b"data: 3\r\n\r\n: note\r\rid: 4\rdata: 4\r\r",
        ),
        (b"\r\rdata: [DONE]\n\n", b"x" * 300_000 + b"\r\rdata: [DONE]\n\n"),
    ]
    last = (b"data: la" + b"z" * 250_000, b"st" + b"y" * 530_000)
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
            await conn.head(incoming.id, 200, SSE)
            resp = await call
            received = b""
            for piece, completed in pieces:
                await conn.body(incoming.id, piece)
                if completed:
                    assert await resp.content.readexactly(len(completed)) == completed
                    received += completed
            for piece in last:
                incoming.credited.clear()
                await conn.body(incoming.id, piece)
                if end_apart or piece is last[0]:
                    await incoming.credited.wait()
            await conn.end(incoming.id)
            received += await resp.content.read()
            resp.release()
    assert received == b"".join(piece for piece, _ in pieces) + b"".join(last)


async def test_an_event_longer_than_the_held_limit_is_written_as_it_comes() -> None:
    event = b"data: " + b"x" * (HELD_LIMIT + 100)  # no blank line yet, over the window too
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
            await conn.head(incoming.id, 200, SSE)
            resp = await call
            await conn.body_with_credit(incoming.id, event)
            received = await resp.content.readexactly(HELD_LIMIT)
            await conn.body(incoming.id, b"\n\n")
            await conn.end(incoming.id)
            received += await resp.content.read()
            resp.release()
    assert received == event + b"\n\n"
