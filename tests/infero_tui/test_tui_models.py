"""Pure helpers of the console: rates, settings file round trip, log follower, diagnostics."""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console

from infero.common.settings import ConfigError
from infero.protocol.state import ModelInfo, StateSnapshot, WaiterInfo
from infero_tui import settings_file
from infero_tui.format import age, count, duration, ellipsis, middle_ellipsis, millis
from infero_tui.frozen import load_snapshots
from infero_tui.local import LogFollower, tail_lines
from infero_tui.process import ConnectorProcess
from infero_tui.rates import SPAN_S, Counter, RateTracker
from infero_tui.screens.detail import model_facts
from infero_tui.widgets.status_style import status_word

DATA = Path(__file__).resolve().parents[1] / "data"


def snapshots(name: str) -> list[StateSnapshot]:
    """Snapshots from tests/data/<name>.json."""
    return load_snapshots(DATA / f"{name}.json")


def test_rates_come_from_the_difference_between_snapshots() -> None:
    tracker = RateTracker()
    series = snapshots("fleet_series")
    tracker.add(series[0])
    assert tracker.model("llama3:8b").requests.rate() == 0.0
    tracker.add(series[1])
    assert tracker.model("llama3:8b").requests.rate() == pytest.approx(1.5)  # 3 in 2 s
    assert tracker.fleet.requests.series() == pytest.approx(
        tracker.model("llama3:8b").requests.series()
    )
    assert tracker.queue.series()[0] == 0.0


def test_a_steady_rate_reads_the_same_whatever_the_snapshot_rhythm() -> None:
    counter = Counter()
    t, total = 1000.0, 0
    for gap in [0.3, 2.0, 0.1, 0.1, 1.5, 0.7, 2.0, 0.25, 0.05, 3.0] * 3:  # irregular
        t += gap
        total = int(4 * (t - 1000.0))  # a steady 4 requests per second
        counter.add(t, total)
    assert counter.rate() == pytest.approx(4.0, abs=0.5)
    assert all(v == pytest.approx(4.0, abs=1.0) for v in counter.series()[-11:-1])


def test_a_snapshot_with_the_same_time_adds_nothing() -> None:
    counter = Counter()
    counter.add(10.0, 5)
    counter.add(10.0, 9)
    assert counter.rate() == 0.0
    assert counter.series() == [0.0]


def test_the_series_spans_sixty_one_second_buckets() -> None:
    counter = Counter()
    for second in range(200):
        counter.add(float(second), second * 2)
    assert len(counter.series()) == SPAN_S
    assert counter.rate() == pytest.approx(2.0)


def test_unchanged_rows_skipped_by_identity_give_the_rates_of_feeding_every_row() -> None:
    """A state stream keeps unchanged rows as the same objects: the tracker feeds only rows
    that are new objects, and must read exactly as if it had fed every row every time."""
    base = snapshots("fleet")[0]
    start = base.server.now
    rows = list(base.workers)
    relays = list(base.mcp.clients)
    lazy, eager = RateTracker(), RateTracker()
    for step in range(1, 40):
        if step % 7 == 0:  # one connector's counters move, the others stay the same objects
            n = step % len(rows)
            rows[n] = rows[n].model_copy(
                update={
                    "processed_total": rows[n].processed_total + step,
                    "tokens_out_total": rows[n].tokens_out_total + 40 * step,
                }
            )
        if step % 11 == 0 and relays:
            relays[0] = relays[0].model_copy(update={"calls_total": relays[0].calls_total + 3})
        now = start + timedelta(seconds=0.4 * step)
        state = base.model_copy(
            update={
                "server": base.server.model_copy(update={"now": now}),
                "workers": list(rows),
                "mcp": base.mcp.model_copy(update={"clients": list(relays)}),
            }
        )
        lazy.add(state)
        eager.add(  # every row a new object: every counter fed
            state.model_copy(
                update={
                    "workers": [w.model_copy() for w in rows],
                    "mcp": base.mcp.model_copy(
                        update={"clients": [r.model_copy() for r in relays]}
                    ),
                }
            )
        )
        if step % 5 == 0:  # reading in between must not change what is read later
            for worker in rows:
                assert lazy.worker(worker.id).tokens.rate() == eager.worker(worker.id).tokens.rate()
    for worker in rows:
        for name in ("requests", "tokens"):
            got = getattr(lazy.worker(worker.id), name)
            want = getattr(eager.worker(worker.id), name)
            assert got.series() == pytest.approx(want.series())
            assert got.rate() == pytest.approx(want.rate())
    assert any(lazy.worker(w.id).tokens.rate() > 0 for w in rows)
    for relay in relays:
        assert lazy.relays[relay.id].series() == pytest.approx(eager.relays[relay.id].series())


def test_human_formats() -> None:
    assert [duration(s) for s in (5, 125, 7300, 200000)] == ["5 s", "2 min", "2 h 1 min", "2 d 7 h"]
    assert millis(0) == "-"
    assert millis(380) == "380 ms"
    assert millis(8864) == "8.9 s"
    assert millis(125_000) == "2 min"
    assert age(snapshots("fleet")[0].server.now, None) == "-"
    assert ellipsis("a-very-long-host-name.example.com", 10) == "a-very-lo…"
    assert middle_ellipsis("w-frankfurt-gpu-02", 9) == "w-fr…u-02"
    assert count(12_345) == "12.3k"


def test_raw_states_are_shown_in_words_and_a_reconnect_is_not_an_error() -> None:
    assert status_word("connected_busy") == "busy"
    assert status_word("not_ready") == "not ready"
    assert status_word("error") == "reconnecting"
    assert status_word("draining") == "draining"


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
    started = await process.start()
    assert process.running
    assert started == f"pid {process.pid}"
    code = await process.stop()
    assert code is not None
    assert code != 0
    assert not process.running
    assert await process.stop() is None


def test_a_models_detail_names_the_instance_of_its_first_waiters() -> None:
    since = datetime(2026, 12, 2, tzinfo=UTC)
    waiters = [
        WaiterInfo(position=n, queued_since=since, instance=i) for n, i in enumerate("ABAAB", 1)
    ]
    fleet = ModelInfo(name="m", queue_len=30, waiters=[*waiters, *waiters], waiters_more=20)
    console = Console(width=200, record=True)
    console.print(model_facts(fleet, RateTracker()))
    assert re.search(r"Waiting at +1 A, 2 B, 3 A, 4 A, 5 B, \+25 more", console.export_text())
    alone = [w.model_copy(update={"instance": ""}) for w in waiters]
    console = Console(width=200, record=True)
    console.print(model_facts(ModelInfo(name="m", queue_len=5, waiters=alone), RateTracker()))
    assert "Waiting at" not in console.export_text()  # one instance: the queue says it all
