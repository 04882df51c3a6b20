"""`infero ctl`: tables, JSON, change lines and exit codes (no server needed)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from infero.cli import app as cli
from infero.protocol.state import StateSnapshot
from infero_tui import ctl
from infero_tui.client import AuthRefused, ClientError, FleetClient, NotFound, StreamLost
from infero_tui.frozen import load_snapshots

DATA = Path(__file__).resolve().parents[2] / "data"


def fleet() -> StateSnapshot:
    return load_snapshots(DATA / "fleet.json")[0]


def serving(snapshot: StateSnapshot) -> httpx.MockTransport:
    body = snapshot.model_dump_json()
    return httpx.MockTransport(lambda request: httpx.Response(200, text=body))


def test_workers_table_is_plain_text_with_one_row_per_worker() -> None:
    lines = ctl.workers_table(fleet()).splitlines()
    assert lines[0].split() == [
        "ID", "NAME", "STATUS", "JOBS", "QUEUE", "TOK/S", "TTFT", "FAIL", "SEEN", "VERSION"
    ]  # fmt: skip
    assert lines[1].split() == [
        "w-alpha", "alpha", "busy", "2/2", "3", "41.5", "380ms", "0", "live", "0.1.0"
    ]  # fmt: skip
    assert len(lines) == 6
    assert "delta [red]x[/red]" in lines[4]


def test_seen_is_live_unless_the_connector_is_late_or_gone() -> None:
    """`last_heartbeat` of a live row is as of its last change: only late and gone rows age."""
    snapshot = fleet()
    workers = [w.model_copy(update={"heartbeat_late": w.id == "w-delta"}) for w in snapshot.workers]
    lines = ctl.workers_table(snapshot.model_copy(update={"workers": workers})).splitlines()
    seen = {line.split()[0]: line.split()[-2] for line in lines[1:]}
    assert seen == {
        "w-alpha": "live",
        "w-bravo": "live",
        "w-charlie": "live",
        "w-delta": "30s",
        "w-echo": "19min",
    }


def test_models_and_mcp_tables_show_queues_relays_and_sessions() -> None:
    models = ctl.models_table(fleet()).splitlines()
    assert models[1].split()[:5] == ["llama3:8b", "2/2", "3", "4.2s", "1800"]
    mcp = ctl.mcp_tables(fleet())
    assert "m-files" in mcp
    assert "sess-7f3a" in mcp


def test_with_several_instances_the_relay_table_names_each_relays_instance() -> None:
    from infero.protocol.state import InstanceInfo

    base = fleet()
    server = base.server.model_copy(update={"instances": [InstanceInfo(id="A")]})
    clients = [c.model_copy(update={"instance": "A"}) for c in base.mcp.clients]
    sessions = [s.model_copy(update={"instance": "A"}) for s in base.mcp.sessions]
    mcp = base.mcp.model_copy(update={"clients": clients, "sessions": sessions})
    snapshot = base.model_copy(update={"server": server, "mcp": mcp})
    relays, listed = ctl.mcp_tables(snapshot).split("\n\n")
    for lines in (relays.splitlines(), listed.splitlines()):
        assert lines[0].split()[-1] == "INSTANCE"
        assert [line.split()[-1] for line in lines[1:]] == ["A"] * (len(lines) - 1)
    assert len(listed.splitlines()) == 1 + len(sessions) > 1
    assert "INSTANCE" not in ctl.mcp_tables(base)


def test_workers_resolve_by_id_then_by_unique_live_name() -> None:
    snapshot = fleet()
    assert ctl.resolve_worker(snapshot, "w-bravo").name == "bravo"
    assert ctl.resolve_worker(snapshot, "bravo").id == "w-bravo"
    with pytest.raises(NotFound):
        ctl.resolve_worker(snapshot, "echo")  # gone: nothing to steer
    with pytest.raises(NotFound):
        ctl.resolve_worker(snapshot, "zulu")


def test_two_workers_with_one_name_is_a_usage_error_naming_both_ids() -> None:
    data = fleet().model_dump()
    data["workers"][1]["name"] = "alpha"
    snapshot = StateSnapshot.model_validate(data)
    with pytest.raises(ctl.UsageError, match="w-alpha, w-bravo"):
        ctl.resolve_worker(snapshot, "alpha")


def test_exit_codes_are_the_documented_ones() -> None:
    assert ctl.exit_code(ClientError("x")) == 1
    assert ctl.exit_code(StreamLost("x")) == 1
    assert ctl.exit_code(ctl.UsageError("x")) == 2
    assert ctl.exit_code(AuthRefused("x", 401)) == 3
    assert ctl.exit_code(AuthRefused("x", 403)) == 3
    assert ctl.exit_code(NotFound("x")) == 4


def test_changes_list_everything_first_then_only_what_moved() -> None:
    first = fleet()
    assert ctl.changes(None, first)[:2] == [
        "12:00:00 server ready",
        "12:00:00 worker alpha (w-alpha) busy",
    ]
    data = first.model_dump()
    data["server"]["now"] = "2026-11-28T12:00:02Z"
    data["workers"][0]["status"] = "draining"
    del data["workers"][1]
    data["workers"].append({**data["workers"][0], "id": "w-new", "name": "new", "status": "idle"})
    assert ctl.changes(first, StateSnapshot.model_validate(data)) == [
        "12:00:02 worker alpha (w-alpha) busy -> draining",
        "12:00:02 worker new (w-new) idle",
        "12:00:02 worker bravo (w-bravo) left",
    ]


async def test_list_command_prints_json_of_the_listing() -> None:
    printed: list[str] = []
    async with FleetClient("http://infero.test", transport=serving(fleet())) as client:
        code = await ctl.list_command(client, "models", True, printed.append)
    assert code == 0
    assert [m["name"] for m in json.loads(printed[0])] == ["llama3:8b", "mistral:7b", "qwen2.5:7b"]


async def test_watch_prints_changes_until_the_stream_ends_then_fails() -> None:
    compact = fleet().model_dump_json()
    body = f"id: 1\ndata: {compact}\n\n: keepalive\n\nid: 2\ndata: {compact}\n\n"
    transport = httpx.MockTransport(lambda request: httpx.Response(200, text=body))
    printed: list[str] = []
    async with FleetClient("http://infero.test", transport=transport) as client:
        with pytest.raises(StreamLost):
            await ctl.watch_command(client, False, printed.append)
    assert len(printed) == 6  # the server line and five workers, once: nothing changed after


def test_cli_help_documents_the_exit_codes() -> None:
    result = CliRunner().invoke(cli, ["ctl", "--help"])
    assert result.exit_code == 0
    assert "3 key refused" in result.output


def test_cli_drain_without_a_worker_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["ctl", "drain"])
    assert result.exit_code == 2


def test_cli_with_an_unreachable_server_exits_1_with_one_line_on_stderr() -> None:
    result = CliRunner().invoke(cli, ["ctl", "workers", "--server", "http://127.0.0.1:1"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("infero ctl: state: http://127.0.0.1:1 unreachable")


@pytest.mark.parametrize("server", ["ftp://host", "http://", "http://[::1"])
def test_cli_with_a_malformed_server_url_is_a_usage_error(server: str) -> None:
    result = CliRunner().invoke(cli, ["ctl", "models", "--server", server])
    assert result.exit_code == 2
    assert "invalid server URL" in result.stderr


def test_ctl_and_the_console_client_run_without_textual() -> None:
    import subprocess
    import sys

    code = (
        "import sys, infero.cli, infero_tui.ctl, infero_tui.client, infero_tui.frozen;"
        "assert 'textual' not in sys.modules, sorted(m for m in sys.modules if 'textual' in m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_ctl_and_tui_print_their_version() -> None:
    from typer.testing import CliRunner

    from infero.cli import app
    from infero.common.buildinfo import BUILD

    for command, component in (("ctl", "infero-ctl"), ("tui", "infero-tui")):
        result = CliRunner().invoke(app, [command, "--version"])
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == BUILD.line(component)


async def test_relay_drain_resolves_the_name_and_posts_to_the_relay_route() -> None:
    posted: list[httpx.Request] = []
    body = fleet().model_dump_json()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, text=body)
        posted.append(request)
        return httpx.Response(202, json={"id": "m-files", "action": "drain", "accepted": True})

    printed: list[str] = []
    transport = httpx.MockTransport(handler)
    async with FleetClient("http://infero.test", transport=transport) as client:
        code = await ctl.control_command(client, "drain", "files", False, printed.append, "relay")
        with pytest.raises(NotFound, match="no connected MCP relay"):
            await ctl.control_command(client, "drain", "alpha", False, printed.append, "relay")
    assert code == 0
    assert [r.url.path for r in posted] == ["/api/mcp/relays/m-files/drain"]
    assert printed == ["drain accepted for files (m-files)"]


def test_cli_relay_commands_are_listed() -> None:
    result = CliRunner().invoke(cli, ["ctl", "relay", "--help"])
    assert result.exit_code == 0
    for command in ("drain", "undrain", "shutdown"):
        assert command in result.output


def several_instances() -> StateSnapshot:
    data = fleet().model_dump(mode="json")
    data["server"]["instance"] = "gw-a"
    data["server"]["instances"] = [
        {"id": "gw-a", "address": "http://10.0.0.5:8080", "version": "0.2.0",
         "started_at": "2026-11-28T11:00:00Z", "links": 3, "inflight": 2},
        {"id": "gw-b", "address": "http://10.0.0.6:8080", "version": "0.2.0",
         "started_at": "2026-11-28T11:58:00Z", "links": 2, "inflight": 0},
    ]  # fmt: skip
    for n, worker in enumerate(data["workers"]):
        worker["instance"] = ("gw-a", "gw-b")[n % 2]
    return StateSnapshot.model_validate(data)


def test_with_several_instances_each_worker_shows_its_instance() -> None:
    assert "INSTANCE" not in ctl.workers_table(fleet()).splitlines()[0]
    lines = ctl.workers_table(several_instances()).splitlines()
    assert lines[0].split()[-1] == "INSTANCE"
    assert lines[1].split()[0] == "w-alpha"
    assert lines[1].split()[-1] == "gw-a"
    assert lines[2].split()[-1] == "gw-b"


def test_instances_lists_every_instance_or_the_single_server() -> None:
    lines = ctl.instances_table(several_instances()).splitlines()
    assert lines[0].split() == ["INSTANCE", "ADDRESS", "VERSION", "UP", "LINKS", "INFLIGHT"]
    assert lines[1].split() == ["gw-a", "http://10.0.0.5:8080", "0.2.0", "1h", "3", "2"]
    assert lines[2].split() == ["gw-b", "http://10.0.0.6:8080", "0.2.0", "2min", "2", "0"]
    single = ctl.instances_table(fleet()).splitlines()
    assert len(single) == 2
    assert single[1].split()[:2] == ["-", "-"]


async def test_instances_json_is_the_servers_instance_list() -> None:
    printed: list[str] = []
    transport = serving(several_instances())
    async with FleetClient("http://infero.test", transport=transport) as client:
        assert await ctl.list_command(client, "instances", True, printed.append) == 0
    assert [i["id"] for i in json.loads(printed[0])] == ["gw-a", "gw-b"]
