"""The `/state` dashboard on the delta stream, in a real headless chromium.

Rows are updated in place by id, a reconnect resumes with `Last-Event-ID`, an id the server
cannot resume brings a fresh snapshot, departed connectors are only counted, and at 1,000
rows no main-thread task of an update uses 50 ms: tasks are found by Chromium's trace and
measured in CPU time, because on a shared machine the wall time `longtask` entries report
includes waiting for a core (the entries are shown when the check fails).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from playwright.async_api import CDPSession, Page, Request, expect

from infero.protocol import link as lp
from infero.server.registry import Worker, WorkerStats
from infero.server.state import PUBLISHER
from support.connector import scripted_connector
from support.server import RunningServer, running_server

pytestmark = pytest.mark.browser

WAIT_MS = 10_000
LONGTASKS = """
window.__longtasks = [];
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) window.__longtasks.push(entry.duration);
}).observe({ type: "longtask", buffered: true });
"""


TWO_FRAMES = "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"


def _stream_requests(page: Page) -> list[Request]:
    seen: list[Request] = []
    page.on("request", lambda r: seen.append(r) if "api/state/stream" in r.url else None)
    return seen


async def test_dashboard_updates_rows_in_place_and_resumes_after_a_break(page: Page) -> None:
    requests = _stream_requests(page)
    async with (
        running_server() as server,
        scripted_connector(server.url, id="w-a", name="able") as able,
    ):
        publisher = server.app[PUBLISHER]
        await page.goto(server.url + "/state")
        row = page.locator('#workers tbody tr[data-id="w-a"]')
        await expect(row).to_have_attribute("data-status", "idle", timeout=WAIT_MS)
        await row.evaluate("tr => { tr.marked = true; }")

        await able.status(max_concurrency=1, status="draining")
        await expect(row).to_have_attribute("data-status", "draining", timeout=WAIT_MS)
        assert await row.evaluate("tr => tr.marked === true"), "the row was updated in place"

        conn = page.locator("#conn")
        last = await conn.get_attribute("data-last-event-id")
        assert last
        publisher.end_streams()
        async with scripted_connector(server.url, id="w-b", name="baker"):
            await expect(page.locator('#workers tbody tr[data-id="w-b"]')).to_have_attribute(
                "data-status", "idle", timeout=WAIT_MS
            )
            assert len(requests) == 2
            assert requests[1].headers.get("last-event-id") == last
            await expect(conn).to_have_attribute("data-snapshots", "1")
            await expect(conn).to_have_text("live")


async def test_dashboard_takes_a_snapshot_when_its_event_id_cannot_be_resumed(page: Page) -> None:
    async with (
        running_server() as server,
        scripted_connector(server.url, id="w-a", name="able"),
    ):
        publisher = server.app[PUBLISHER]
        await page.goto(server.url + "/state")
        conn = page.locator("#conn")
        await expect(page.locator('#workers tbody tr[data-id="w-a"]')).to_have_count(
            1, timeout=WAIT_MS
        )
        async with scripted_connector(server.url, id="w-b", name="baker"):
            await expect(page.locator('#workers tbody tr[data-id="w-b"]')).to_have_count(
                1, timeout=WAIT_MS
            )
            publisher.epoch = "restarted"
            publisher.end_streams()
        await expect(conn).to_have_attribute("data-snapshots", "2", timeout=WAIT_MS)
        await expect(page.locator("#workers tbody tr[data-id]")).to_have_count(1)
        await expect(page.locator("#summary")).to_contain_text("1 gone")


async def test_dashboard_removes_a_departed_connector_and_counts_it(page: Page) -> None:
    async with running_server() as server:
        await page.goto(server.url + "/state")
        async with scripted_connector(server.url, id="w-a", name="able"):
            await expect(page.locator('#workers tbody tr[data-id="w-a"]')).to_have_count(
                1, timeout=WAIT_MS
            )
        await expect(page.locator("#summary")).to_contain_text("1 gone", timeout=WAIT_MS)
        await expect(page.locator("#workers tbody tr[data-id]")).to_have_count(0)
        await expect(page.locator("#workers td.empty")).to_have_text("No connectors.")


def _register(server: RunningServer, n: int) -> Worker:
    hello = lp.Hello(id=f"idle-{n:04d}", name=f"idle {n}", models=["m"], max_concurrency=4)
    worker = Worker(hello, None, WorkerStats())
    server.fleet.register(worker)
    return worker


TASK_EVENTS = ("RunTask", "ThreadControllerImpl::RunTask")
"""How Chromium names one task of a thread in its trace (older and newer versions)."""


async def warm_up_playwright(page: Page) -> None:
    """Have Playwright compile its script into the page's world before the trace starts.

    Its first `locator.evaluate` in the page's world runs a 7-9 ms task (on this machine) that
    is Playwright's, not the page's: it must not count as a task of an update.
    """
    await page.locator("#workers").evaluate("t => t.parentElement.scrollTop")


class MainThreadTrace:
    """Chromium's own trace of the page's main thread (CDP `Tracing`), for task CPU times.

    The machine running the tests is shared: a task's wall time (what `longtask` entries
    report) includes the time the renderer waited for a core; its thread time does not.
    """

    def __init__(self, cdp: CDPSession) -> None:
        self.cdp = cdp
        self.events: list[dict[str, Any]] = []
        self.done = asyncio.Event()
        cdp.on("Tracing.dataCollected", lambda params: self.events.extend(params["value"]))
        cdp.on("Tracing.tracingComplete", lambda _: self.done.set())

    async def start(self) -> None:
        await self.cdp.send(
            "Tracing.start",
            {"categories": "toplevel,devtools.timeline", "transferMode": "ReportEvents"},
        )

    async def task_cpu_ms(self) -> list[float]:
        """CPU milliseconds of each task the renderer's main thread ran while tracing."""
        await self.cdp.send("Tracing.end")
        async with asyncio.timeout(30):
            await self.done.wait()
        main = {
            (e["pid"], e["tid"])
            for e in self.events
            if e.get("name") == "thread_name" and e["args"].get("name") == "CrRendererMain"
        }
        return [
            e["tdur"] / 1000
            for e in self.events
            if e.get("name") in TASK_EVENTS and e.get("ph") == "X" and "tdur" in e
            if (e["pid"], e["tid"]) in main
        ]


