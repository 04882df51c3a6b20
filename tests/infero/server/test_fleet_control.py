"""Operators drain, undrain and shut down connectors through the server."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest

from support.connector import scripted_connector
from support.server import running_server


async def test_operator_key_sends_control_over_the_link_and_the_action_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "infero.server.control")
    async with (
        running_server(api_key="client", operator_key="op-secret") as srv,
        scripted_connector(srv.url, id="w1") as conn,
        aiohttp.ClientSession(headers={"Authorization": "Bearer op-secret"}) as http,
    ):
        for action in ("drain", "undrain", "shutdown"):
            async with http.post(f"{srv.url}/api/workers/w1/{action}") as resp:
                assert resp.status == 202
                assert await resp.json() == {"id": "w1", "action": action, "accepted": True}
            async with asyncio.timeout(5):
                control = await conn.controls.get()
            assert (control.action, control.by) == (action, "operator")
    assert "operator key 'operator' asked drain of worker w1" in caplog.text
    assert "op-secret" not in caplog.text


async def test_control_without_operator_credential_is_refused(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("alice alice-key\nbob bob-key operator\n", encoding="utf-8")
    async with (
        running_server(api_keys_file=str(keys_file)) as srv,
        scripted_connector(srv.url, id="w1") as conn,
        aiohttp.ClientSession() as http,
    ):
        url = f"{srv.url}/api/workers/w1/drain"
        async with http.post(url) as resp:
            assert resp.status == 401
        async with http.post(url, headers={"Authorization": "Bearer nope"}) as resp:
            assert resp.status == 401
        async with http.post(url, headers={"Authorization": "Bearer alice-key"}) as resp:
            assert resp.status == 403
        async with http.post(
            f"{srv.url}/api/workers/zz/drain", headers={"Authorization": "Bearer bob-key"}
        ) as resp:
            assert resp.status == 404
        async with http.post(url, headers={"Authorization": "Bearer bob-key"}) as resp:
            assert resp.status == 202
        async with asyncio.timeout(5):
            assert (await conn.controls.get()).by == "bob"


async def test_open_server_without_operator_key_refuses_control() -> None:
    async with (
        running_server() as srv,
        scripted_connector(srv.url, id="w1"),
        aiohttp.ClientSession() as http,
        http.post(f"{srv.url}/api/workers/w1/drain") as resp,
    ):
        assert resp.status == 403


async def test_undrain_of_a_connector_that_is_shutting_down_is_refused_409() -> None:
    async with (
        running_server(operator_key="op") as srv,
        scripted_connector(srv.url, id="w1") as asked_here,
        scripted_connector(srv.url, id="w2") as told_locally,
        aiohttp.ClientSession(headers={"Authorization": "Bearer op"}) as http,
    ):
        async with http.post(f"{srv.url}/api/workers/w1/shutdown") as resp:
            assert resp.status == 202
        await told_locally.status(max_concurrency=1, status="draining", shutting_down=True)
        async with asyncio.timeout(5):
            await srv.wait_for(lambda: srv.fleet.workers["w2"].status == "draining")
        for worker in ("w1", "w2"):
            async with http.post(f"{srv.url}/api/workers/{worker}/undrain") as resp:
                assert resp.status == 409
                error = (await resp.json())["error"]
            assert error["code"] == "shutting_down"
            assert error["message"] == (
                f"The worker {worker!r} is shutting down; it cannot be undrained."
            )
        async with asyncio.timeout(5):
            assert (await asked_here.controls.get()).action == "shutdown"
        assert asked_here.controls.empty()
        assert told_locally.controls.empty()
