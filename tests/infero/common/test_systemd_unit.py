"""Unit control through `systemctl` (a stand-in script: no systemd runs on the build host)."""

from __future__ import annotations

from pathlib import Path

import pytest

from infero.common.systemd import SystemdUnit, UnitError, find_unit, parse_show
from support import fake_systemctl


async def test_the_system_unit_is_found_first_then_the_users(tmp_path: Path) -> None:
    systemctl = str(fake_systemctl.install(tmp_path))
    assert await find_unit("infero-llm@main", systemctl=systemctl) is None
    (tmp_path / "state-user").write_text(fake_systemctl.LOADED, encoding="utf-8")
    user = await find_unit("infero-llm@main", systemctl=systemctl)
    assert user is not None
    assert (user.user, user.label) == (True, "infero-llm@main (user)")
    (tmp_path / "state-system").write_text(fake_systemctl.LOADED, encoding="utf-8")
    system = await find_unit("infero-llm@main", systemctl=systemctl)
    assert system is not None
    assert not system.user


async def test_start_stop_enable_run_systemctl_with_the_units_scope(tmp_path: Path) -> None:
    systemctl = str(fake_systemctl.install(tmp_path))
    unit = SystemdUnit("infero-llm@gpu2", user=True, systemctl=systemctl)
    await unit.start()
    await unit.stop()
    await unit.enable()
    state = await unit.state()
    assert fake_systemctl.calls(tmp_path)[:3] == [
        "--user start infero-llm@gpu2",
        "--user stop infero-llm@gpu2",
        "--user enable infero-llm@gpu2",
    ]
    assert state is not None
    assert not state.exists


async def test_a_refusal_is_one_line_naming_the_unit(tmp_path: Path) -> None:
    systemctl = str(fake_systemctl.install(tmp_path))
    (tmp_path / "fail").touch()
    with pytest.raises(UnitError) as refused:
        await SystemdUnit("infero-llm@main", user=False, systemctl=systemctl).start()
    assert str(refused.value) == (
        "systemctl start infero-llm@main: Failed to start infero-llm@main: Access denied"
    )
    missing = SystemdUnit("x", user=False, systemctl=str(tmp_path / "nope"))
    assert await missing.state() is None
    with pytest.raises(UnitError, match="cannot run"):
        await missing.stop()


def test_show_output_becomes_a_state_line() -> None:
    state = parse_show(fake_systemctl.LOADED)
    assert state.exists
    assert state.describe() == "active (running), enabled, pid 42"
    stopped = parse_show("LoadState=loaded\nActiveState=inactive\nSubState=dead\nMainPID=0\n")
    assert stopped.describe() == "inactive (dead), disabled"
