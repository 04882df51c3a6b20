"""Fixtures of the browser tests: the system chromium driven by Playwright.

The browser is Debian's `/usr/bin/chromium`, never one Playwright downloads. When it is
missing the tests fail under CI (env `CI` set) and are skipped elsewhere, saying why.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, Route, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def chromium() -> Path:
    """The system browser; its absence fails under CI and skips elsewhere."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} not found: install the Debian package `chromium`"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must run the browser tests)")
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()


def _is_loopback(url: str) -> bool:
    return url.startswith(("http://127.0.0.1:", "data:", "blob:", "about:"))


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A fresh tab that may reach only the loopback server; checked for misbehaviour after use.

    After the test: no dialog opened, no Content-Security-Policy violation, no request left
    the machine (the pages must work offline, with no CDN).
    """
    context = await browser.new_context()
    dialogs: list[str] = []
    violations: list[str] = []
    outside: list[str] = []

    async def only_loopback(route: Route) -> None:
        if _is_loopback(route.request.url):
            await route.continue_()
        else:
            outside.append(route.request.url)
            await route.abort()

    def console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            violations.append(message.text)

    await context.route("**/*", only_loopback)
    opened = await context.new_page()
    opened.on("dialog", lambda dialog: dialogs.append(dialog.message))
    opened.on("console", console)
    try:
        yield opened
    finally:
        await context.close()
    assert dialogs == [], "the page opened a dialog"
    assert violations == [], "the page broke its Content-Security-Policy"
    assert outside == [], "the page reached beyond the server"
