"""The `/state` dashboard of a fleet (REDIS_ADDR) in a real headless chromium.

Two server instances share a real `redis-server` started by the test; a scripted connector is
linked to each (and an MCP relay to one). The page on one instance lists every instance and
shows each connector, relay and MCP session with the instance it is linked to; a connector
joining the other instance arrives by a delta. With a single instance the page looks as it
always did: no Instance column. Every wait is a bounded page condition.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Locator, Page, expect

from browser.test_dashboard_deltas_browser import (
    LONGTASKS,
    TWO_FRAMES,
    MainThreadTrace,
    warm_up_playwright,
)
from infero import __version__
from infero.protocol import link as lp
from infero.server.registry import Worker, WorkerStats
from support.connector import scripted_connector
from support.fleet import federated, instance, redis_server
from support.server import RunningServer, running_server

pytestmark = pytest.mark.browser

WAIT_MS = 20_000
"""Milliseconds for a change to reach the page (lease reads, a busy 2-core machine)."""
CALL = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
MCP = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
AGE = re.compile(r"^\d+(s|m \d+s)$")
"""An instance's time up, computed by the page from its `started_at`."""


async def column(page: Page, table: str, key: str) -> int:
    """The 1-based position of a column, read from the table's header."""
    keys: list[str] = await page.locator(f"#{table} thead th").evaluate_all(
        "ths => ths.map(th => th.dataset.key)"
    )
    return keys.index(key) + 1


def cell(page: Page, table: str, row_id: str, position: int) -> Locator:
    return page.locator(f'#{table} tbody tr[data-id="{row_id}"] td:nth-child({position})')


async def test_the_page_on_one_instance_shows_the_whole_fleet_and_where_each_connector_is(
    tmp_path: Path, page: Page
) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "east") as east,
        instance(redis.url, "west") as west,
        scripted_connector(east.url, client_key="ck", id="w-1", name="able", models=["m-a"]),
        scripted_connector(west.url, client_key="ck", id="w-2", name="baker", models=["m-b"]),
        scripted_connector(
            east.url, path="/api/mcp/connect", kind="mcp", client_key="ck", id="r-1", name="tools"
        ) as tools,
        aiohttp.ClientSession() as http,
    ):
        await page.goto(west.url + "/state")
        instances = page.locator("#instances tbody tr[data-id]")
        await expect(instances).to_have_count(2, timeout=WAIT_MS)
        await expect(page.locator("#fleet")).to_be_visible()
        await expect(instances.nth(0)).to_have_attribute("data-id", "west")
        await expect(instances.nth(1)).to_have_attribute("data-id", "east")
        serving = page.locator("#instances tbody tr[data-self]")
        await expect(serving).to_have_count(1)
        await expect(serving).to_have_attribute("data-id", "west")
        await expect(serving.locator("td").nth(0)).to_have_text("westthis page")
        await expect(page.locator("#degraded")).to_be_hidden()

        links = await column(page, "instances", "links")
        await expect(cell(page, "instances", "east", 1)).to_have_text("east")
        await expect(cell(page, "instances", "east", 2)).to_have_text(east.url)
        await expect(cell(page, "instances", "east", 3)).to_have_text(__version__)
        await expect(cell(page, "instances", "east", 4)).to_have_text(AGE)
        await expect(cell(page, "instances", "east", links)).to_have_text("2", timeout=WAIT_MS)
        await expect(cell(page, "instances", "west", links)).to_have_text("1", timeout=WAIT_MS)
        await expect(cell(page, "instances", "east", links + 1)).to_have_text("0")

        rows = page.locator("#workers tbody tr[data-id]")
        await expect(rows).to_have_count(2, timeout=WAIT_MS)
        where = await column(page, "workers", "instance")
        await expect(cell(page, "workers", "w-1", where)).to_have_text("east")
        await expect(cell(page, "workers", "w-2", where)).to_have_text("west")

        relay = await column(page, "mcp-clients", "instance")
        await expect(cell(page, "mcp-clients", "r-1", relay)).to_have_text("east", timeout=WAIT_MS)
        call = asyncio.create_task(http.post(east.url + "/api/mcp/id/r-1", data=CALL, headers=MCP))
        incoming = await tools.next_request()
        opened = [("Content-Type", "application/json"), ("Mcp-Session-Id", "sess-1")]
        await tools.head(incoming.id, 200, opened)
        await tools.body(incoming.id, b'{"jsonrpc":"2.0","id":1,"result":{}}')
        await tools.end(incoming.id)
        (await call).release()
        session = await column(page, "mcp-sessions", "instance")
        await expect(cell(page, "mcp-sessions", "r-1/sess-1", session)).to_have_text(
            "east", timeout=WAIT_MS
        )

        conn = page.locator("#conn")
        await expect(conn).to_have_attribute("data-snapshots", "1")
        async with scripted_connector(east.url, client_key="ck", id="w-3", name="charlie"):
            await expect(cell(page, "workers", "w-3", where)).to_have_text("east", timeout=WAIT_MS)
            await expect(cell(page, "instances", "east", links)).to_have_text("3", timeout=WAIT_MS)
            assert await conn.get_attribute("data-snapshots") == "1", "it came as a delta"

            header = page.locator('#workers th[data-key="instance"]')
            await header.locator("button").click()
            await expect(header).to_have_attribute("aria-sort", "ascending")
            await expect(rows.nth(0)).to_have_attribute("data-id", "w-1")
            await expect(rows.nth(1)).to_have_attribute("data-id", "w-3")
            await expect(rows.nth(2)).to_have_attribute("data-id", "w-2")
            await header.locator("button").click()
            await expect(header).to_have_attribute("aria-sort", "descending")
            await expect(rows.nth(0)).to_have_attribute("data-id", "w-2")

            await page.fill("#filter", "EAST")
            await expect(rows).to_have_count(2)
            await expect(page.locator('#workers tbody tr[data-id="w-2"]')).to_have_count(0)
            await expect(page.locator("#mcp-clients tbody tr[data-id]")).to_have_count(1)
            await page.fill("#filter", "west")
            await expect(rows).to_have_count(1)
            await expect(page.locator("#mcp-clients td.empty")).to_have_text(
                "No row matches the filter."
            )
            await page.fill("#filter", "nowhere")
            await expect(page.locator("#workers td.empty")).to_have_text(
                "No row matches the filter."
            )
            await page.locator("#filter").press("Escape")
            await expect(rows).to_have_count(3)


