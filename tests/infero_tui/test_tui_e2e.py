"""End to end: the real server and connector, the console (Textual pilot) steering them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from textual.pilot import Pilot

from infero.protocol.state import WorkerInfo
from infero.worker.runtime import Connector
from infero.worker.settings import WorkerSettings
from infero.worker.statusport import create_status_app
from infero_tui.app import InferoConsole, make_app
from infero_tui.client import Credentials, FleetClient, LocalClient
from infero_tui.config import ConsoleConfig
from infero_tui.local import LocalContext
from infero_tui.screens.confirm import ConfirmScreen
from infero_tui.screens.main import MainScreen
from infero_tui.widgets.local_pane import LocalPane
from support.linkfakes import FakeBackend
from support.server import RunningServer, running_server

CHAT = "/api/v1/chat/completions"


@dataclass
class Fleet:
    server: RunningServer
    backend: FakeBackend
    connector: Connector
    task: asyncio.Task[int]
    http: httpx.AsyncClient

    def chat(self, *, hold: bool) -> Any:
        body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        if hold:
            body["hold"] = True
        return self.http.post(self.server.url + CHAT, json=body)


@asynccontextmanager
async def fleet_of_one() -> AsyncIterator[Fleet]:
    backend = FakeBackend(models=["m1"])
    runner = web.AppRunner(backend.app(), handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    backend_url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        async with (
            running_server(client_key="ck", api_key="ak", operator_key="ok", queue_max=0) as server,
            # A held chat gets no byte until the test releases it, which may be after a whole
            # console session on a loaded machine: the read timeout must outlast that.
            httpx.AsyncClient(headers={"Authorization": "Bearer ak"}, timeout=30) as http,
        ):
            settings = WorkerSettings.model_validate(
                {
                    "server_url": server.ws_url,
                    "client_key": "ck",
                    "client_id": "w-e2e",
                    "client_name": "e2e",
                    "completion_base_url": backend_url,
                    "max_concurrency": 2,
                }
            )
            connector = Connector(settings)
            task = asyncio.create_task(connector.run())
            try:
                async with asyncio.timeout(5):
                    await connector.connected.wait()
                    await server.wait_for(lambda: server.status("w-e2e") not in (None, "gone"))
                yield Fleet(server, backend, connector, task, http)
            finally:
                backend.release.set()
                connector.request_stop()
                async with asyncio.timeout(5):
                    await task
    finally:
        await runner.cleanup()


async def until(pilot: Pilot[Any], condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await pilot.pause()


def worker_in(app: InferoConsole, worker_id: str) -> WorkerInfo | None:
    screen = app.screen
    if not isinstance(screen, MainScreen):
        return None
    return screen.worker(worker_id)


def status_of(app: InferoConsole, worker_id: str) -> str:
    worker = worker_in(app, worker_id)
    return worker.status if worker else "absent"


async def test_console_drains_a_busy_connector_which_finishes_its_work_and_stays_linked() -> None:
    async with fleet_of_one() as fleet:
        held = asyncio.create_task(fleet.chat(hold=True))
        async with asyncio.timeout(5):
            await fleet.backend.entered.wait()
        client = FleetClient(fleet.server.url, Credentials(api_key="ak", operator_key="ok"))
        app = make_app(fleet=client, config=ConsoleConfig.frozen())
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: status_of(app, "w-e2e") == "busy")
            await pilot.press("d")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await until(pilot, lambda: status_of(app, "w-e2e") == "draining")
            assert fleet.connector.draining

            refused = await fleet.chat(hold=False)
            assert refused.status_code >= 400
            assert len(fleet.backend.bodies) == 1

            fleet.backend.release.set()
            answer = await held
            assert answer.status_code == 200
            await fleet.server.wait_for(lambda: fleet.server.fleet.workers["w-e2e"].inflight == 0)
            assert status_of(app, "w-e2e") == "draining"
            assert fleet.connector.connected.is_set()
            await pilot.press("u")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await until(pilot, lambda: status_of(app, "w-e2e") == "idle")
            assert (await fleet.chat(hold=False)).status_code == 200
        assert not fleet.task.done()


async def test_console_local_view_drains_the_connector_through_its_status_port(
    tmp_path: Path,
) -> None:
    async with fleet_of_one() as fleet:
        held = asyncio.create_task(fleet.chat(hold=True))
        async with asyncio.timeout(5):
            await fleet.backend.entered.wait()
        token = tmp_path / "worker.token"
        token.write_text("t0k3n\n", encoding="utf-8")
        status_runner = web.AppRunner(create_status_app(fleet.connector, "t0k3n"))
        await status_runner.setup()
        await web.TCPSite(status_runner, "127.0.0.1", 0).start()
        addr = f"127.0.0.1:{status_runner.addresses[0][1]}"
        context = LocalContext(
            client=LocalClient(addr, token),
            addr=addr,
            config_path=tmp_path / "worker.yaml",
            token_file=token,
            log_file=tmp_path / "infero-llm.log",
            diagnostics_dir=tmp_path,
        )
        app = make_app(local=context, config=ConsoleConfig.frozen())
        try:
            async with app.run_test(size=(100, 30)) as pilot:
                pane = app.screen.query_one(LocalPane)
                await until(pilot, lambda: pane.status is not None)
                assert pane.status is not None
                assert pane.status.state == "connected_busy"
                await pilot.press("d")
                await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
                await pilot.press("y")
                await until(pilot, lambda: fleet.connector.draining)
                await fleet.server.wait_for(lambda: fleet.server.status("w-e2e") == "draining")
                fleet.backend.release.set()
                assert (await held).status_code == 200
                await pilot.press("x")
                await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
                await pilot.press("y")
                async with asyncio.timeout(5):
                    assert await fleet.task == 0
        finally:
            await status_runner.cleanup()


async def test_ctl_lists_and_drains_the_same_connector() -> None:
    from typer.testing import CliRunner

    from infero.cli import app as cli

    async with fleet_of_one() as fleet:
        held = asyncio.create_task(fleet.chat(hold=True))
        async with asyncio.timeout(5):
            await fleet.backend.entered.wait()
        runner = CliRunner()
        base = ["--server", fleet.server.url, "--api-key", "ak"]
        listed = await asyncio.to_thread(runner.invoke, cli, ["ctl", "workers", *base, "--json"])
        assert listed.exit_code == 0, listed.output
        assert [w["id"] for w in json.loads(listed.stdout)] == ["w-e2e"]

        refused = await asyncio.to_thread(runner.invoke, cli, ["ctl", "drain", "e2e", *base])
        assert refused.exit_code == 3

        drained = await asyncio.to_thread(
            runner.invoke, cli, ["ctl", "drain", "e2e", *base, "--operator-key", "ok"]
        )
        assert drained.exit_code == 0, drained.output
        assert drained.stdout == "drain accepted for e2e (w-e2e)\n"
        async with asyncio.timeout(5):
            await fleet.server.wait_for(lambda: fleet.server.status("w-e2e") == "draining")
        unknown = await asyncio.to_thread(
            runner.invoke, cli, ["ctl", "undrain", "nobody", *base, "--operator-key", "ok"]
        )
        assert unknown.exit_code == 4
        shut = await asyncio.to_thread(
            runner.invoke, cli, ["ctl", "shutdown", "e2e", *base, "--operator-key", "ok"]
        )
        assert shut.exit_code == 0, shut.output
        undrained = await asyncio.to_thread(
            runner.invoke, cli, ["ctl", "undrain", "w-e2e", *base, "--operator-key", "ok"]
        )
        assert undrained.exit_code == 1
        assert "is shutting down; it cannot be undrained" in undrained.output
        fleet.backend.release.set()
        assert (await held).status_code == 200
        async with asyncio.timeout(5):
            assert await fleet.task == 0


async def state_status(fleet: Fleet, worker_id: str) -> str:
    """The connector's status as `/api/state` reports it now."""
    response = await fleet.http.get(fleet.server.url + "/api/state")
    response.raise_for_status()
    workers = {w["id"]: w for w in response.json()["workers"]}
    return str(workers[worker_id]["status"]) if worker_id in workers else "absent"


