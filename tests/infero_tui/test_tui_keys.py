"""Every key and `:` command of the console, driven with the pilot against frozen feeds."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.table import Table
from textual.pilot import Pilot
from textual.widgets import Input, Select, Static, Switch, TabbedContent

from infero.protocol.state import StateSnapshot
from infero.protocol.status import WorkerStatusDoc
from infero_tui.app import InferoConsole, make_app
from infero_tui.config import ConsoleConfig
from infero_tui.frozen import FrozenFeed, FrozenLocal, load_snapshots
from infero_tui.local import LocalContext
from infero_tui.process import ConnectorProcess
from infero_tui.screens.api_key import ApiKeyScreen
from infero_tui.screens.confirm import ConfirmScreen
from infero_tui.screens.detail import DetailScreen
from infero_tui.screens.help import HelpScreen
from infero_tui.screens.main import MainScreen
from infero_tui.screens.settings_editor import SettingsEditorScreen
from infero_tui.widgets.fleet_table import FleetTable
from infero_tui.widgets.local_pane import LocalPane

DATA = Path(__file__).resolve().parents[1] / "data"
FIXED_NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


def snapshots(name: str) -> list[StateSnapshot]:
    return load_snapshots(DATA / f"{name}.json")


def fleet_app(feed: FrozenFeed, config: ConsoleConfig | None = None) -> InferoConsole:
    return make_app(fleet=feed, config=config or ConsoleConfig.frozen(), clock=lambda: FIXED_NOW)


async def until(pilot: Pilot[Any], condition: Callable[[], bool]) -> None:
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


def table(app: InferoConsole, table_id: str = "workers-table") -> FleetTable[Any]:
    return app.screen.query_one(f"#{table_id}", FleetTable)


async def test_j_k_g_and_shift_g_home_and_end_move_the_cursor() -> None:
    feed = FrozenFeed.holding(snapshots("fleet_crowded"))
    app = fleet_app(feed)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, feed)
        rows = table(app)
        assert rows.cursor == 0
        await pilot.press("j", "j")
        assert rows.cursor == 2
        await pilot.press("k")
        assert rows.cursor == 1
        await pilot.press("G")
        assert rows.cursor == len(rows.order) - 1
        await pilot.press("g")
        assert rows.cursor == 0
        await pilot.press("end")
        assert rows.selected == rows.order[-1]
        await pilot.press("home", "pagedown")
        assert rows.cursor > 1


async def test_the_cursor_stays_on_its_connector_when_new_state_reorders_the_rows() -> None:
    first = snapshots("fleet")[0]
    newcomer = first.workers[0].model_copy(update={"id": "w-aaa", "name": "aaa"})
    second = first.model_copy(update={"workers": [newcomer, *first.workers]})
    feed = FrozenFeed.holding([first])
    app = fleet_app(feed)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await ready(pilot, feed)
        await pilot.press("j")
        assert table(app).selected == "w-bravo"
        screen._park(second)  # what the stream worker does with the next state
        await until(pilot, lambda: screen.snapshot is second)
        assert table(app).selected == "w-bravo"
        assert table(app).order[0] == "w-aaa"


async def test_the_detail_view_grows_a_block_when_a_new_state_adds_lines_to_it() -> None:
    """A new state redraws the detail without laying it out again unless a block's height
    changes: a connector that starts serving two more models gets two more lines."""
    first = snapshots("fleet")[0]
    alpha = first.workers[0]
    more = alpha.model_copy(
        update={"models_supported": [*alpha.models_supported, "zz-extra-a", "zz-extra-b"]}
    )
    second = first.model_copy(update={"workers": [more, *first.workers[1:]]})
    feed = FrozenFeed.holding([first])
    app = fleet_app(feed)
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await ready(pilot, feed)
        await pilot.press("enter")
        detail = app.screen
        assert isinstance(detail, DetailScreen)
        block = detail.query_one("#detail-table", Static)
        errors = detail.query_one("#detail-errors", Static)
        await pilot.pause()
        height, below = block.size.height, errors.region.y
        screen._park(second)
        await until(pilot, lambda: block.size.height == height + 2)
        await until(pilot, lambda: errors.region.y == below + 2)  # what follows moved down


async def test_the_tables_under_a_detail_view_show_the_newest_state_when_it_closes() -> None:
    """States that arrive while a detail view covers the tables are drawn in the detail view
    at once and in the tables when it closes (not underneath it meanwhile)."""
    first = snapshots("fleet")[0]
    newcomer = first.workers[0].model_copy(update={"id": "w-aaa", "name": "aaa"})
    second = first.model_copy(update={"workers": [newcomer, *first.workers]})
    feed = FrozenFeed.holding([first])
    app = fleet_app(feed)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await ready(pilot, feed)
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        screen._park(second)
        await until(pilot, lambda: screen.snapshot is second)
        assert "w-aaa" not in screen.query_one("#workers-table", FleetTable).order
        await pilot.press("escape")
        await until(pilot, lambda: table(app).order[0] == "w-aaa")
        assert table(app).selected == "w-alpha"


async def test_enter_opens_the_detail_view_and_escape_returns() -> None:
    feed = FrozenFeed.holding(snapshots("fleet"))
    app = fleet_app(feed)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, feed)
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        assert (app.screen.kind, app.screen.key) == ("worker", "w-alpha")
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        async with asyncio.timeout(5):
            await feed.control_called.wait()
        assert feed.calls == [("w-alpha", "drain")]
        await until(pilot, lambda: isinstance(app.screen, DetailScreen))
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)


async def test_model_and_relay_details_open_from_their_tabs() -> None:
    feed = FrozenFeed.holding(snapshots("fleet"))
    app = fleet_app(feed)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, feed)
        await pilot.press("2", "enter")
        assert isinstance(app.screen, DetailScreen)
        assert (app.screen.kind, app.screen.key) == ("model", "llama3:8b")
        await pilot.press("d")  # a model has nothing to drain
        assert isinstance(app.screen, DetailScreen)
        await pilot.press("escape", "3", "enter")
        assert isinstance(app.screen, DetailScreen)
        assert (app.screen.kind, app.screen.key) == ("relay", "m-files")


async def test_a_relays_last_error_is_shown_with_its_time_in_its_detail() -> None:
    *earlier, last = snapshots("fleet")
    failed_at = datetime(2026, 11, 28, 11, 59, 30, tzinfo=UTC)
    clients = [
        c.model_copy(
            update={"last_error": "MCP_UPSTREAM_ERROR: unreachable", "last_error_at": failed_at}
        )
        if c.id == "m-files"
        else c
        for c in last.mcp.clients
    ]
    failed = last.model_copy(update={"mcp": last.mcp.model_copy(update={"clients": clients})})
    feed = FrozenFeed.holding([*earlier, failed])
    app = fleet_app(feed)
    async with app.run_test(size=(120, 35)) as pilot:
        await ready(pilot, feed)
        await pilot.press("3", "enter")
        assert isinstance(app.screen, DetailScreen)
        errors = app.screen.query_one("#detail-errors", Static).content
        assert isinstance(errors, Table)
        console = Console(width=120, file=io.StringIO(), record=True)
        console.print(errors)
        shown = console.export_text()
        assert "MCP_UPSTREAM_ERROR: unreachable" in shown
        assert "11:59:30" in shown


async def test_relays_are_drained_undrained_and_shut_down_like_connectors() -> None:
    feed = FrozenFeed.holding(snapshots("fleet"))
    app = fleet_app(feed)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, feed)
        await pilot.press("3")
        for key in ("d", "u", "x"):
            await pilot.press(key)
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await until(pilot, lambda: isinstance(app.screen, MainScreen))
        await until(pilot, lambda: len(feed.relay_calls) == 3)
        assert feed.relay_calls == [
            ("m-files", "drain"),
            ("m-files", "undrain"),
            ("m-files", "shutdown"),
        ]
        assert feed.calls == []


async def test_a_gone_row_offers_no_action() -> None:
    feed = FrozenFeed.holding(snapshots("fleet"))
    app = fleet_app(feed)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, feed)
        await pilot.press("G")
        assert table(app).selected == "w-echo"
        await pilot.press("d", "x")
        await pilot.pause()
        assert isinstance(app.screen, MainScreen)
        assert feed.calls == []


async def test_the_filter_box_hides_the_letter_keys_in_place_and_escape_shows_them_again() -> None:
    """While the filter box has the focus it takes the letters: the footer hides those keys
    without being rebuilt, and shows the same widgets again when the box closes."""
    feed = FrozenFeed.holding(snapshots("fleet"))
    app = fleet_app(feed)
    async with app.run_test(size=(120, 35)) as pilot:
        screen = await ready(pilot, feed)
        await pilot.pause()
        footer_keys = list(screen.query("FooterKey"))

        def shown() -> list[str]:
            keys = screen.query("FooterKey")
            return [str(getattr(k, "key", "")) for k in keys if k.display]

        before = shown()
        assert {"enter", "slash", "d", "colon"} <= set(before)
        await pilot.press("slash", "b")
        await until(pilot, lambda: "slash" not in shown())
        assert "d" not in shown()
        assert "colon" not in shown()
        assert list(screen.query("FooterKey")) == footer_keys
        await pilot.press("escape")
        await until(pilot, lambda: shown() == before)
        assert list(screen.query("FooterKey")) == footer_keys


async def test_every_fleet_tab_has_the_same_keys_acting_on_that_tab_or_greyed_out() -> None:
    """Enter, /, d, u, x reach the active tab's rows; where they do not apply they are greyed
    out in place: the footer's keys stay the same widgets (no rebuild on a tab switch)."""
    feed = FrozenFeed.holding(snapshots("fleet"))
    app = fleet_app(feed)
    async with app.run_test(size=(120, 35)) as pilot:
        screen = await ready(pilot, feed)
        footer_keys = list(screen.query("FooterKey"))

        def greyed() -> set[str]:
            keys = screen.query("FooterKey")
            return {str(getattr(k, "key", "")) for k in keys if k.has_class("-disabled")}

        async def switch(tab: str) -> None:
            await pilot.press(tab)
            await until(pilot, lambda: screen.query_one(TabbedContent).active_pane is not None)
            await pilot.pause()

        assert greyed() == set()
        for tab, off in (("2", {"d", "u", "x"}), ("4", {"enter", "slash", "d", "u", "x"})):
            await switch(tab)
            assert greyed() == off
            assert list(screen.query("FooterKey")) == footer_keys
        await switch("3")
        assert greyed() == set()
        await switch("2")
        await pilot.press("d", "x")
        await pilot.pause()
        assert isinstance(app.screen, MainScreen)
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        assert (app.screen.kind, app.screen.key) == ("model", "llama3:8b")
        await pilot.press("escape", "slash")
        assert app.focused is screen.query_one("#models-pane Input.filter", Input)
        await pilot.press("escape")
        await switch("4")
        await pilot.press("enter", "slash", "d")
        await pilot.pause()
        assert isinstance(app.screen, MainScreen)
        assert screen.query_one(TabbedContent).active == "server"
        await switch("3")
        await pilot.press("u")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: feed.relay_calls == [("m-files", "undrain")])
        await switch("1")
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: feed.calls == [("w-alpha", "shutdown")])