def _busy_elsewhere(server: RunningServer, connector_id: str) -> bool:
    """The instance sees a connector of another instance with no free slot."""
    peers = federated(server).membership.peers.values()
    return any(c.id == connector_id and c.inflight >= 1 for p in peers for c in p.connectors)


async def test_the_models_table_says_at_which_instance_each_waiter_is(
    tmp_path: Path, page: Page
) -> None:
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "east") as east,
        instance(redis.url, "west") as west,
        scripted_connector(east.url, client_key="ck", id="w-1", models=["m"]) as conn,
        aiohttp.ClientSession() as http,
    ):
        calls: list[asyncio.Task[aiohttp.ClientResponse]] = []

        def call(server: RunningServer) -> None:
            url = server.url + "/api/v1/chat/completions"
            calls.append(asyncio.create_task(http.post(url, json=chat)))

        try:
            async with asyncio.timeout(WAIT_MS / 1000):
                await page.goto(west.url + "/state")
                call(east)
                held = await conn.next_request()
                await west.wait_for(lambda: _busy_elsewhere(west, "w-1"))
                call(west)
                await west.wait_for(lambda: west.queue_len("m") == 1)
                call(east)
                await west.wait_for(lambda: west.queue_len("m") == 2)
            waiting = cell(page, "models", "m", await column(page, "models", "waiting"))
            await expect(waiting).to_have_text("1 west, 2 east", timeout=WAIT_MS)
            await expect(waiting).to_have_attribute("title", "1 west, 2 east")  # all 20 listed
            await conn.reply(held.id, b"{}")  # the head is served: a delta moves east's up
            await expect(waiting).to_have_text("1 east", timeout=WAIT_MS)
            async with asyncio.timeout(WAIT_MS / 1000):
                for _ in range(2):
                    await conn.reply((await conn.next_request()).id, b"{}")
            await expect(waiting).to_have_text("\N{EN DASH}", timeout=WAIT_MS)
        finally:
            for task in calls:
                task.cancel()
            for result in await asyncio.gather(*calls, return_exceptions=True):
                if isinstance(result, aiohttp.ClientResponse):
                    result.release()


async def test_a_single_instance_shows_no_instance_column_until_a_second_one_joins(
    tmp_path: Path, page: Page
) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "solo") as solo,
        scripted_connector(solo.url, client_key="ck", id="w-1", name="able"),
    ):
        await page.goto(solo.url + "/state")
        await expect(page.locator('#workers tbody tr[data-id="w-1"]')).to_have_count(
            1, timeout=WAIT_MS
        )
        await expect(page.locator("#instances tbody tr[data-self]")).to_have_attribute(
            "data-id", "solo"
        )
        await expect(page.locator('#workers th[data-key="instance"]')).to_have_count(0)
        await expect(page.locator('#workers tbody tr[data-id="w-1"] td')).to_have_count(10)

        async with instance(redis.url, "other"):
            await expect(page.locator('#workers th[data-key="instance"]')).to_have_count(
                1, timeout=WAIT_MS
            )
            await expect(page.locator('#workers tbody tr[data-id="w-1"] td')).to_have_count(11)
        await expect(page.locator('#workers th[data-key="instance"]')).to_have_count(
            0, timeout=WAIT_MS
        )


