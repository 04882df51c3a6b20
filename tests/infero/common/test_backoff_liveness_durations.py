"""The shared sans-I/O pieces: backoff schedule, liveness decisions, duration parsing."""

from __future__ import annotations

import pytest

from infero.common.backoff import Backoff
from infero.common.durations import format_duration, parse_duration
from infero.common.liveness import Action, Liveness


def test_backoff_schedule_is_1s_x3_5s_x3_15s_x3_then_30s() -> None:
    backoff = Backoff()
    assert [backoff.next_delay() for _ in range(12)] == [1, 1, 1, 5, 5, 5, 15, 15, 15, 30, 30, 30]


def test_backoff_reset_starts_the_schedule_over() -> None:
    backoff = Backoff()
    for _ in range(7):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == 1


def test_liveness_pings_after_quiet_and_closes_after_silence() -> None:
    live = Liveness(interval=5, dead_after=15, now=100)
    assert live.tick(104) is Action.NOTHING
    assert live.tick(105) is Action.PING
    assert live.tick(106) is Action.NOTHING
    live.received(110)
    assert live.tick(124) is Action.PING
    assert live.tick(125) is Action.CLOSE


def test_liveness_sending_postpones_the_ping_and_deadline_is_the_nearest_event() -> None:
    live = Liveness(interval=5, dead_after=15, now=0)
    live.sent(4)
    assert live.tick(6) is Action.NOTHING
    assert live.next_deadline(6) == 3
    with pytest.raises(ValueError, match="interval"):
        Liveness(interval=5, dead_after=5, now=0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("1m30s", 90), ("2.5", 2.5), ("-1", -1), ("0", 0), ("1h", 3600), ("250ms", 0.25)],
)
def test_durations_parse_go_style_and_plain_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5 minutes", "1m30", "m"])
def test_bad_durations_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_durations_are_printed_short() -> None:
    assert [format_duration(s) for s in (60, 300, 3600, 90, -1, 1.5)] == [
        "1m",
        "5m",
        "1h",
        "90s",
        "-1",
        "1.5s",
    ]