async def test_slash_filters_the_models_tab_and_escape_clears_it() -> None:
    feed = FrozenFeed.holding(snapshots("fleet"))
    app = fleet_app(feed)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, feed)
        await pilot.press("2", "slash", *"qwen")
        assert table(app, "models-table").order == ["qwen2.5:7b"]
        await pilot.press("escape")
        assert len(table(app, "models-table").order) == 3
        await pilot.press("3", "slash", *"sess-7f", "enter")
        assert table(app, "mcp-sessions").order == ["m-files/sess-7f3a"]
        assert table(app, "mcp-relays").order == []


async def test_the_filter_waits_for_a_pause_in_typing() -> None:
    feed = FrozenFeed.holding(snapshots("fleet"))
    config = ConsoleConfig(
        refresh_interval=None,
        reconnect_schedule=(0.0,),
        reconnect_ceiling=0.0,
        animation_level="none",
        cursor_blink=False,
        filter_debounce=0.2,
        min_redraw_interval=0.0,
    )
    app = fleet_app(feed, config)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, feed)
        await pilot.press("slash", *"bravo")
        assert len(table(app).order) == 5  # typed, not applied yet
        await until(pilot, lambda: table(app).order == ["w-bravo"])


@pytest.mark.parametrize(
    ("command", "tab"),
    [
        (":models", "models"),
        (":mcp", "mcp"),
        (":server", "server"),
        (":workers", "workers"),
        (":instances", "instances"),
    ],
)
async def test_colon_commands_switch_tabs(command: str, tab: str) -> None:
    feed = FrozenFeed.holding(snapshots("fleet"))
    app = fleet_app(feed)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, feed)
        if tab == "workers":
            await pilot.press("2")
        await pilot.press("colon", *command[1:], "enter")
        assert app.screen.query_one(TabbedContent).active == tab


