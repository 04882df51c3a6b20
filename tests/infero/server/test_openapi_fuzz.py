"""Schemathesis against the served OpenAPI document: no 5xx, no answer the document does not
describe (issue 9). Bounded: 25 examples per operation, about 10 s."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from support.connector import scripted_connector
from support.server import running_server

TESTS = Path(__file__).resolve().parents[2]


async def test_the_served_openapi_document_holds_under_schemathesis() -> None:
    async with (
        running_server(api_key="k", operator_key="op") as srv,
        # A live connector (so /readyz is 200) whose id and model a generator will not guess.
        scripted_connector(srv.url, id="connector-xk4q9", models=["fuzz-target-model-7f3a"]),
    ):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
        fuzz = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "support.openapi_fuzz",
            srv.url,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(120):
            output, _ = await fuzz.communicate()
    assert fuzz.returncode == 0, output.decode()
