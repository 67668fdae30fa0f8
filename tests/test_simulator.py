"""Tests for the reader simulator: its timer and its tags.

The timer runs on a fake clock whose waits end a little late, as real ones do, so the period
is checked exactly and without sleeping; events are read back by a real TCP client.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from bridge.protocol import Frame, StreamDecoder
from bridge.simulator import Simulator, TagNotOnReaderError

START = 1000.0
"""Where the fake clock starts; Uptime counts from the simulator's creation."""
END: dict[str, object] = {"End": True}
"""Sent after what a test looks at, so that "nothing else was sent" can be checked."""


class FakeTime:
    """A clock that moves only when the timer waits; each wait ends ``lags[n]`` s late."""

    def __init__(self, stop_after: float, lags: list[float] | None = None) -> None:
        self.now = START
        self.stop_at = START + stop_after
        self.lags = list(lags or [])

    def clock(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        """Like ``threading.Event.wait``: True means "stop"."""
        assert seconds >= 0
        self.now += seconds + (self.lags.pop(0) if self.lags else 0.125)
        return self.now >= self.stop_at


class Client:
    """A host connected to the simulator that reads its events."""

    def __init__(self, simulator: Simulator) -> None:
        self.sock = socket.create_connection(("127.0.0.1", simulator.port), timeout=10)
        self._decoder = StreamDecoder()
        self._items: list[dict[str, object]] = []
        assert simulator.wait_client()

    def next(self) -> dict[str, object]:
        while not self._items:
            data = self.sock.recv(4096)
            assert data, "the simulator closed the connection"
            items = self._decoder.feed(data)
            self._items += [item.fields for item in items if isinstance(item, Frame)]
            assert all(isinstance(item, Frame) for item in items), items
        return self._items.pop(0)

    def until_end(self) -> list[dict[str, object]]:
        """Every event up to the END marker (which the test sent last)."""
        events = []
        while (event := self.next()) != END:
            events.append(event)
        return events


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime(stop_after=13.5)


@pytest.fixture
def sim(fake_time: FakeTime) -> Iterator[Simulator]:
    with Simulator(port=0, seed=7, clock=fake_time.clock) as simulator:
        yield simulator


@pytest.fixture
def client(sim: Simulator) -> Iterator[Client]:
    host = Client(sim)
    yield host
    host.sock.close()


def seconds(event: dict[str, object]) -> float:
    """The seconds part of an ``Uptime`` (``CCC:SSS.MMM``)."""
    assert isinstance(event["Uptime"], str)
    return float(event["Uptime"].split(":")[1])


def without(event: dict[str, object], *keys: str) -> dict[str, object]:
    return {key: value for key, value in event.items() if key not in keys}


# -- the timer -------------------------------------------------------------------------------


def test_timer_inserts_exactly_one_interval_apart_with_moves(
    sim: Simulator, client: Client, fake_time: FakeTime
) -> None:
    # Interval 3 s, hold min(1, 3/2) = 1 s: Inserts at 3, 6, 9, 12 (each wait 0.125 s late),
    # not every interval + hold as when each wait was counted from the end of the last one.
    sim.run_timer(3.0, ("nfc", "ble", "uhf"), True, wait=fake_time.wait)
    sim.emit(END)
    events = client.until_end()
    assert [event["Move"] for event in events] == ["Insert", "Remove"] * 4
    inserts, removes = events[0::2], events[1::2]
    assert [seconds(event) for event in inserts] == [3.125, 6.125, 9.125, 12.125]
    for insert, remove in zip(inserts, removes, strict=True):
        assert remove["TagId"] == insert["TagId"]
        assert without(remove, "Move", "Uptime") == without(insert, "Move", "Uptime")
        assert seconds(remove) == seconds(insert) + 1.0  # its own Uptime, a hold later
        assert list(remove) == list(insert)  # the reader's key order


def test_timer_without_moves_emits_one_interval_apart(
    sim: Simulator, client: Client, fake_time: FakeTime
) -> None:
    sim.run_timer(2.5, ("nfc",), False, wait=fake_time.wait)
    sim.emit(END)
    events = client.until_end()
    assert [seconds(event) for event in events] == [2.625, 5.125, 7.625, 10.125, 12.625]
    assert all("Move" not in event for event in events)


def test_timer_skips_the_ticks_a_late_wake_up_missed(
    sim: Simulator, client: Client, fake_time: FakeTime
) -> None:
    # The second wait ends 7.5 s late: that event goes out late, the ticks it overslept
    # (6 and 9) are dropped rather than sent in a burst, and the schedule keeps its phase.
    fake_time.lags, fake_time.stop_at = [0.0, 7.5], START + 19.0
    sim.run_timer(3.0, ("nfc",), False, wait=fake_time.wait)
    sim.emit(END)
    assert [seconds(event) for event in client.until_end()] == [3.0, 13.5, 15.125, 18.125]


def test_timer_sends_nothing_without_a_client(sim: Simulator, fake_time: FakeTime) -> None:
    sim.run_timer(3.0, ("nfc",), True, wait=fake_time.wait)  # returns: nothing raised
    host = Client(sim)
    sim.emit(END)
    assert host.until_end() == []
    host.sock.close()


@pytest.mark.parametrize("interval", [0.0, -3.0])
def test_timer_needs_a_positive_interval(sim: Simulator, interval: float) -> None:
    with pytest.raises(ValueError, match=f"interval must be more than 0 s, got {interval}"):
        sim.run_timer(interval, ("nfc",), False)


def test_timer_stops_when_the_simulator_stops() -> None:
    simulator = Simulator(port=0).start()
    timer = threading.Thread(target=simulator.run_timer, args=(3600.0, ("nfc",), True))
    timer.start()
    simulator.stop()
    timer.join(5)
    assert not timer.is_alive()


# -- tags on the reader ------------------------------------------------------------------------


def test_remove_takes_off_the_last_inserted_tag_first(
    sim: Simulator, client: Client, fake_time: FakeTime
) -> None:
    first = sim.insert("nfc")
    fake_time.now += 2.0
    second = sim.insert("uhf")
    fake_time.now += 3.0
    assert first["TagId"] != second["TagId"]
    removed = [sim.remove(), sim.remove()]
    assert [event["TagId"] for event in removed] == [second["TagId"], first["TagId"]]
    assert [client.next() for _ in range(4)] == [first, second, *removed]
    assert seconds(removed[0]) == seconds(second) + 3.0


def test_remove_with_no_tag_on_the_reader_sends_nothing(sim: Simulator, client: Client) -> None:
    sim.insert("nfc")
    sim.remove()
    with pytest.raises(TagNotOnReaderError, match="no tag is on the reader"):
        sim.remove()
    sim.emit(END)
    assert [event["Move"] for event in client.until_end()] == ["Insert", "Remove"]


def test_remove_by_tag_id_leaves_the_other_tags(sim: Simulator, client: Client) -> None:
    first, second = sim.insert("nfc"), sim.insert("nfc")
    assert sim.remove(str(first["TagId"]))["TagId"] == first["TagId"]
    with pytest.raises(TagNotOnReaderError, match=str(first["TagId"])):
        sim.remove(str(first["TagId"]))
    assert sim.remove()["TagId"] == second["TagId"]
