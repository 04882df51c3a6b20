"""`infero demo`'s stack in one process on loopback: demo backend, server, one connector."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from infero.demo.backend import DemoConfig
from infero.demo.backend import create_app as create_backend
from infero.server.app import create_app as create_server
from infero.server.settings import ServerSettings
from infero.worker.runtime import Connector
from infero.worker.settings import WorkerSettings

HOST = "127.0.0.1"
READY_TIMEOUT = 15.0
"""Longest wait for the connector to register with the server."""


class DemoError(Exception):
    """The demo could not start (for example, the port is taken)."""


@dataclass(frozen=True, slots=True)
class DemoStack:
    """Where the running demo answers."""

    url: str
    """`http://127.0.0.1:<port>` of the server."""
    api_key: str
    """The generated client key for `/api/*`."""
    models: tuple[str, ...]
    connector: Connector


async def _listen(app: web.Application, port: int, what: str) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, HOST, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise DemoError(f"cannot listen on {HOST}:{port} for the {what}: {exc.strerror}") from None
    return runner, int(runner.addresses[0][1])


@asynccontextmanager
async def demo_stack(
    *, port: int = 8080, token_delay: float = 0.05, models: tuple[str, ...] = ("demo",)
) -> AsyncIterator[DemoStack]:
    """Start backend, server and connector; stop them all on exit."""
    api_key = "demo-" + secrets.token_urlsafe(18)
    client_key = secrets.token_urlsafe(24)
    backend, backend_port = await _listen(
        create_backend(DemoConfig(models=models, token_delay=token_delay)), 0, "demo backend"
    )
    try:
        server_settings = ServerSettings(
            host=HOST, port=port, api_key=api_key, client_key=client_key
        )
        server, server_port = await _listen(create_server(server_settings), port, "server")
        try:
            connector = Connector(
                WorkerSettings(
                    server_url=f"ws://{HOST}:{server_port}/api/workers/connect",
                    client_key=client_key,
                    client_id="demo-connector",
                    client_name="demo connector",
                    completion_base_url=f"http://{HOST}:{backend_port}/v1",
                    api_style="openai",
                    reconnect=True,
                    drain_timeout=5.0,
                )
            )
            task = asyncio.create_task(connector.run(), name="demo-connector")
            try:
                await _wait_ready(connector, task)
                yield DemoStack(f"http://{HOST}:{server_port}", api_key, models, connector)
            finally:
                # Drain: streams in flight end with [DONE] (within DRAIN_TIMEOUT, or until
                # `connector.request_stop()`), then the connector leaves.
                connector.shutdown(by="infero demo stopping")
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            await server.cleanup()
    finally:
        await backend.cleanup()


async def _wait_ready(connector: Connector, task: asyncio.Task[int]) -> None:
    ready = asyncio.create_task(connector.connected.wait())
    try:
        done, _ = await asyncio.wait(
            {ready, task}, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        ready.cancel()
    if ready not in done:
        raise DemoError("the demo connector did not register with the demo server")


def instructions(stack: DemoStack) -> str:
    """What `infero demo` prints: where things are and two ways to try them."""
    model = stack.models[0]
    body = f'{{"model":"{model}","stream":true,"messages":[{{"role":"user","content":"Hello"}}]}}'
    messages = '[{"role": "user", "content": "Hello"}]'
    return f"""\
infero demo: server, connector and a DEMO backend on this machine (loopback only).
The answers come from infero's demo backend, not from a real model.

  API:        {stack.url}/api/v1
  Dashboard:  {stack.url}/state   (paste the API key when asked)
  API key:    {stack.api_key}
  Models:     {", ".join(stack.models)}

Stream an answer with curl:

  curl -N {stack.url}/api/v1/chat/completions \\
    -H "Authorization: Bearer {stack.api_key}" \\
    -H "Content-Type: application/json" \\
    -d '{body}'

Or with the openai Python SDK (pip install openai):

python - <<'PY'
from openai import OpenAI
client = OpenAI(base_url="{stack.url}/api/v1", api_key="{stack.api_key}")
stream = client.chat.completions.create(model="{model}", stream=True, messages={messages})
for chunk in stream:
    print(chunk.choices[0].delta.content or "", end="", flush=True)
PY

Press Ctrl-C to stop.
"""
