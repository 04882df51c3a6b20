"""How the console looks, one SVG per screen and state (stored under top-level snapshots/)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_textual_snapshot
from textual.pilot import Pilot

from infero.protocol.state import StateSnapshot
from infero.protocol.status import WorkerStatusDoc
from infero_tui.app import InferoConsole, make_app
from infero_tui.config import ConsoleConfig
from infero_tui.frozen import FrozenFeed, FrozenLocal, load_snapshots
from infero_tui.local import LocalContext
from infero_tui.screens.main import MainScreen

DATA = Path(__file__).resolve().parents[1] / "data"
FIXED_NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


def snapshots(name: str) -> list[StateSnapshot]:
    """Snapshots from tests/data/<name>.json."""
    return load_snapshots(DATA / f"{name}.json")


def local_status() -> WorkerStatusDoc:
    text = (DATA / "local_status.json").read_text(encoding="utf-8")
    return WorkerStatusDoc.model_validate_json(text)


def fixed_clock() -> datetime:
    return FIXED_NOW


ROOT = Path(__file__).resolve().parents[2]
SnapCompare = Callable[..., bool]


class TopLevelSvgExtension(pytest_textual_snapshot.SVGImageExtension):  # type: ignore[misc]
    """Store SVGs in <repo>/snapshots/<test module>/ instead of next to the test."""

    @classmethod
    def dirname(cls, *, test_location: Any) -> str:
        return str(ROOT / "snapshots" / test_location.basename)


@pytest.fixture(autouse=True)
def top_level_snapshots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pytest_textual_snapshot, "SVGImageExtension", TopLevelSvgExtension)


def fleet_app(feed: FrozenFeed, *, read_only: bool = False) -> InferoConsole:
    return make_app(fleet=feed, config=ConsoleConfig.frozen(read_only=read_only), clock=fixed_clock)


def settle(feed: FrozenFeed, *keys: str) -> Callable[[Pilot[Any]], Awaitable[None]]:
    async def run_before(pilot: Pilot[Any]) -> None:
        async with asyncio.timeout(5):
            await feed.settled.wait()
        await pilot.pause()
        for key in keys:
            await pilot.press(key)
            await pilot.pause()
        await pilot.pause()

    return run_before


def local_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client: FrozenLocal
) -> LocalContext:
    monkeypatch.chdir(tmp_path)
    Path("worker.yaml").write_text(
        "# connector settings\nserver_url: wss://infero.example/api/workers/connect\n"
        "client_name: alpha  # shown in the fleet\nmax_concurrency: 2\n",
        encoding="utf-8",
    )
    Path("logs").mkdir()
    Path("logs/infero-llm.log").write_text(
        "2026-11-28 11:59:00 INFO connected to wss://infero.example\n"
        "2026-11-28 11:59:30 INFO models: llama3:8b, qwen2.5:7b\n"
        "2026-11-28 11:59:58 WARNING backend said [bold]slow[/bold]\n",
        encoding="utf-8",
    )
    return LocalContext(
        client=client,
        addr="127.0.0.1:4555",
        config_path=Path("worker.yaml"),
        token_file=Path("worker.token"),
        log_file=Path("logs/infero-llm.log"),
        diagnostics_dir=Path("."),
    )


def test_fleet_shows_workers_in_every_state(snap_compare: SnapCompare) -> None:
    """Idle, busy, draining, not_ready and gone workers with the first one's detail pane."""
    feed = FrozenFeed.holding(snapshots("fleet"))
    assert snap_compare(fleet_app(feed), terminal_size=(120, 34), run_before=settle(feed))


def test_fleet_fits_80x24(snap_compare: SnapCompare) -> None:
    """The workers tab at the smallest supported terminal."""
    feed = FrozenFeed.holding(snapshots("fleet"))
    assert snap_compare(fleet_app(feed), terminal_size=(80, 24), run_before=settle(feed))


def test_fleet_scales_to_a_wide_terminal(snap_compare: SnapCompare) -> None:
    """The workers tab on a wide terminal."""
    feed = FrozenFeed.holding(snapshots("fleet"))
    assert snap_compare(fleet_app(feed), terminal_size=(180, 40), run_before=settle(feed))


def test_empty_fleet_says_so(snap_compare: SnapCompare) -> None:
    """No workers yet, server not ready."""
    feed = FrozenFeed.holding(snapshots("fleet_empty"))
    assert snap_compare(fleet_app(feed), terminal_size=(100, 30), run_before=settle(feed))


def test_detail_pane_follows_the_cursor(snap_compare: SnapCompare) -> None:
    """Moving down three rows shows the not_ready worker's error, as text not markup."""
    feed = FrozenFeed.holding(snapshots("fleet"))
    app = fleet_app(feed)
    assert snap_compare(
        app, terminal_size=(100, 30), run_before=settle(feed, "down", "down", "down")
    )