async def test_dashboard_updates_1000_rows_without_a_50_ms_main_thread_task(page: Page) -> None:
    async with running_server() as server:
        workers = [_register(server, n) for n in range(1000)]
        await page.add_init_script(LONGTASKS)
        await page.goto(server.url + "/state")
        summary = page.locator("#summary")
        await expect(summary).to_contain_text("1,000 connected", timeout=WAIT_MS)
        rows = page.locator("#workers tbody tr[data-id]")
        assert await rows.count() < 100, "only the rows in view are in the DOM"
        await warm_up_playwright(page)
        await page.evaluate("window.__longtasks = []")
        trace = MainThreadTrace(await page.context.new_cdp_session(page))
        await trace.start()

        conn = page.locator("#conn")
        for round_ in range(1, 11):
            for worker in workers[round_ * 50 : round_ * 50 + 50]:
                worker.inflight = 1
            workers.append(_register(server, 1000 + round_))
            server.fleet.changes.bump()
            await expect(summary).to_contain_text(f"{1000 + round_:,} connected", timeout=WAIT_MS)
            await expect(summary).to_contain_text("50 busy", timeout=WAIT_MS)
            for worker in workers[round_ * 50 : round_ * 50 + 50]:
                worker.inflight = 0
        await page.click('#workers th[data-key="load"] button')
        await expect(page.locator('#workers th[data-key="load"]')).to_have_attribute(
            "aria-sort", "ascending"
        )
        await page.locator("#workers").evaluate("t => { t.parentElement.scrollTop = 15000; }")
        await expect(rows.first).not_to_have_attribute("data-id", "idle-0000", timeout=WAIT_MS)
        await page.evaluate(TWO_FRAMES)  # the observer reports tasks after they end
        assert await conn.get_attribute("data-snapshots") == "1"

        longtasks = await page.evaluate("window.__longtasks")
        cpu = await trace.task_cpu_ms()
        assert cpu, "the trace holds the main thread's tasks"
        assert max(cpu) < 50, (
            f"a main-thread task used {max(cpu):.0f} ms of CPU; "
            f"long tasks seen by PerformanceObserver (wall ms): {longtasks}"
        )