async def test_colon_drain_and_undrain_by_name_ask_then_send() -> None:
    feed = FrozenFeed.holding(snapshots("fleet"))
    app = fleet_app(feed)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, feed)
        for line, expected in ((":drain charlie", "drain"), (":undrain files", "undrain")):
            await pilot.press("colon", *line[1:], "enter")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await until(pilot, lambda: isinstance(app.screen, MainScreen))
            assert expected
        await until(pilot, lambda: bool(feed.calls and feed.relay_calls))
        assert feed.calls == [("w-charlie", "drain")]
        assert feed.relay_calls == [("m-files", "undrain")]


async def test_a_twin_name_or_an_unknown_command_is_explained_not_run() -> None:
    feed = FrozenFeed.holding(snapshots("fleet_crowded"))
    app = fleet_app(feed)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, feed)
        await pilot.press("colon", *"drain gpu-worker", "enter")
        await pilot.press("colon", *"frobnicate", "enter")
        await pilot.press("colon", "escape")
        await pilot.pause()
        assert isinstance(app.screen, MainScreen)
        messages = [n.message for n in app._notifications]
        assert any("3 are named 'gpu-worker'" in m for m in messages)
        assert any("unknown command :frobnicate" in m for m in messages)
        assert not app.screen.query_one("#command-line", Input).has_class("-shown")