def test_stale_badge_when_the_stream_is_lost(snap_compare: SnapCompare) -> None:
    """After the stream drops the header shows how stale the data is."""
    now = [FIXED_NOW]
    feed = FrozenFeed([([snapshots("fleet")[0]], "lost"), ([], "hold")])
    app = make_app(
        fleet=feed,
        clock=lambda: now[0],
        config=ConsoleConfig(
            refresh_interval=None, reconnect_schedule=(3600.0,), animation_level="none"
        ),
    )

    async def run_before(pilot: Pilot[Any]) -> None:
        async with asyncio.timeout(5):
            await feed.settled.wait()
        await pilot.pause()
        now[0] = FIXED_NOW.replace(second=12)
        screen = pilot.app.screen
        assert isinstance(screen, MainScreen)
        screen.redraw_header()
        await pilot.pause()

    assert snap_compare(app, terminal_size=(100, 30), run_before=run_before)


def test_unauthorized_stream_asks_for_the_key(snap_compare: SnapCompare) -> None:
    """A 401 on the stream opens the API key prompt."""
    feed = FrozenFeed([([], "401")])
    assert snap_compare(fleet_app(feed), terminal_size=(100, 30), run_before=settle(feed))


def test_drain_asks_for_confirmation_naming_the_worker(snap_compare: SnapCompare) -> None:
    """Pressing d on alpha asks to drain alpha and shows its in-flight count."""
    feed = FrozenFeed.holding(snapshots("fleet"))
    assert snap_compare(fleet_app(feed), terminal_size=(100, 30), run_before=settle(feed, "d"))


def test_models_tab_shows_the_queue_and_rates(snap_compare: SnapCompare) -> None:
    """Models with a queue and rates computed from successive snapshots."""
    feed = FrozenFeed([(snapshots("fleet_series"), "hold")])
    assert snap_compare(fleet_app(feed), terminal_size=(100, 30), run_before=settle(feed, "2"))


def test_mcp_tab_lists_relays_and_sessions(snap_compare: SnapCompare) -> None:
    """MCP relays and a live session."""
    feed = FrozenFeed.holding(snapshots("fleet"))
    assert snap_compare(fleet_app(feed), terminal_size=(100, 30), run_before=settle(feed, "3"))


def test_server_tab_draws_sparklines(snap_compare: SnapCompare) -> None:
    """Server totals and sparklines of requests/s, tokens/s and queue depth."""
    feed = FrozenFeed([(snapshots("fleet_series"), "hold")])
    assert snap_compare(fleet_app(feed), terminal_size=(100, 30), run_before=settle(feed, "4"))


def test_help_lists_every_key(snap_compare: SnapCompare) -> None:
    """? opens the key list."""
    feed = FrozenFeed.holding(snapshots("fleet"))
    assert snap_compare(
        fleet_app(feed), terminal_size=(100, 40), run_before=settle(feed, "question_mark")
    )


def test_local_view_shows_status_paths_and_log(
    snap_compare: SnapCompare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local connector alone: state, connections, jobs, models, paths and the log tail."""
    context = local_context(tmp_path, monkeypatch, FrozenLocal(local_status()))
    app = make_app(local=context, config=ConsoleConfig.frozen(), clock=fixed_clock)
    assert snap_compare(app, terminal_size=(100, 30), run_before=_pause_twice)


def test_settings_editor_shows_a_validation_error(
    snap_compare: SnapCompare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Saving max_concurrency 0 is refused with the connector's own message."""
    context = local_context(tmp_path, monkeypatch, FrozenLocal(local_status()))
    app = make_app(local=context, config=ConsoleConfig.frozen(), clock=fixed_clock)

    async def run_before(pilot: Pilot[Any]) -> None:
        await _pause_twice(pilot)
        await pilot.press("e")
        await pilot.pause()
        field = pilot.app.screen.query_one("#setting-max_concurrency")
        field.value = "0"  # type: ignore[attr-defined]
        await pilot.press("ctrl+s")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(100, 30), run_before=run_before)


def test_both_views_in_one_session(
    snap_compare: SnapCompare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--server and --worker together: the Local tab sits after the fleet tabs."""
    context = local_context(tmp_path, monkeypatch, FrozenLocal(None))
    feed = FrozenFeed.holding(snapshots("fleet"))
    app = make_app(fleet=feed, local=context, config=ConsoleConfig.frozen(), clock=fixed_clock)
    assert snap_compare(app, terminal_size=(100, 30), run_before=settle(feed, "5"))


async def _pause_twice(pilot: Pilot[Any]) -> None:
    await pilot.pause()
    await pilot.pause()


def test_no_color_renders_monochrome(
    snap_compare: SnapCompare, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NO_COLOR=1: the same fleet without colour (states are words, not only colours)."""
    monkeypatch.setenv("NO_COLOR", "1")
    feed = FrozenFeed.holding(snapshots("fleet"))
    assert snap_compare(fleet_app(feed), terminal_size=(100, 30), run_before=settle(feed))


@pytest.mark.parametrize("tab", ["models", "mcp", "server", "local"])
def test_every_tab_fits_80x24(
    snap_compare: SnapCompare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tab: str
) -> None:
    """Each tab at the smallest supported terminal, fleet and local together."""
    context = local_context(tmp_path, monkeypatch, FrozenLocal(local_status()))
    feed = FrozenFeed([(snapshots("fleet_series"), "hold")])
    app = make_app(fleet=feed, local=context, config=ConsoleConfig.frozen(), clock=fixed_clock)
    key = {"models": "2", "mcp": "3", "server": "4", "local": "5"}[tab]
    assert snap_compare(app, terminal_size=(80, 24), run_before=settle(feed, key))
