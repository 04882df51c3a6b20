"""Pure helpers of the console: rates, settings file round trip, log follower, diagnostics."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from infero.common.settings import ConfigError
from infero.protocol.state import StateSnapshot
from infero_tui import settings_file
from infero_tui.format import age, duration, millis
from infero_tui.frozen import load_snapshots
from infero_tui.local import LogFollower, tail_lines
from infero_tui.process import ConnectorProcess
from infero_tui.rates import RateTracker

DATA = Path(__file__).resolve().parents[1] / "data"


def snapshots(name: str) -> list[StateSnapshot]:
    """Snapshots from tests/data/<name>.json."""
    return load_snapshots(DATA / f"{name}.json")


def test_rates_come_from_the_difference_between_snapshots() -> None:
    tracker = RateTracker()
    series = snapshots("fleet_series")
    tracker.add(series[0])
    assert tracker.per_model == {}
    tracker.add(series[1])
    assert tracker.per_model["llama3:8b"].requests == pytest.approx(1.5)
    assert tracker.per_model["llama3:8b"].tokens == pytest.approx(45.0)
    assert tracker.fleet.requests == pytest.approx(1.5)
    assert list(tracker.queue_history) == [0.0, 0.0]


def test_rates_ignore_a_snapshot_with_the_same_time() -> None:
    tracker = RateTracker()
    snapshot = snapshots("fleet")[0]
    tracker.add(snapshot)
    tracker.add(snapshot)
    assert tracker.per_model == {}
    assert list(tracker.requests_history) == []


def test_short_formats() -> None:
    assert [duration(s) for s in (5, 125, 7300, 200000)] == ["5s", "2m", "2h", "2d"]
    assert millis(0) == "-"
    assert millis(380) == "380ms"
    assert millis(12_500) == "12.5s"
    assert age(snapshots("fleet")[0].server.now, None) == "-"


SAMPLE = """\
# infero connector
server_url: wss://infero.example/api/workers/connect  # the public server
client_key: "s3cret"
models:
  - llama3:8b
max_concurrency: 2
"""


def test_edits_keep_comments_and_untouched_keys(tmp_path: Path) -> None:
    path = tmp_path / "worker.yaml"
    path.write_text(SAMPLE, encoding="utf-8")
    document = settings_file.load_document(path)
    values = settings_file.field_values(document)
    assert values["models"] == "llama3:8b"
    assert values["max_concurrency"] == "2"
    values.update(max_concurrency="4", client_name="Alpha 1", reconnect="true")
    settings = settings_file.save(path, settings_file.apply_edits(document, values))
    assert settings.max_concurrency == 4
    assert settings.reconnect is True
    text = path.read_text(encoding="utf-8")
    assert text.startswith(SAMPLE.split("client_key")[0])
    assert 'client_key: "s3cret"' in text
    assert "max_concurrency: 4\n" in text
    assert "client_name: Alpha 1\n" in text


def test_an_invalid_edit_is_refused_and_the_file_is_untouched(tmp_path: Path) -> None:
    path = tmp_path / "worker.yaml"
    path.write_text(SAMPLE, encoding="utf-8")
    document = settings_file.load_document(path)
    edits = settings_file.field_values(document) | {"server_url": "http://wrong"}
    with pytest.raises(ConfigError, match=r"server_url in worker\.yaml"):
        settings_file.save(path, settings_file.apply_edits(document, edits))
    assert path.read_text(encoding="utf-8") == SAMPLE


def test_clearing_a_field_removes_the_key(tmp_path: Path) -> None:
    path = tmp_path / "worker.yaml"
    path.write_text(SAMPLE, encoding="utf-8")
    document = settings_file.load_document(path)
    edits = settings_file.field_values(document) | {"models": ""}
    settings = settings_file.save(path, settings_file.apply_edits(document, edits))
    assert settings.models == ()
    assert "models" not in path.read_text(encoding="utf-8")


def test_a_file_that_is_not_a_mapping_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "worker.yaml"
    path.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        settings_file.load_document(path)


def test_log_follower_returns_the_tail_then_only_new_complete_lines(tmp_path: Path) -> None:
    log = tmp_path / "infero-llm.log"
    follower = LogFollower(log, initial=2)
    assert follower.read_new() == []
    log.write_text("a\nb\nc\n", encoding="utf-8")
    assert follower.read_new() == ["a", "b", "c"]
    with log.open("a", encoding="utf-8") as handle:
        handle.write("d\npartial")
    assert follower.read_new() == ["d"]
    log.write_text("new\n", encoding="utf-8")  # rotated: smaller than before
    assert follower.read_new() == ["new"]


def test_log_follower_reads_an_unreadable_log_as_empty_instead_of_raising(
    tmp_path: Path,
) -> None:
    log = tmp_path / "infero-llm.log"
    log.mkdir()  # stat works, reading fails (like a log the operator may not read)
    follower = LogFollower(log)
    assert follower.read_new() == []
    assert follower.read_new() == []


def test_tail_lines_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert tail_lines(tmp_path / "none.log", 10) == []


async def test_connector_process_starts_and_stops_with_sigterm() -> None:
    process = ConnectorProcess(
        [sys.executable, "-c", "import time; time.sleep(60)"], stop_timeout=5
    )
    pid = await process.start()
    assert process.running
    assert process.pid == pid
    code = await process.stop()
    assert code is not None
    assert code != 0
    assert not process.running
    assert await process.stop() is None