async def test_without_redis_the_page_has_no_instances_panel_nor_column(page: Page) -> None:
    async with (
        running_server() as server,
        scripted_connector(server.url, id="w-1", name="able"),
    ):
        await page.goto(server.url + "/state")
        await expect(page.locator('#workers tbody tr[data-id="w-1"]')).to_have_count(
            1, timeout=WAIT_MS
        )
        await expect(page.locator("#fleet")).to_be_hidden()
        await expect(page.locator("#degraded")).to_be_hidden()
        await expect(page.locator('#workers th[data-key="instance"]')).to_have_count(0)


async def test_the_page_says_degraded_when_redis_is_gone(tmp_path: Path, page: Page) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "solo") as solo,
    ):
        await page.goto(solo.url + "/state")
        await expect(page.locator("#instances tbody tr[data-id]")).to_have_count(1, timeout=WAIT_MS)
        await expect(page.locator("#degraded")).to_be_hidden()
        await redis.stop()
        await expect(page.locator("#degraded")).to_be_visible(timeout=WAIT_MS)
        await expect(page.locator("#degraded-note")).to_be_visible()


def _register(server: RunningServer, n: int) -> Worker:
    """A connector row of `server` with no link behind it (only the view is measured)."""
    hello = lp.Hello(id=f"idle-{n:04d}", name=f"idle {n}", models=["m"], max_concurrency=4)
    worker = Worker(hello, None, WorkerStats())
    federated(server).local.fleet.register(worker)
    return worker


async def test_a_fleet_of_1000_rows_updates_sorts_and_filters_without_a_50_ms_task(
    tmp_path: Path, page: Page
) -> None:
    async with (
        redis_server(tmp_path) as redis,
        instance(redis.url, "east"),
        instance(redis.url, "west") as west,
    ):
        changes = federated(west).local.changes
        workers = [_register(west, n) for n in range(1000)]
        changes.bump()
        await page.add_init_script(LONGTASKS)
        await page.goto(west.url + "/state")
        summary = page.locator("#summary")
        await expect(summary).to_contain_text("1,000 connected", timeout=WAIT_MS)
        await expect(page.locator('#workers th[data-key="instance"]')).to_have_count(
            1, timeout=WAIT_MS
        )
        rows = page.locator("#workers tbody tr[data-id]")
        assert await rows.count() < 100, "only the rows in view are in the DOM"
        await warm_up_playwright(page)
        await page.evaluate("window.__longtasks = []")
        trace = MainThreadTrace(await page.context.new_cdp_session(page))
        await trace.start()

        for round_ in range(1, 6):
            for worker in workers[round_ * 50 : round_ * 50 + 50]:
                worker.inflight = 1
            workers.append(_register(west, 1000 + round_))
            changes.bump()
            await expect(summary).to_contain_text(f"{1000 + round_:,} connected", timeout=WAIT_MS)
            await expect(summary).to_contain_text("50 busy", timeout=WAIT_MS)
            for worker in workers[round_ * 50 : round_ * 50 + 50]:
                worker.inflight = 0
        header = page.locator('#workers th[data-key="instance"]')
        await header.locator("button").click()
        await expect(header).to_have_attribute("aria-sort", "ascending")
        await page.locator("#filter").press_sequentially("idle 99")
        await expect(rows).to_have_count(11)  # idle 99 and idle 990 to idle 999
        await page.locator("#filter").press("Escape")
        await page.locator("#workers").evaluate("t => { t.parentElement.scrollTop = 15000; }")
        await expect(rows.first).not_to_have_attribute("data-id", "idle-0000", timeout=WAIT_MS)
        await page.evaluate(TWO_FRAMES)  # the observer reports tasks after they end

        longtasks = await page.evaluate("window.__longtasks")
        cpu = await trace.task_cpu_ms()
        assert cpu, "the trace holds the main thread's tasks"
        assert max(cpu) < 50, (
            f"a main-thread task used {max(cpu):.0f} ms of CPU; "
            f"long tasks seen by PerformanceObserver (wall ms): {longtasks}"
        )