async def until_state(fleet: Fleet, worker_id: str, status: str) -> None:
    """Poll `/api/state` (bounded) until the connector has `status`."""
    seen = ""
    try:
        async with asyncio.timeout(10):
            while (seen := await state_status(fleet, worker_id)) != status:  # noqa: ASYNC110
                await asyncio.sleep(0.02)  # polls what the server reports, bounded above
    except TimeoutError:
        raise AssertionError(f"{worker_id} stayed {seen!r}, expected {status!r}") from None


async def test_keyboard_drains_and_undrains_a_real_connector_seen_in_api_state() -> None:
    async with fleet_of_one() as fleet:
        body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "hold": True}
        held = asyncio.create_task(  # busy until released: a drain cannot end it
            fleet.http.post(fleet.server.url + CHAT, json=body, timeout=60)
        )
        async with asyncio.timeout(5):
            await fleet.backend.entered.wait()
        client = FleetClient(fleet.server.url, Credentials(api_key="ak", operator_key="ok"))
        app = make_app(fleet=client, config=ConsoleConfig.frozen())
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: status_of(app, "w-e2e") == "busy")
            await pilot.press("d")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await until_state(fleet, "w-e2e", "draining")
            await until(pilot, lambda: status_of(app, "w-e2e") == "draining")

            await pilot.press("u")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await until_state(fleet, "w-e2e", "busy")
            assert not fleet.connector.draining

            await pilot.press("colon", *"drain e2e", "enter")  # the command line, by name
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await until_state(fleet, "w-e2e", "draining")
            await pilot.press("colon", *"undrain w-e2e", "enter")  # and by id
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await until_state(fleet, "w-e2e", "busy")
            await until(pilot, lambda: status_of(app, "w-e2e") == "busy")
        fleet.backend.release.set()
        assert (await held).status_code == 200