async def test_colon_ctx_switches_server_and_colon_help_and_q() -> None:
    feed = FrozenFeed.holding(snapshots("fleet"))
    app = fleet_app(feed)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await ready(pilot, feed)
        await pilot.press("colon", *"ctx https://other.example", "enter")
        assert feed.targets == ["https://other.example"]
        assert screen.connection is not None
        assert screen.connection.target == "https://other.example"
        await until(pilot, lambda: feed.opened == 2)
        await pilot.press("colon", *"help", "enter")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape", "colon", "q", "enter")
        await pilot.pause()
    assert app.return_code == 0


async def test_a_opens_the_api_key_prompt() -> None:
    feed = FrozenFeed.holding(snapshots("fleet"))
    app = fleet_app(feed)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, feed)
        await pilot.press("a")
        assert isinstance(app.screen, ApiKeyScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)


async def test_replay_never_says_live_and_never_sends_an_action() -> None:
    feed = FrozenFeed.replaying(DATA / "fleet.json")
    app = fleet_app(feed)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await ready(pilot, feed)
        assert screen.connection is not None
        assert screen.connection.state == "replay"
        assert "live" not in screen.connection.describe(FIXED_NOW)[0]
        assert "REPLAY" in screen.badges()
        await pilot.press("d", "y", "colon", *"drain alpha", "enter", "y")
        await pilot.pause()
        assert isinstance(app.screen, MainScreen)
        assert feed.calls == []
        palette = [title for title, _, _ in [*screen.palette_fixed(), *screen.palette_rows()]]
        assert not [title for title in palette if title.startswith(("Drain", "Undrain"))]
        messages = [n.message for n in app._notifications]
        assert not [m for m in messages if "accepted" in m]


async def test_without_an_operator_key_actions_are_greyed_and_refused() -> None:
    feed = FrozenFeed.holding(snapshots("fleet"))
    feed.can_act = False
    app = fleet_app(feed)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await ready(pilot, feed)
        assert screen.badges() == ("NO OPERATOR KEY",)
        assert screen.check_action("act", ("drain",)) is None
        await pilot.press("d", "colon", *"drain alpha", "enter")
        await pilot.pause()
        assert isinstance(app.screen, MainScreen)
        assert feed.calls == []


