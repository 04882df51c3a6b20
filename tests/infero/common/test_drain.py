"""The connectors' drain state machine: drain, undrain, shutdown, signals, deadline."""

from __future__ import annotations

import asyncio
import logging

import pytest

from infero.common.drain import Drain
from infero.protocol import link


class Connector:
    """What a runtime gives `Drain`: in-flight work, status pushes, a way to leave."""

    def __init__(
        self, inflight: int = 0, timeout: float = -1, *, exit_when_drained: bool = False
    ) -> None:
        self.inflight = inflight
        self.changes = 0
        self.left = asyncio.Event()
        self.drain = Drain(
            timeout=timeout,
            inflight=lambda: self.inflight,
            changed=self._changed,
            stop=self.left.set,
            exit_when_drained=exit_when_drained,
        )

    def _changed(self) -> None:
        self.changes += 1


async def test_drain_stays_linked_when_idle_and_undrain_resumes() -> None:
    c = Connector(inflight=1)
    c.drain.drain(by="test")
    assert c.drain.draining
    assert c.changes == 1
    c.inflight = 0
    c.drain.idle()
    assert not c.left.is_set()
    assert c.drain.undrain(by="test")
    assert not c.drain.draining
    assert c.changes == 2
    assert not c.left.is_set()


async def test_shutdown_when_idle_leaves_at_once() -> None:
    c = Connector()
    c.drain.shutdown(by="test")
    assert c.drain.draining
    assert c.drain.shutting_down
    assert c.left.is_set()


async def test_shutdown_waits_for_in_flight_work_and_leaves_when_it_ends() -> None:
    c = Connector(inflight=1)
    c.drain.shutdown(by="test")
    assert c.drain.draining
    assert not c.left.is_set()
    c.drain.idle()
    assert not c.left.is_set()  # still one in flight
    c.inflight = 0
    c.drain.idle()
    assert c.left.is_set()


async def test_a_drain_after_which_shutdown_is_asked_says_so_and_leaves_when_idle() -> None:
    c = Connector(inflight=1)
    c.drain.drain(by="test")
    c.drain.shutdown(by="test")
    assert c.changes == 2  # draining, then shutting down
    c.inflight = 0
    c.drain.idle()
    assert c.left.is_set()


async def test_exit_when_drained_makes_a_drain_leave_once_idle_unless_undrained() -> None:
    c = Connector(exit_when_drained=True)
    c.drain.drain(by="script")
    assert c.left.is_set()
    c = Connector(inflight=1, exit_when_drained=True)
    c.drain.drain(by="script")
    assert c.drain.undrain(by="script")
    c.inflight = 0
    c.drain.idle()
    assert not c.left.is_set()
    c.inflight = 1
    c.drain.drain(by="script")
    c.inflight = 0
    c.drain.idle()
    assert c.left.is_set()


async def test_undrain_takes_work_again_but_not_after_a_shutdown() -> None:
    c = Connector(inflight=1)
    c.drain.drain(by="test")
    assert c.drain.undrain(by="test")
    assert not c.drain.draining
    assert c.changes == 2
    c.inflight = 0
    c.drain.idle()
    assert not c.left.is_set()  # idle without draining: stays
    c.inflight = 1
    c.drain.shutdown(by="test")
    assert not c.drain.undrain(by="test")
    assert c.drain.draining
    await c.drain.close()


async def test_zero_timeout_leaves_at_once_and_a_deadline_ends_a_long_shutdown() -> None:
    c = Connector(inflight=3, timeout=0)
    c.drain.shutdown()
    assert c.left.is_set()
    c = Connector(inflight=3, timeout=0.01)
    c.drain.shutdown()
    async with asyncio.timeout(5):
        await c.left.wait()
    assert c.drain.leaving
    assert not c.drain.undrain()


async def test_a_drain_has_no_deadline() -> None:
    c = Connector(inflight=3, timeout=0)
    c.drain.drain()
    assert not c.left.is_set()
    await c.drain.close()


async def test_first_signal_shuts_down_and_the_second_leaves_at_once() -> None:
    c = Connector(inflight=1)
    c.drain.signal("SIGTERM")
    assert c.drain.draining
    assert c.drain.shutting_down
    assert not c.drain.undrain()
    assert not c.left.is_set()
    c.drain.signal("SIGTERM")
    assert c.left.is_set()


@pytest.mark.parametrize(
    ("action", "draining", "undrainable"),
    [("drain", True, True), ("shutdown", True, False), ("undrain", False, True)],
)
async def test_control_frames_from_the_server_name_the_operator(
    action: str, draining: bool, undrainable: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "infero.common.drain")
    c = Connector(inflight=1)
    c.drain.control(link.Control.model_validate({"action": action, "by": "bob"}))
    assert c.drain.draining is draining
    assert "server operator 'bob'" in caplog.text
    assert c.drain.undrain() is undrainable
    await c.drain.close()
