"""How the console looks, one SVG per screen and state (stored under top-level snapshots/)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
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


SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 35), id="120x35")]
TAB_KEYS = {"workers": "1", "models": "2", "mcp": "3", "server": "4", "local": "5"}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("tab", list(TAB_KEYS))
def test_every_tab_at_both_sizes(
    snap_compare: SnapCompare,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tab: str,
    size: tuple[int, int],
) -> None:
    """Each tab, fleet (a minute of recorded snapshots) and local connector together."""
    context = local_context(tmp_path, monkeypatch, FrozenLocal(local_status()))
    feed = FrozenFeed([(snapshots("fleet_series"), "hold")])
    app = make_app(fleet=feed, local=context, config=ConsoleConfig.frozen(), clock=fixed_clock)
    assert snap_compare(app, terminal_size=size, run_before=settle(feed, TAB_KEYS[tab]))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(
    ("kind", "keys"),
    [
        pytest.param("worker", ("enter",), id="worker"),
        pytest.param("model", ("2", "enter"), id="model"),
        pytest.param("relay", ("3", "enter"), id="relay"),
    ],
)
def test_detail_view_of(
    snap_compare: SnapCompare, kind: str, keys: tuple[str, ...], size: tuple[int, int]
) -> None:
    """Enter on a row: full-screen detail with graphs, tables, last errors."""
    feed = FrozenFeed([(snapshots("fleet_series"), "hold")])
    assert snap_compare(fleet_app(feed), terminal_size=size, run_before=settle(feed, *keys))


@pytest.mark.parametrize("size", SIZES)
def test_a_crowded_fleet_with_long_and_duplicate_names(
    snap_compare: SnapCompare, size: tuple[int, int]
) -> None:
    """Twelve connectors: a 70-character host name, a hostile name, twins, gone rows last."""
    feed = FrozenFeed.holding(snapshots("fleet_crowded"))
    assert snap_compare(fleet_app(feed), terminal_size=size, run_before=settle(feed))


def test_late_heartbeats_on_a_delta_stream_show_their_age_highlighted(
    snap_compare: SnapCompare,
) -> None:
    """bravo late for 11 s (yellow), alpha for 14 s (red); the other live rows say `live`."""
    snap = snapshots("fleet")[0]
    late = {"w-alpha": 14, "w-bravo": 11}
    workers = [
        w.model_copy(
            update={
                "heartbeat_late": True,
                "last_heartbeat": snap.server.now - timedelta(seconds=late[w.id]),
            }
        )
        if w.id in late
        else w
        for w in snap.workers
    ]
    feed = FrozenFeed.holding([snap.model_copy(update={"workers": workers})])
    feed.live_heartbeats = False
    assert snap_compare(fleet_app(feed), terminal_size=(120, 35), run_before=settle(feed))


@pytest.mark.parametrize("size", SIZES)
def test_a_crowded_mcp_tab(snap_compare: SnapCompare, size: tuple[int, int]) -> None:
    """MCP relays with a twin name and a long one."""
    feed = FrozenFeed.holding(snapshots("fleet_crowded"))
    assert snap_compare(fleet_app(feed), terminal_size=size, run_before=settle(feed, "3"))


def _mode_app(mode: str) -> tuple[InferoConsole, FrozenFeed]:
    feed = FrozenFeed.holding(snapshots("fleet"))
    if mode == "replay":
        feed = FrozenFeed.replaying(DATA / "fleet.json")
        feed.target = "state.json"  # no absolute path in a snapshot
    if mode == "no-operator-key":
        feed.can_act = False
    return fleet_app(feed, read_only=mode == "read-only"), feed


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mode", ["read-only", "replay", "no-operator-key"])
def test_modes_show_a_badge_and_grey_out_actions(
    snap_compare: SnapCompare, mode: str, size: tuple[int, int]
) -> None:
    """READ-ONLY, REPLAY (never `live`), NO OPERATOR KEY: badge, actions greyed in the footer."""
    app, feed = _mode_app(mode)
    assert snap_compare(app, terminal_size=size, run_before=settle(feed))


@pytest.mark.parametrize("size", SIZES)
def test_disconnected_header_says_why_and_when_it_retries(
    snap_compare: SnapCompare, size: tuple[int, int]
) -> None:
    """Refused connection: the cause, the attempt count, the next retry and the data age."""
    now = [FIXED_NOW]
    feed = FrozenFeed([([snapshots("fleet")[0]], "lost"), ([], "hold")])
    feed.loss_cause = "connection refused"
    app = make_app(
        fleet=feed,
        clock=lambda: now[0],
        config=ConsoleConfig(
            refresh_interval=None,
            reconnect_schedule=(5.0,),
            animation_level="none",
            filter_debounce=0,
            min_redraw_interval=0,
        ),
    )

    async def run_before(pilot: Pilot[Any]) -> None:
        async with asyncio.timeout(5):
            await feed.settled.wait()
        screen = pilot.app.screen
        assert isinstance(screen, MainScreen)
        async with asyncio.timeout(5):
            while screen.connection is None or screen.connection.state != "reconnecting":
                await pilot.pause()
        now[0] = FIXED_NOW.replace(second=2)
        screen.redraw_header()
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)


def test_empty_fleet_says_so(snap_compare: SnapCompare) -> None:
    """No workers yet, server not ready."""
    feed = FrozenFeed.holding(snapshots("fleet_empty"))
    assert snap_compare(fleet_app(feed), terminal_size=(100, 30), run_before=settle(feed))


def test_unauthorized_stream_asks_for_the_key(snap_compare: SnapCompare) -> None:
    """A 401 on the stream opens the API key prompt."""
    feed = FrozenFeed([([], "401")])
    assert snap_compare(fleet_app(feed), terminal_size=(100, 30), run_before=settle(feed))


def test_drain_asks_for_confirmation_naming_the_worker(snap_compare: SnapCompare) -> None:
    """Pressing d on alpha asks to drain alpha and shows its in-flight count."""
    feed = FrozenFeed.holding(snapshots("fleet"))
    assert snap_compare(fleet_app(feed), terminal_size=(80, 24), run_before=settle(feed, "d"))


def test_filter_narrows_every_table_of_the_tab(snap_compare: SnapCompare) -> None:
    """`/gpu` on the crowded fleet: the box on top, matching rows only."""
    feed = FrozenFeed.holding(snapshots("fleet_crowded"))
    keys = ("slash", "g", "p", "u")
    assert snap_compare(fleet_app(feed), terminal_size=(80, 24), run_before=settle(feed, *keys))


def test_command_line_opens_at_the_bottom(snap_compare: SnapCompare) -> None:
    """`:` opens the command line; `:drain gpu` is being typed."""
    feed = FrozenFeed.holding(snapshots("fleet_crowded"))
    keys = ("colon", *"drain gpu")
    assert snap_compare(fleet_app(feed), terminal_size=(80, 24), run_before=settle(feed, *keys))


def test_help_lists_every_key(snap_compare: SnapCompare) -> None:
    """? opens the key list."""
    feed = FrozenFeed.holding(snapshots("fleet"))
    assert snap_compare(
        fleet_app(feed), terminal_size=(100, 40), run_before=settle(feed, "question_mark")
    )


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


def test_local_view_alone(
    snap_compare: SnapCompare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--worker without a server: the local connector is the whole console."""
    context = local_context(tmp_path, monkeypatch, FrozenLocal(local_status()))
    app = make_app(local=context, config=ConsoleConfig.frozen(), clock=fixed_clock)
    assert snap_compare(app, terminal_size=(80, 24), run_before=_pause_twice)


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