@pytest.mark.parametrize("settle", [True, False])
async def test_the_heap_is_settled_once_after_the_first_state_is_drawn_when_asked(
    settle: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    settled: list[int] = []
    monkeypatch.setattr("infero_tui.screens.main.settle_heap", lambda: settled.append(1))
    series = snapshots("fleet_series")
    feed = FrozenFeed([(series, "hold")])
    config = dataclasses.replace(ConsoleConfig.frozen(), settle_heap=settle)
    app = fleet_app(feed, config)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await ready(pilot, feed)
        await until(pilot, lambda: screen.snapshot is series[-1])
        screen.draw()  # a second drawing
        assert screen.draws == 2
        assert settled == ([1] if settle else [])


async def test_only_the_newest_snapshot_is_drawn_when_many_arrive_at_once() -> None:
    series = snapshots("fleet_series")
    feed = FrozenFeed([(series, "hold")])
    app = fleet_app(feed)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await ready(pilot, feed)
        await until(pilot, lambda: screen.snapshot is series[-1])
        assert screen.draws < len(series)
        assert screen.rates.fleet.requests.rate() > 0  # every snapshot still counted


# ---- the local tab --------------------------------------------------------------------------


def local_context(tmp_path: Path, client: FrozenLocal) -> LocalContext:
    (tmp_path / "worker.yaml").write_text("client_name: alpha\n", encoding="utf-8")
    (tmp_path / "infero-llm.log").write_text("line one\nline two\n", encoding="utf-8")
    return LocalContext(
        client=client,
        addr="127.0.0.1:4555",
        config_path=tmp_path / "worker.yaml",
        token_file=tmp_path / "worker.token",
        log_file=tmp_path / "infero-llm.log",
        diagnostics_dir=tmp_path / "diag",
    )


def local_status(**changes: Any) -> WorkerStatusDoc:
    doc = WorkerStatusDoc.model_validate_json(
        (DATA / "local_status.json").read_text(encoding="utf-8")
    )
    return doc.model_copy(update=changes)


def local_app(context: LocalContext) -> InferoConsole:
    return make_app(local=context, config=ConsoleConfig.frozen(), clock=lambda: FIXED_NOW)


async def test_paths_come_from_the_connector_and_a_flag_that_disagrees_is_shown(
    tmp_path: Path,
) -> None:
    real = tmp_path / "real"
    real.mkdir()
    status = local_status(
        config_file=str(real / "worker.yaml"),
        token_file=str(real / "worker.token"),
        log_file=str(real / "infero-llm.log"),
    )
    client = FrozenLocal(status)
    context = local_context(tmp_path, client)
    context.explicit = frozenset({"config"})
    app = local_app(context)
    async with app.run_test(size=(100, 30)) as pilot:
        pane = app.screen.query_one(LocalPane)
        await until(pilot, lambda: pane.status is not None)
        assert context.token_file == real / "worker.token"
        assert client.token_file == real / "worker.token"
        assert context.log_file == real / "infero-llm.log"
        assert context.config_path == tmp_path / "worker.yaml"  # the flag wins, and is flagged
        assert context.mismatches == [
            f"--config {tmp_path / 'worker.yaml'} but the connector uses {real / 'worker.yaml'}"
        ]


async def test_start_refuses_when_a_connector_already_answers(tmp_path: Path) -> None:
    context = local_context(tmp_path, FrozenLocal(local_status()))
    process = ConnectorProcess([sys.executable, "-c", "import time; time.sleep(60)"])
    context.runner = process
    app = local_app(context)
    async with app.run_test(size=(100, 30)) as pilot:
        pane = app.screen.query_one(LocalPane)
        await until(pilot, lambda: pane.status is not None)
        await pilot.press("S")
        await until(pilot, lambda: bool(app._notifications))
        await app.workers.wait_for_complete([w for w in app.workers if w.group != "fleet"])
        assert not process.running
        assert any("already answers" in n.message for n in app._notifications)


async def test_a_started_connector_that_exits_is_reported_with_status_and_log(
    tmp_path: Path,
) -> None:
    context = local_context(tmp_path, FrozenLocal(None))
    context.runner = ConnectorProcess([sys.executable, "-c", "raise SystemExit(3)"])
    app = local_app(context)
    async with app.run_test(size=(100, 30)) as pilot:
        pane = app.screen.query_one(LocalPane)
        await pilot.press("S")
        await until(pilot, lambda: bool(pane.exited))
        assert pane.exited == "The connector started here exited with status 3."
        assert any("line two" in n.message for n in app._notifications)


async def test_quitting_with_a_started_connector_asks_first(tmp_path: Path) -> None:
    context = local_context(tmp_path, FrozenLocal(None))
    process = ConnectorProcess([sys.executable, "-c", "import time; time.sleep(60)"])
    context.runner = process
    app = local_app(context)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("S")
        await until(pilot, lambda: process.running)
        await pilot.press("q")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, MainScreen))
        assert process.running
        await pilot.press("q")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await pilot.pause()
    assert not process.running


