"""The `/state` dashboard in a real headless chromium (Debian package `chromium`).

A real server on loopback, scripted connectors speaking the link protocol, and Playwright
driving the system browser (never a downloaded one). Every wait is a bounded page condition.
"""

from __future__ import annotations

import pytest
from playwright.async_api import Page, expect

from support.connector import scripted_connector
from support.server import running_server

pytestmark = pytest.mark.browser

WAIT_MS = 5000
HOSTILE = "<img src=x onerror=alert(1)>"


async def test_dashboard_asks_for_the_key_shows_a_worker_and_follows_it_into_draining(
    page: Page,
) -> None:
    async with (
        running_server(api_key="sesame") as server,
        scripted_connector(server.url, id="w-alpha", name="alpha", max_concurrency=2) as alpha,
    ):
        await page.goto(server.url + "/state")
        await expect(page.locator("#auth")).to_be_visible(timeout=WAIT_MS)
        await page.fill("#auth-key", "sesame")
        await page.click("#auth-form button")

        row = page.locator('#workers tbody tr[data-id="w-alpha"]')
        await expect(row).to_have_attribute("data-status", "idle", timeout=WAIT_MS)
        await expect(row.locator("td").nth(0)).to_contain_text("alpha")
        await expect(row.locator("td").nth(2)).to_contain_text("0/2")
        await expect(page.locator("#conn")).to_have_text("live")

        await alpha.status(max_concurrency=2, status="draining")
        await expect(row).to_have_attribute("data-status", "draining", timeout=WAIT_MS)
        await expect(row.locator("td.status")).to_have_text("draining")

        await page.reload()
        await expect(row).to_have_attribute("data-status", "draining", timeout=WAIT_MS)
        await expect(page.locator("#auth")).to_be_hidden()


async def test_dashboard_shows_a_hostile_worker_name_as_text(page: Page) -> None:
    async with (
        running_server() as server,
        scripted_connector(server.url, id="w-evil", name=HOSTILE),
    ):
        await page.goto(server.url + "/state")
        name = page.locator('#workers tbody tr[data-id="w-evil"] td.name')
        await expect(name).to_have_text(HOSTILE + "w-evil", timeout=WAIT_MS)
        assert await page.locator("img").count() == 0


async def test_dashboard_sorts_connectors_by_the_clicked_column(page: Page) -> None:
    async with (
        running_server() as server,
        scripted_connector(server.url, id="w-a", name="able", max_concurrency=1),
        scripted_connector(server.url, id="w-b", name="baker", max_concurrency=9),
    ):
        await page.goto(server.url + "/state")
        rows = page.locator("#workers tbody tr[data-id]")
        await expect(rows).to_have_count(2, timeout=WAIT_MS)
        await expect(rows.nth(0)).to_have_attribute("data-id", "w-a")

        await page.click('#workers th[data-key="name"] button')
        await expect(rows.nth(0)).to_have_attribute("data-id", "w-b")
        await expect(page.locator('#workers th[data-key="name"]')).to_have_attribute(
            "aria-sort", "descending"
        )


async def test_dashboard_lists_mcp_relays_with_their_names_as_text(page: Page) -> None:
    async with (
        running_server() as server,
        scripted_connector(server.url, path="/api/mcp/connect", kind="mcp", id="r1", name=HOSTILE),
    ):
        await page.goto(server.url + "/state")
        row = page.locator('#mcp-clients tbody tr[data-id="r1"]')
        await expect(row.locator("td").nth(0)).to_have_text(HOSTILE, timeout=WAIT_MS)
        await expect(row.locator("td").nth(1)).to_have_text("r1")
        assert await page.locator("img").count() == 0
