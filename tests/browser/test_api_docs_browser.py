"""Swagger UI at `/api/client/` renders the OpenAPI document offline in a real chromium."""

from __future__ import annotations

import pytest
from playwright.async_api import Page, expect

from infero.server.openapi_doc import build_document
from support.server import running_server

pytestmark = pytest.mark.browser

WAIT_MS = 5000


async def test_swagger_ui_renders_every_operation_from_local_files(page: Page) -> None:
    document = build_document(metrics_on_main_port=True)
    operations = sum(len(item) for item in document["paths"].values())
    async with running_server(api_key="k") as server:
        await page.goto(server.url + "/api/client/")
        await expect(page.locator(".opblock")).to_have_count(operations, timeout=WAIT_MS)
        await expect(page.locator(".info .title")).to_contain_text("infero")
        await expect(
            page.locator(".opblock-summary-path", has_text="/api/state/stream")
        ).to_be_visible()