async def test_settings_form_focus_tab_switches_selects_and_unsaved_escape(
    tmp_path: Path,
) -> None:
    app = local_app(local_context(tmp_path, FrozenLocal(None)))
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("e")
        form = app.screen
        assert isinstance(form, SettingsEditorScreen)
        first = form.query_one("#setting-server_url", Input)
        assert first.has_focus
        await pilot.press("tab", "tab", "tab")
        name = form.query_one("#setting-client_name", Input)
        assert name.has_focus
        assert name.selected_text == ""  # Tab does not select the whole value
        assert isinstance(form.query_one("#setting-reconnect"), Switch)
        assert isinstance(form.query_one("#setting-api_style"), Select)
        assert isinstance(form.query_one("#setting-log_level"), Select)
        await pilot.press("escape")  # nothing changed: closes
        assert isinstance(app.screen, MainScreen)
        await pilot.press("e")
        edited = app.screen
        assert isinstance(edited, SettingsEditorScreen)
        edited.query_one("#setting-reconnect", Switch).value = True
        await pilot.press("escape")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert isinstance(app.screen, SettingsEditorScreen)
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, MainScreen))
    text = (tmp_path / "worker.yaml").read_text(encoding="utf-8")
    assert text == "client_name: alpha\nreconnect: true\n"


async def test_end_keeps_the_log_at_its_tail(tmp_path: Path) -> None:
    from textual.widgets import Log

    app = local_app(local_context(tmp_path, FrozenLocal(None)))
    async with app.run_test(size=(100, 30)) as pilot:
        log = app.screen.query_one(Log)
        log.scroll_home(animate=False, immediate=True)
        log.auto_scroll = False
        await pilot.press("G")
        assert log.auto_scroll
        assert log.scroll_y == log.max_scroll_y


async def test_with_several_server_instances_each_connector_shows_its_instance() -> None:
    from infero.protocol.state import InstanceInfo

    base = snapshots("fleet")[0]
    server = base.server.model_copy(
        update={"instance": "i-a", "instances": [InstanceInfo(id="i-a"), InstanceInfo(id="i-b")]}
    )
    workers = [w.model_copy(update={"instance": "i-b"}) for w in base.workers]
    feed = FrozenFeed.holding([base.model_copy(update={"server": server, "workers": workers})])
    app = fleet_app(feed)
    async with app.run_test(size=(160, 30)) as pilot:
        await ready(pilot, feed)
        layout = [column.key for column, _ in table(app).layout_columns(158)]
        assert layout[-1] == "instance"
        header = str(app.screen.query_one("#header").render())
        assert "instance i-a of 2" in header


async def test_with_several_server_instances_each_relay_and_session_shows_its_instance() -> None:
    from infero.protocol.state import InstanceInfo

    base = snapshots("fleet")[0]
    server = base.server.model_copy(
        update={"instance": "i-a", "instances": [InstanceInfo(id="i-a"), InstanceInfo(id="i-b")]}
    )
    clients = [c.model_copy(update={"instance": "i-b"}) for c in base.mcp.clients]
    sessions = [s.model_copy(update={"instance": "i-b"}) for s in base.mcp.sessions]
    mcp = base.mcp.model_copy(update={"clients": clients, "sessions": sessions})
    feed = FrozenFeed.holding([base.model_copy(update={"server": server, "mcp": mcp})])
    app = fleet_app(feed)
    async with app.run_test(size=(160, 35)) as pilot:
        await ready(pilot, feed)
        await pilot.press("3")
        for name in ("mcp-relays", "mcp-sessions"):
            layout = [column.key for column, _ in table(app, name).layout_columns(158)]
            assert layout[-1] == "instance", name
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        facts = app.screen.query_one("#detail-facts", Static).content
        assert isinstance(facts, Table)
        console = Console(width=160, file=io.StringIO(), record=True)
        console.print(facts)
        assert ["Instance", "i-b"] in [line.split() for line in console.export_text().splitlines()]


def line_text(rows: FleetTable[Any], y: int) -> str:
    return "".join(segment.text for segment in rows.render_line(y))


