"""What the console does when keys are pressed (pilot tests; the looks are in snapshots)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from infero.protocol.state import StateSnapshot
from infero.protocol.status import WorkerStatusDoc
from infero_tui.app import InferoConsole, make_app
from infero_tui.client import AuthRefused
from infero_tui.config import ConsoleConfig
from infero_tui.frozen import FrozenFeed, FrozenLocal, load_snapshots
from infero_tui.local import LocalContext
from infero_tui.screens.api_key import ApiKeyScreen
from infero_tui.screens.confirm import ConfirmScreen
from infero_tui.screens.help import HelpScreen
from infero_tui.screens.main import MainScreen
from infero_tui.tables import heartbeat_cell
from infero_tui.widgets.fleet_table import FleetTable

DATA = Path(__file__).resolve().parents[1] / "data"
FIXED_NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


def snapshots(name: str) -> list[StateSnapshot]:
    """Snapshots from tests/data/<name>.json."""
    return load_snapshots(DATA / f"{name}.json")


def local_status() -> WorkerStatusDoc:
    return WorkerStatusDoc.model_validate_json(
        (DATA / "local_status.json").read_text(encoding="utf-8")
    )


def fixed_clock() -> datetime:
    return FIXED_NOW


def fleet_app(feed: FrozenFeed, *, read_only: bool = False) -> InferoConsole:
    return make_app(fleet=feed, config=ConsoleConfig.frozen(read_only=read_only), clock=fixed_clock)


async def until(pilot: Pilot[Any], condition: Callable[[], bool]) -> None:
    """Let the app process messages until `condition` holds (bounded)."""
    async with asyncio.timeout(5):
        while not condition():
            await pilot.pause()


async def ready(pilot: Pilot[Any], feed: FrozenFeed) -> MainScreen:
    async with asyncio.timeout(5):
        await feed.settled.wait()
    screen = pilot.app.screen
    assert isinstance(screen, MainScreen)
    await until(pilot, lambda: screen.snapshot is not None)
    return screen


async def actions_done(app: InferoConsole) -> None:
    """Wait for action workers only (the stream worker runs until the app exits)."""
    pending = [w for w in app.workers if w.group != "fleet" and w.is_running]
    if pending:
        async with asyncio.timeout(5):
            await app.workers.wait_for_complete(pending)


def row_ids(app: InferoConsole, table_id: str = "workers-table") -> list[str]:
    return list(app.screen.query_one(f"#{table_id}", FleetTable).order)


def palette(screen: MainScreen) -> dict[str, Callable[[], object]]:
    """Every palette entry by title (fixed ones and the per-row ones)."""
    return {title: run for title, run, _ in [*screen.palette_fixed(), *screen.palette_rows()]}


async def test_drain_key_then_yes_sends_exactly_one_drain_for_the_selected_worker() -> None:
    feed = FrozenFeed.holding(snapshots("fleet"))
    app = fleet_app(feed)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot, feed)
        await pilot.press("down", "d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        async with asyncio.timeout(5):
            await feed.control_called.wait()
        await actions_done(app)
        await pilot.pause()
        assert feed.calls == [("w-bravo", "drain")]
        assert isinstance(app.screen, MainScreen)


async def test_answering_no_sends_nothing() -> None:
    feed = FrozenFeed.holding(snapshots("fleet"))
    app = fleet_app(feed)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot, feed)
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, MainScreen))
        await actions_done(app)
        assert feed.calls == []


async def test_read_only_mode_sends_nothing_and_asks_nothing() -> None:
    feed = FrozenFeed.holding(snapshots("fleet"))
    app = fleet_app(feed, read_only=True)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await ready(pilot, feed)
        await pilot.press("d", "y", "u", "y", "x", "y")
        await pilot.pause()
        assert isinstance(app.screen, MainScreen)
        assert feed.calls == []
        assert not [title for title in palette(screen) if title.startswith(("Drain", "Shutdown"))]


async def test_refused_operator_key_is_reported_not_retried() -> None:
    feed = FrozenFeed.holding(snapshots("fleet"))
    feed.control_error = AuthRefused("drain: operator key required", 403)
    app = fleet_app(feed)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot, feed)
        await pilot.press("d", "y")
        async with asyncio.timeout(5):
            await feed.control_called.wait()
        await actions_done(app)
        assert feed.calls == [("w-alpha", "drain")]
        assert isinstance(app.screen, MainScreen)


async def test_filter_narrows_the_table_and_escape_clears_it() -> None:
    feed = FrozenFeed.holding(snapshots("fleet"))
    app = fleet_app(feed)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot, feed)
        await pilot.press("slash", *"qwen")
        await pilot.pause()
        assert row_ids(app) == ["w-alpha", "w-charlie"]
        await pilot.press("enter", "down", "d")  # back in the table, the filter stays
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        assert row_ids(app) == ["w-alpha", "w-charlie"]
        await pilot.press("slash", "escape")
        await pilot.pause()
        assert len(row_ids(app)) == 5


async def test_sort_key_cycles_columns_and_r_reverses() -> None:
    feed = FrozenFeed.holding(snapshots("fleet"))
    app = fleet_app(feed)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot, feed)
        assert row_ids(app) == ["w-alpha", "w-bravo", "w-charlie", "w-delta", "w-echo"]
        await pilot.press("s")  # from name to status: busy, idle, draining, not ready; gone last
        assert row_ids(app) == ["w-alpha", "w-bravo", "w-charlie", "w-delta", "w-echo"]
        await pilot.press("r")  # reversed, but the gone row stays last
        assert row_ids(app) == ["w-delta", "w-charlie", "w-bravo", "w-alpha", "w-echo"]


async def test_shift_letters_sort_by_their_column_and_again_reverse() -> None:
    feed = FrozenFeed.holding(snapshots("fleet"))
    app = fleet_app(feed)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot, feed)
        await pilot.press("F")  # failures, fewest first
        assert row_ids(app) == ["w-alpha", "w-charlie", "w-bravo", "w-delta", "w-echo"]
        await pilot.press("F")  # again: most first; gone still last
        assert row_ids(app) == ["w-delta", "w-bravo", "w-alpha", "w-charlie", "w-echo"]
        await pilot.press("N")
        assert row_ids(app)[0] == "w-alpha"


async def test_stream_drop_marks_stale_then_reconnects_to_live() -> None:
    first, second = snapshots("fleet")[0], snapshots("fleet_empty")[0]
    feed = FrozenFeed([([first], "lost"), ([second], "hold")])
    app = fleet_app(feed)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        assert isinstance(screen, MainScreen)
        await until(pilot, lambda: screen.snapshot is second)
        assert feed.opened == 2
        assert screen.connection is not None
        assert screen.connection.state == "live"
        assert row_ids(app) == []


async def test_unauthorized_stream_prompts_for_a_key_and_reconnects_with_it() -> None:
    feed = FrozenFeed([([], "401"), ([snapshots("fleet")[0]], "hold")])
    app = fleet_app(feed)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ApiKeyScreen))
        await pilot.press(*"s3cret", "enter")
        screen = app.screen
        assert isinstance(screen, MainScreen)
        await until(pilot, lambda: screen.snapshot is not None)
        assert feed.api_keys == ["s3cret"]
        assert feed.opened == 2


async def test_command_palette_offers_actions_on_workers_by_name() -> None:
    feed = FrozenFeed.holding(snapshots("fleet"))
    app = fleet_app(feed)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await ready(pilot, feed)
        commands = palette(screen)
        assert "Drain worker charlie" in commands
        assert "Show Models" in commands
        commands["Shutdown worker charlie"]()
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        async with asyncio.timeout(5):
            await feed.control_called.wait()
        assert feed.calls == [("w-charlie", "shutdown")]


async def test_question_mark_opens_help_and_escape_closes_it() -> None:
    feed = FrozenFeed.holding(snapshots("fleet"))
    app = fleet_app(feed)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, feed)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)


async def test_number_keys_switch_tabs() -> None:
    feed = FrozenFeed.holding(snapshots("fleet"))
    app = fleet_app(feed)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, feed)
        from textual.widgets import TabbedContent

        tabs = app.screen.query_one(TabbedContent)
        for key, tab in (("2", "models"), ("3", "mcp"), ("4", "server"), ("1", "workers")):
            await pilot.press(key)
            assert tabs.active == tab


def local_app(tmp_path: Path, client: FrozenLocal, *, read_only: bool = False) -> InferoConsole:
    (tmp_path / "worker.yaml").write_text(
        "# my connector\nclient_key: hunter2  # secret\nclient_name: alpha\n", encoding="utf-8"
    )
    (tmp_path / "infero-llm.log").write_text("line one\nline two\n", encoding="utf-8")
    context = LocalContext(
        client=client,
        addr="127.0.0.1:4555",
        config_path=tmp_path / "worker.yaml",
        token_file=tmp_path / "worker.token",
        log_file=tmp_path / "infero-llm.log",
        diagnostics_dir=tmp_path / "diag",
    )
    return make_app(
        local=context, config=ConsoleConfig.frozen(read_only=read_only), clock=fixed_clock
    )


async def test_local_drain_is_confirmed_then_sent_to_the_status_port(tmp_path: Path) -> None:
    client = FrozenLocal(local_status())
    app = local_app(tmp_path, client)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: client.calls == ["drain"])
        await actions_done(app)
        assert client.calls == ["drain"]


async def test_local_read_only_sends_nothing(tmp_path: Path) -> None:
    client = FrozenLocal(local_status())
    app = local_app(tmp_path, client, read_only=True)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("d", "y", "x", "y", "e")
        await pilot.pause()
        assert isinstance(app.screen, MainScreen)
        assert client.calls == []


async def test_diagnostics_key_writes_one_file_with_secrets_masked(tmp_path: Path) -> None:
    app = local_app(tmp_path, FrozenLocal(local_status()))
    async with app.run_test(size=(100, 30)) as pilot:
        await actions_done(app)
        await pilot.press("g")
        await pilot.pause()
    files = list((tmp_path / "diag").iterdir())
    assert [f.name for f in files] == ["infero-diagnostics-20261128-120000.txt"]
    text = files[0].read_text(encoding="utf-8")
    assert "hunter2" not in text
    assert '"client_key": "***"' in text
    assert "connected_busy" in text
    assert text.rstrip().endswith("line one\nline two")


async def test_settings_editor_saves_a_valid_change_and_keeps_comments(tmp_path: Path) -> None:
    app = local_app(tmp_path, FrozenLocal(local_status()))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("e")
        await pilot.pause()
        field = app.screen.query_one("#setting-max_concurrency")
        field.value = "8"  # type: ignore[attr-defined]
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, MainScreen))
    text = (tmp_path / "worker.yaml").read_text(encoding="utf-8")
    assert text == (
        "# my connector\nclient_key: hunter2  # secret\nclient_name: alpha\nmax_concurrency: 8\n"
    )


async def test_local_log_view_shows_new_lines_after_a_poll(tmp_path: Path) -> None:
    app = local_app(tmp_path, FrozenLocal(None))
    async with app.run_test(size=(100, 30)) as pilot:
        from textual.widgets import Log

        from infero_tui.widgets.local_pane import LocalPane

        pane = app.screen.query_one(LocalPane)
        log = pane.query_one(Log)
        assert list(log.lines) == ["line one", "line two"]
        with (tmp_path / "infero-llm.log").open("a", encoding="utf-8") as handle:
            handle.write("line [b]three[/b]\n")
        pane.poll_log()
        await pilot.pause()
        assert list(log.lines)[-1] == "line [b]three[/b]"


async def test_palette_search_runs_a_worker_action_by_name() -> None:
    feed = FrozenFeed.holding(snapshots("fleet"))
    app = fleet_app(feed)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot, feed)
        await pilot.press("ctrl+p")
        await pilot.press(*"undrain worker charlie")
        from textual.command import CommandList, CommandPalette

        palette = app.screen
        assert isinstance(palette, CommandPalette)
        commands = palette.query_one(CommandList)
        await until(pilot, lambda: commands.option_count > 0)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        async with asyncio.timeout(5):
            await feed.control_called.wait()
        assert feed.calls == [("w-charlie", "undrain")]


async def test_gone_workers_offer_no_actions_in_the_palette() -> None:
    feed = FrozenFeed.holding(snapshots("fleet"))
    app = fleet_app(feed)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await ready(pilot, feed)
        titles = list(palette(screen))
        assert "Drain worker alpha" in titles
        assert "Open worker echo" in titles
        assert not [t for t in titles if t.endswith("echo") and not t.startswith("Open")]


async def test_no_color_environment_turns_the_console_monochrome(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app = fleet_app(FrozenFeed.holding(snapshots("fleet")))
    assert app.no_color


async def test_start_and_stop_keys_own_a_connector_process(tmp_path: Path) -> None:
    import sys

    from infero_tui.process import ConnectorProcess

    app = local_app(tmp_path, FrozenLocal(None))
    assert app.local is not None
    process = ConnectorProcess([sys.executable, "-c", "import time; time.sleep(60)"])
    app.local.runner = process
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("S")
        await until(pilot, lambda: process.running)
        await pilot.press("K")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: not process.running)
        await pilot.press("S")
        await until(pilot, lambda: process.running)
    assert not process.running  # the console stops what it started when it exits


async def test_editor_key_without_a_real_terminal_only_warns(tmp_path: Path) -> None:
    app = local_app(tmp_path, FrozenLocal(None))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("o")
        await pilot.pause()
        assert isinstance(app.screen, MainScreen)


class BrokenFeed(FrozenFeed):
    """A feed with a bug: the stream raises something that is not a `ClientError`."""

    async def snapshots(self) -> AsyncIterator[StateSnapshot]:
        self.opened += 1
        raise ValueError("bug in the feed")
        yield  # pragma: no cover - makes this an async generator


async def test_an_unexpected_feed_error_is_shown_not_swallowed() -> None:
    feed = BrokenFeed([])
    app = fleet_app(feed)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        assert isinstance(screen, MainScreen)
        connection = screen.connection
        assert connection is not None
        await until(pilot, lambda: connection.state == "stopped")
        assert connection.cause.startswith("stream stopped")
        assert feed.opened == 1


def test_a_late_heartbeat_on_a_delta_stream_shows_its_age_and_the_others_say_live() -> None:
    now = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
    then = datetime(2026, 11, 28, 11, 59, 59, tzinfo=UTC)
    assert heartbeat_cell(now, then, False, live_heartbeats=False) == ("live", "dim")
    text, style = heartbeat_cell(now, then, False, live_heartbeats=False, late=True)
    assert text != "live"
    assert style == "#ffd75f"
    old = datetime(2026, 11, 28, 11, 59, 45, tzinfo=UTC)
    assert heartbeat_cell(now, old, False, live_heartbeats=False, late=True)[1] == "bold #ff8787"


async def test_two_relays_whose_providers_issue_the_same_session_id_each_keep_their_row() -> None:
    base = snapshots("fleet")[0]
    files, search = base.mcp.clients
    session = base.mcp.sessions[0]
    twin = session.model_copy(update={"client_id": search.id, "method": "resources/read"})
    assert twin.id == session.id
    mcp = base.mcp.model_copy(update={"sessions": [session, twin]})
    feed = FrozenFeed.holding([base.model_copy(update={"mcp": mcp})])
    app = fleet_app(feed)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot, feed)
        await pilot.press("3")
        table = app.screen.query_one("#mcp-sessions", FleetTable)
        rows = {key: (s.client_id, s.method) for key, s in table.items.items()}
        assert rows == {
            f"{files.id}/{session.id}": (files.id, "tools/call"),
            f"{search.id}/{session.id}": (search.id, "resources/read"),
        }
        await pilot.press("slash", *search.name)
        await pilot.pause()
        assert row_ids(app, "mcp-sessions") == [f"{search.id}/{session.id}"]
        await pilot.press("escape")
        table.update([session])  # the twin ended: the other relay's session stays
        assert row_ids(app, "mcp-sessions") == [f"{files.id}/{session.id}"]
