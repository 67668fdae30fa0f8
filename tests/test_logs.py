"""Log output: throttled repeats, JSON lines that always name the device."""

from __future__ import annotations

import io
import json
import logging

import pytest

from bridge import logs


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def throttle(clock: Clock) -> logs.Throttle:
    return logs.Throttle(logging.getLogger("test.throttle"), period=60.0, clock=clock)


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test.throttle"]


def test_first_is_logged_repeats_are_summed_up_once_a_period(throttle, clock, caplog):
    throttle.warning("garbage", "skipped %d byte(s)", 5)
    for size in range(10, 40, 10):
        clock.now += 5
        throttle.warning("garbage", "skipped %d byte(s)", size)
    assert messages(caplog) == ["skipped 5 byte(s)"]
    clock.now += 50  # the period is over: the next repeat brings the summary
    throttle.warning("garbage", "skipped %d byte(s)", 99)
    assert messages(caplog) == [
        "skipped 5 byte(s)",
        "skipped 99 byte(s) (4 time(s) in the last 65 s)",
    ]


def test_flush_logs_a_due_summary_without_a_new_repeat(throttle, clock, caplog):
    throttle.warning("garbage", "skipped %d", 1)
    clock.now += 1
    throttle.warning("garbage", "skipped %d", 2)
    throttle.flush()
    assert messages(caplog) == ["skipped 1"]  # not due yet
    clock.now += 60
    logs.flush_throttles()  # what the bridge's periodic wake-up calls, for every throttle
    assert messages(caplog) == ["skipped 1", "skipped 2 (1 time(s) in the last 61 s)"]
    throttle.flush()
    assert len(messages(caplog)) == 2  # nothing new to say


def test_after_a_quiet_period_the_next_one_is_logged_at_once(throttle, clock, caplog):
    throttle.warning("connect", "cannot connect")
    clock.now += 120
    throttle.warning("connect", "cannot connect")
    assert messages(caplog) == ["cannot connect", "cannot connect"]


def test_kinds_are_throttled_apart_and_reset_sums_up_at_once(throttle, clock, caplog):
    throttle.warning("connect", "cannot connect %d", 1)
    throttle.warning("connect", "cannot connect %d", 2)
    throttle.warning("garbage", "skipped")
    throttle.reset("connect")  # the broker is back: say how many attempts failed meanwhile
    throttle.warning("connect", "cannot connect %d", 3)  # a new outage: logged at once
    assert messages(caplog) == [
        "cannot connect 1",
        "skipped",
        "cannot connect 2 (1 time(s) in the last 0 s)",
        "cannot connect 3",
    ]


def test_json_lines_carry_the_device_id(monkeypatch: pytest.MonkeyPatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        logs.configure("INFO", "json", device_id="front-door")
        logging.getLogger("bridge.test").info("plain %s", "line")
        logging.getLogger("bridge.test").info("own", extra={"device_id": "back-door"})
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["message"], line["device_id"]) for line in lines] == [
        ("plain line", "front-door"),
        ("own", "back-door"),
    ]