async def test_six_shows_the_server_instances_sorted_by_any_column() -> None:
    """Three instances: by id first; Shift+U by uptime (again: reversed); Shift+S this first."""
    feed = FrozenFeed.holding(snapshots("fleet_instances"))
    app = fleet_app(feed)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot, feed)
        await pilot.press("6")
        assert app.screen.query_one(TabbedContent).active == "instances"
        rows = table(app, "instances-table")
        assert rows.has_focus
        assert rows.order == ["gw-a", "gw-b", "gw-c"]
        await pilot.press("U")
        assert rows.order == ["gw-c", "gw-b", "gw-a"]  # youngest first
        await pilot.press("U")
        assert rows.order == ["gw-a", "gw-b", "gw-c"]
        assert "UP↓" in line_text(rows, 0)
        await pilot.press("S")
        assert rows.order[0] == "gw-b"  # the instance the console reads
        assert line_text(rows, 1).split()[-1] == "this"
        assert line_text(rows, 2).split()[-1] == "peer"
        await pilot.press("slash", *"0.2.0", "enter")
        assert rows.order == ["gw-c"]
        await pilot.press("escape")
        assert len(rows.order) == 3


async def test_a_server_alone_says_so_on_the_instances_tab() -> None:
    """Only once a state says so: before it, the tab waits for one."""
    feed = FrozenFeed([([], "hold")])
    app = fleet_app(feed)
    async with app.run_test(size=(100, 30)) as pilot:
        async with asyncio.timeout(5):
            await feed.settled.wait()
        await pilot.press("6")
        rows = table(app, "instances-table")
        assert "Waiting for the first state." in line_text(rows, 1)
        screen = app.screen
        assert isinstance(screen, MainScreen)
        screen._park(snapshots("fleet")[0])  # what the stream worker does with a state
        await until(pilot, lambda: screen.snapshot is not None)
        assert rows.order == []
        assert "This server runs alone (no REDIS_ADDR)" in line_text(rows, 1)
        await pilot.press("enter")
        assert isinstance(app.screen, MainScreen)  # nothing to open


async def test_a_degraded_instance_says_so_in_its_state() -> None:
    base = snapshots("fleet_instances")[0]
    degraded = base.model_copy(update={"server": base.server.model_copy(update={"degraded": True})})
    feed = FrozenFeed.holding([degraded])
    app = fleet_app(feed)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot, feed)
        await pilot.press("6", "S")
        rows = table(app, "instances-table")
        assert line_text(rows, 1).split()[-1] == "degraded"


async def test_enter_on_an_instance_lists_what_is_linked_to_it_and_offers_no_action() -> None:
    feed = FrozenFeed.holding(snapshots("fleet_instances"))
    app = fleet_app(feed)
    async with app.run_test(size=(120, 35)) as pilot:
        await ready(pilot, feed)
        await pilot.press("6", "enter")  # gw-a, first by id
        detail = app.screen
        assert isinstance(detail, DetailScreen)
        assert detail.kind == "instance"
        assert detail.check_action("act", ()) is None
        await pilot.press("d")
        assert isinstance(app.screen, DetailScreen)  # no confirmation: nothing to drain
        console = Console(width=120, file=io.StringIO(), record=True)
        for block in ("#detail-facts", "#detail-table"):
            content = detail.query_one(block, Static).content
            assert isinstance(content, Table)
            console.print(content)
        text = console.export_text()
        assert "http://10.0.0.5:8080" in text
        rows = [line.split() for line in text.splitlines()]
        linked = {row[2] for row in rows if row[:1] == ["worker"]}
        linked |= {row[3] for row in rows if row[:2] == ["MCP", "relay"]}
        assert linked == {"w-alpha", "w-charlie", "m-files"}
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)


async def test_shift_x_sorts_connectors_and_relays_by_instance_and_the_filter_finds_one() -> None:
    feed = FrozenFeed.holding(snapshots("fleet_instances"))
    app = fleet_app(feed)
    async with app.run_test(size=(120, 35)) as pilot:
        await ready(pilot, feed)
        await pilot.press("X")
        assert table(app).order == ["w-alpha", "w-charlie", "w-bravo", "w-delta", "w-echo"]
        await pilot.press("X")  # reversed; the gone row stays last
        assert table(app).order == ["w-delta", "w-bravo", "w-alpha", "w-charlie", "w-echo"]
        await pilot.press("slash", *"gw-a", "enter")
        assert table(app).order == ["w-alpha", "w-charlie"]
        await pilot.press("escape", "3", "X")
        assert table(app, "mcp-relays").order == ["m-files", "m-search"]
        await pilot.press("X")
        assert table(app, "mcp-relays").order == ["m-search", "m-files"]
