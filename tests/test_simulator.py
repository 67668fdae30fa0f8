"""Tests for the reader simulator: its timer, its tags, its console and its command line.

The timer runs on a fake clock whose waits end a little late, as real ones do, so the period
is checked exactly and without sleeping; events are read back by a real TCP client. The
command line is run as a user runs it: a subprocess.
"""

from __future__ import annotations

import queue
import re
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bridge.console import WORDS, InputError, act
from bridge.protocol import Frame, StreamDecoder
from bridge.simulator import Simulator, TagNotOnReaderError
from tests.support import bridge_command, bridge_env, free_port

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


# -- the console: one typed line, one action ---------------------------------------------------

PROFILES = ("nfc", "ble", "uhf")


@pytest.mark.parametrize(
    ("line", "interface"),
    [("\n", "13.56"), ("nfc\n", "13.56"), (" ble \n", "bluetooth"), ("uhf", "900")],
)
def test_console_reads_send_an_event_of_that_kind(
    sim: Simulator, client: Client, line: str, interface: str
) -> None:
    act(sim, line, PROFILES)
    event = client.next()
    assert event["Interface"] == interface
    assert "Move" not in event


def test_console_insert_then_remove_carries_the_tag(sim: Simulator, client: Client) -> None:
    act(sim, "insert", PROFILES)
    act(sim, "remove", PROFILES)
    insert, remove = client.next(), client.next()
    assert (insert["Move"], remove["Move"]) == ("Insert", "Remove")
    assert remove["TagId"] == insert["TagId"]


def test_console_sends_a_json_object_as_typed(sim: Simulator, client: Client) -> None:
    act(sim, '{"TagId": "01", "Uptime": "1:2.003"}\n', PROFILES)
    sim.emit(END)
    assert client.sock.recv(4096).startswith(b'{"TagId": "01", "Uptime": "1:2.003"}\r\n')


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("hello", "unknown word 'hello'"),
        ("NFC", "unknown word 'NFC'"),
        ("[1, 2]", "unknown word '[1, 2]'"),
        ('{"TagId": 01}', "not a JSON object"),
        ("{", "not a JSON object"),
        ("remove", "nothing to remove: no tag is on the reader"),
    ],
)
def test_console_refuses_a_line_and_sends_nothing(
    sim: Simulator, client: Client, line: str, message: str
) -> None:
    with pytest.raises(InputError, match=re.escape(message)) as refused:
        act(sim, line, PROFILES)
    if message.startswith("unknown"):
        assert all(word in str(refused.value) for word in WORDS)
    sim.emit(END)
    assert client.until_end() == []


# -- the command line --------------------------------------------------------------------------


def run_simulate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        bridge_command("simulate", *args),
        env=bridge_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def assert_one_line_exit_2(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("springcore-bridge simulate: "), lines
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize("port", ["70000", "65536", "-1", "abc", "4000.5", ""])
def test_bad_port_is_one_line_and_exit_2(port: str) -> None:
    assert_one_line_exit_2(run_simulate("--port", port), "--port", "0 to 65535", repr(port))


def test_port_in_use_is_one_line_and_exit_2() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_simulate("--port", str(port), "--interval", "0")
    assert_one_line_exit_2(result, f"127.0.0.1:{port}", "in use")


def test_host_not_of_this_machine_is_one_line_and_exit_2() -> None:
    result = run_simulate("--host", "192.0.2.1", "--port", "0")  # TEST-NET-1, RFC 5737
    assert_one_line_exit_2(result, "192.0.2.1:0", "not an address of this machine", "--host")


@pytest.mark.parametrize("level", ["LOUD", "", "5"])
def test_bad_log_level_is_one_line_and_exit_2(level: str) -> None:
    assert_one_line_exit_2(run_simulate("--log-level", level), "--log-level", "DEBUG", repr(level))


@pytest.mark.parametrize("interval", ["-1", "abc", "nan", "inf"])
def test_bad_interval_is_one_line_and_exit_2(interval: str) -> None:
    assert_one_line_exit_2(run_simulate("--interval", interval), "--interval", repr(interval))


class SimulateProcess:
    """``springcore-bridge simulate`` on a free port, its stderr read line by line."""

    def __init__(self, cwd: Path, *flags: str) -> None:
        self.port = free_port()
        command = bridge_command("simulate", "--port", str(self.port), *flags)
        self.process = subprocess.Popen(
            command, cwd=cwd, env=bridge_env(), stdin=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert self.process.stdin is not None
        assert self.process.stderr is not None
        self.stdin, self.stderr = self.process.stdin, self.process.stderr
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in iter(self.stderr.readline, b""):
            self.lines.put(line.decode(errors="replace"))

    def next_line(self, needle: str) -> str:
        while True:
            try:
                line = self.lines.get(timeout=10)
            except queue.Empty:
                raise AssertionError(f"no line with {needle!r} in 10 s") from None
            if needle in line:
                return line

    def connect(self) -> socket.socket:
        self.next_line(f"listening on 127.0.0.1:{self.port}")
        host = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.next_line(f":{host.getsockname()[1]} connected")
        return host

    def close(self) -> str:
        """Kill it (how it stops is test_cli's); what it wrote to stderr that was not read."""
        self.process.kill()
        self.process.wait(10)
        self.stdin.close()
        self._reader.join(5)
        self.stderr.close()
        return "".join(self.lines.queue)


@pytest.fixture
def simulate(tmp_path: Path) -> Iterator[Callable[..., SimulateProcess]]:
    started: list[SimulateProcess] = []

    def start(*flags: str) -> SimulateProcess:
        started.append(SimulateProcess(tmp_path, *flags))
        return started[-1]

    yield start
    for process in started:
        process.close()


def frames_from(host: socket.socket, count: int) -> list[dict[str, object]]:
    decoder, frames = StreamDecoder(), list[dict[str, object]]()
    while len(frames) < count:
        chunk = host.recv(4096)
        assert chunk, "the simulator closed the connection"
        frames += [item.fields for item in decoder.feed(chunk) if isinstance(item, Frame)]
    return frames


def test_typed_lines_that_say_nothing_known_are_refused(
    simulate: Callable[..., SimulateProcess],
) -> None:
    sim = simulate("--interval", "0")
    with sim.connect() as host:
        sim.stdin.write(b'hello\n{"a":\nremove\n{"End":true}\n')
        sim.stdin.flush()
        refusals = [sim.next_line("not sent") for _ in range(3)]
        # The first event sent is the last line's: the three lines before it sent nothing.
        assert frames_from(host, 1) == [END]
    assert "unknown word 'hello'" in refusals[0]
    assert all(word in refusals[0] for word in WORDS)
    assert "not a JSON object" in refusals[1]
    assert "nothing to remove" in refusals[2]
    assert "Traceback" not in sim.close()


def test_command_line_timer_sends_insert_then_remove_of_the_same_tag(
    simulate: Callable[..., SimulateProcess],
) -> None:
    # The period is checked on the fake clock above; this checks the flags reach the timer.
    sim = simulate("--interval", "0.2", "--moves", "--log-level", "debug")
    with sim.connect() as host:
        insert, remove = frames_from(host, 2)
    assert (insert["Move"], remove["Move"]) == ("Insert", "Remove")
    assert remove["TagId"] == insert["TagId"]