@pytest.mark.parametrize("size", SIZES)
def test_instances_tab_lists_every_instance_this_one_marked(
    snap_compare: SnapCompare, size: tuple[int, int]
) -> None:
    """Three server instances sharing the fleet: gw-b (this one), gw-a, gw-c on a newer version."""
    feed = FrozenFeed.holding(snapshots("fleet_instances"))
    assert snap_compare(fleet_app(feed), terminal_size=size, run_before=settle(feed, "6"))


def test_instances_tab_of_a_server_alone_says_so(snap_compare: SnapCompare) -> None:
    """No REDIS_ADDR: one line says the server runs alone."""
    feed = FrozenFeed.holding(snapshots("fleet"))
    assert snap_compare(fleet_app(feed), terminal_size=(80, 24), run_before=settle(feed, "6"))


def test_instance_detail_lists_its_links(snap_compare: SnapCompare) -> None:
    """Enter on gw-a: its facts and the connectors and relays linked to it."""
    feed = FrozenFeed.holding(snapshots("fleet_instances"))
    keys = ("6", "enter")
    assert snap_compare(fleet_app(feed), terminal_size=(120, 35), run_before=settle(feed, *keys))


@pytest.mark.parametrize("tab", ["workers", "mcp"])
def test_with_several_instances_rows_show_their_instance(
    snap_compare: SnapCompare, tab: str
) -> None:
    """The INSTANCE column of connectors, relays and sessions (shown with several instances)."""
    feed = FrozenFeed.holding(snapshots("fleet_instances"))
    keys = (TAB_KEYS[tab],)
    assert snap_compare(fleet_app(feed), terminal_size=(120, 35), run_before=settle(feed, *keys))
