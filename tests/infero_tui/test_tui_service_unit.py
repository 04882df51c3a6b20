"""The Local tab drives the connector's systemd unit when one is loaded (stand-in systemctl)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Static

from infero_tui.app import make_app
from infero_tui.config import ConsoleConfig
from infero_tui.frozen import FrozenLocal
from infero_tui.local import LocalContext
from infero_tui.widgets.local_pane import LocalPane
from support import fake_systemctl


async def until(pilot: Pilot[Any], condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await pilot.pause()


async def test_start_stop_enable_go_to_the_unit_and_its_state_is_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    fake_systemctl.install(bin_dir)
    (bin_dir / "state-system").write_text(fake_systemctl.LOADED, encoding="utf-8")
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    context = LocalContext(
        client=FrozenLocal(None),
        addr="127.0.0.1:4555",
        config_path=tmp_path / "worker.yaml",
        token_file=tmp_path / "worker.token",
        log_file=tmp_path / "infero-llm.log",
        diagnostics_dir=tmp_path,
        unit="infero-llm@main",
    )
    app = make_app(local=context, config=ConsoleConfig.frozen(read_only=False))

    def called(verb: str) -> Callable[[], bool]:
        return lambda: f"{verb} infero-llm@main" in fake_systemctl.calls(bin_dir)

    async with app.run_test(size=(120, 30)) as pilot:
        pane = app.screen.query_one(LocalPane)
        await until(pilot, lambda: pane.unit_state is not None)
        paths = str(pane.query_one("#local-paths", Static).render())
        assert "unit infero-llm@main: active (running), enabled, pid 42" in paths
        for key, verb in (("S", "start"), ("K", "stop"), ("N", "enable")):
            await pilot.press(key)
            await until(pilot, called(verb))
            # the unit's state is read again after each action: let it finish before exiting
            await until(pilot, lambda: not any(w.is_running for w in app.workers))
    assert not (tmp_path / "worker.yaml").exists()  # no child process was started instead
