"""`infero demo`: the whole stack on loopback answers the openai SDK; clear errors."""

from __future__ import annotations

import asyncio
import socket

import openai
import pytest

from infero.demo.backend import BANNER
from infero.demo.stack import DemoError, demo_stack, instructions


async def test_demo_stack_streams_a_chat_answer_to_the_openai_sdk() -> None:
    async with demo_stack(port=0, token_delay=0) as stack, asyncio.timeout(10):
        client = openai.AsyncOpenAI(base_url=stack.url + "/api/v1", api_key=stack.api_key)
        try:
            stream = await client.chat.completions.create(
                model="demo",
                messages=[{"role": "user", "content": "Hello"}],
                stream=True,
                max_tokens=4,
            )
            parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        finally:
            await client.close()
        text = instructions(stack)
    assert len(parts) > 1
    assert "".join(parts) == " ".join(BANNER.split()[:4])
    assert f"curl -N {stack.url}/api/v1/chat/completions" in text
    assert f'api_key="{stack.api_key}"' in text
    assert "DEMO backend" in text


async def test_demo_refuses_a_wrong_api_key() -> None:
    async with demo_stack(port=0) as stack, asyncio.timeout(10):
        client = openai.AsyncOpenAI(base_url=stack.url + "/api/v1", api_key="wrong")
        try:
            with pytest.raises(openai.AuthenticationError):
                await client.models.list()
        finally:
            await client.close()


async def test_a_taken_port_is_one_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(DemoError, match=f"cannot listen on 127.0.0.1:{port} for the server"):
            async with demo_stack(port=port):
                pass
