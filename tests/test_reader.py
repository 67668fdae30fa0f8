"""Tests for bridge.reader: backoff, keepalive timings, error wording, and the link itself.

The link runs on an event loop in a thread of the test's, against the real simulator on a
free port, without any MQTT: a fake sink (the link's port) collects frames and state changes
into queues that are awaited, never slept for.
"""

from __future__ import annotations

import concurrent.futures
import errno
import json
import logging
import queue
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from bridge.backoff import Backoff
from bridge.config import ReaderOptions
from bridge.protocol import Frame, Skipped
from bridge.reader import ReaderLink
from bridge.reader_connection import CommandNotSentError
from bridge.simulator import Simulator
from bridge.tcp import describe_error, keepalive_timings
from tests.support import LoopThread, wait_until


def free_port() -> int:
    """A port nothing listens on (for now): connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- Backoff ---------------------------------------------------------------------------------


class _TopOfRange(random.Random):
    """A Random whose ``uniform(a, b)`` is always ``b``: shows each ceiling exactly."""

    def uniform(self, a: float, b: float) -> float:
        return b


def ceilings(initial: float, maximum: float, count: int) -> list[float]:
    return [min(maximum, initial * 2**attempt) for attempt in range(count)]


def test_backoff_delays_stay_within_half_to_full_ceiling() -> None:
    backoff = Backoff(0.5, 30.0, random.Random(20240601))
    for ceiling in ceilings(0.5, 30.0, 40):
        delay = backoff.next_delay()
        assert ceiling / 2 <= delay <= ceiling


def test_backoff_ceiling_doubles_then_stays_at_the_maximum() -> None:
    backoff = Backoff(0.5, 30.0, _TopOfRange())
    delays = [backoff.next_delay() for _ in range(12)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0]


def test_backoff_never_exceeds_the_maximum_after_many_attempts() -> None:
    backoff = Backoff(1.0, 5.0, random.Random(7))
    delays = [backoff.next_delay() for _ in range(500)]
    assert max(delays) <= 5.0
    assert min(delays[3:]) >= 2.5  # from the 4th attempt on, the ceiling is the maximum


def test_backoff_has_jitter() -> None:
    # Two readers (or a fleet of bridges) restarted together must not retry in lockstep.
    firsts = [Backoff(0.5, 30.0, random.Random(seed)).next_delay() for seed in range(20)]
    assert len(set(firsts)) == 20
    assert all(0.25 <= delay <= 0.5 for delay in firsts)


def test_backoff_reset_starts_again_from_the_initial_delay() -> None:
    backoff = Backoff(0.5, 30.0, random.Random(99))
    for _ in range(8):
        backoff.next_delay()
    backoff.reset()
    assert 0.25 <= backoff.next_delay() <= 0.5
    assert 0.5 <= backoff.next_delay() <= 1.0


def test_backoff_with_initial_over_the_maximum_is_capped() -> None:
    backoff = Backoff(10.0, 3.0, random.Random(5))
    assert all(1.5 <= backoff.next_delay() <= 3.0 for _ in range(10))


# -- keepalive_timings -----------------------------------------------------------------------


def test_keepalive_notices_a_dead_host_within_the_window() -> None:
    # Every window the settings allow (BRIDGE_READER_KEEPALIVE 2..3600), in one loop so a
    # failure lists all the windows that are wrong at once.
    too_slow = {}
    for window in range(2, 3601):
        idle, interval, count = keepalive_timings(window)
        assert min(idle, interval, count) >= 1, window
        # Linux gives up after the idle time plus `count` unanswered probes `interval` apart.
        if idle + interval * count > window:
            too_slow[window] = (idle, interval, count)
    assert not too_slow, f"windows noticed too late (idle, interval, count): {too_slow}"


@pytest.mark.parametrize("window", [5.5, 7.5, 30.9, 3599.99])  # 2..4 fail above
def test_keepalive_fractional_window_is_rounded_down_not_up(window: float) -> None:
    idle, interval, count = keepalive_timings(window)
    assert all(isinstance(value, int) and value >= 1 for value in (idle, interval, count))
    assert idle + interval * count <= window


# -- describe_error --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), ["refused", "02C0"]),
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), ["reset"]),
        (TimeoutError("timed out"), ["timed out"]),
        (
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            ["resolve", "Name or service not known"],
        ),
        (OSError(errno.EHOSTUNREACH, "No route to host"), ["unreachable", "No route to host"]),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), ["unreachable"]),
    ],
    ids=[
        "refused",
        "reset",
        "timeout",
        "gaierror",
        "ehostunreach",
        "enetunreach",
    ],
)
def test_describe_error_says_why(exc: BaseException, words: list[str]) -> None:
    message = describe_error(exc)
    for word in words:
        assert word in message


def test_describe_error_of_a_real_refused_connection() -> None:
    with pytest.raises(ConnectionRefusedError) as caught:
        socket.create_connection(("127.0.0.1", free_port()), timeout=2).close()
    assert "connection refused" in describe_error(caught.value)


def test_describe_error_keeps_unknown_errors_readable() -> None:
    message = describe_error(OSError(errno.EPROTO, "Protocol error"))
    assert message.startswith("OSError")
    assert "Protocol error" in message


# -- ReaderLink against the simulator --------------------------------------------------------


class FakeSink:
    """The link's port (``ReaderSink``), recording what it is handed, for the test thread."""

    def __init__(self) -> None:
        self.frames_seen: queue.Queue[Frame] = queue.Queue()
        self.skipped_seen: queue.Queue[Skipped] = queue.Queue()
        self.states: queue.Queue[tuple[bool, str]] = queue.Queue()
        self.down = threading.Event()

    def frames(self, frames: list[Frame]) -> None:
        for frame in frames:
            self.frames_seen.put(frame)

    def skipped(self, skipped: Skipped) -> None:
        self.skipped_seen.put(skipped)

    def link_changed(self, up: bool, reason: str) -> None:
        self.states.put((up, reason))
        if not up:
            self.down.set()


@dataclass
class LinkRun:
    """A running link, the loop it runs on, and what it reported to its sink."""

    link: ReaderLink
    sink: FakeSink
    loop: LoopThread

    def wait_state(self, up: bool, timeout: float = 5.0) -> str:
        """The reason of the next state change to ``up``; other changes are passed over."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                remaining = max(0.0, deadline - time.monotonic())
                state, reason = self.sink.states.get(timeout=remaining)
            except queue.Empty:
                raise AssertionError(f"the link did not go {'up' if up else 'down'}") from None
            if state == up:
                return reason

    def next_frame(self, timeout: float = 5.0) -> Frame:
        try:
            return self.sink.frames_seen.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no frame in {timeout} s") from None

    def send(self, data: bytes, deadline: float, gap: float = 0.0) -> None:
        self.loop.call(self.link.send(data, deadline, gap))


StartLink = Callable[..., LinkRun]


def reader_options(port: int, **overrides: float) -> ReaderOptions:
    values: dict[str, float] = {
        "connect_timeout": 2.0,
        "keepalive": 30.0,
        "backoff_max": 1.0,
        "max_object": 65536,
    }
    values.update(overrides)
    return ReaderOptions(
        host="127.0.0.1",
        port=port,
        connect_timeout=values["connect_timeout"],
        keepalive=values["keepalive"],
        backoff_max=values["backoff_max"],
        max_object=int(values["max_object"]),
    )


@pytest.fixture
def start_link() -> Iterator[Callable[..., LinkRun]]:
    runs: list[tuple[LinkRun, concurrent.futures.Future[None]]] = []

    def start(port: int, **overrides: float) -> LinkRun:
        loop = LoopThread()
        sink = FakeSink()

        async def make() -> ReaderLink:
            return ReaderLink(reader_options(port, **overrides), sink)

        link = loop.call(make())
        task = loop.spawn(link.run())
        run = LinkRun(link, sink, loop)
        runs.append((run, task))
        return run

    yield start
    for run, task in runs:
        run.loop.ask(run.link.stop)
        assert run.loop.wait_done(task, 5), "ReaderLink.run did not end after stop()"
        run.loop.close()


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(port=0, seed=1) as simulator:
        yield simulator


def compact(event: dict[str, object]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def test_link_comes_up_and_delivers_frames(sim: Simulator, start_link: StartLink) -> None:
    run = start_link(sim.port)
    assert run.wait_state(up=True) == "connected"
    assert sim.wait_client()
    assert run.link.is_up
    events = [sim.factory.make(profile) for profile in ("nfc", "ble", "uhf")]
    for event in events:
        sim.emit(event)
    frames = [run.next_frame() for _ in events]
    assert [frame.payload for frame in frames] == [compact(event) for event in events]
    assert [list(frame.fields) for frame in frames] == [list(event) for event in events]
    assert run.link.counters.frames == 3
    assert run.link.counters.connects == 1
    assert run.sink.skipped_seen.empty()


def test_socket_tuned_for_keepalive_nodelay_and_blocking_reads(
    sim: Simulator, start_link: StartLink
) -> None:
    run = start_link(sim.port, keepalive=30.0)
    run.wait_state(up=True)
    # Read-only peek at the live socket: the options are only observable on it.
    assert run.link._conn is not None
    sock = run.link._conn.sock
    idle, interval, count = keepalive_timings(30.0)
    tcp = socket.IPPROTO_TCP
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(tcp, socket.TCP_KEEPIDLE) == idle
    assert sock.getsockopt(tcp, socket.TCP_KEEPINTVL) == interval
    assert sock.getsockopt(tcp, socket.TCP_KEEPCNT) == count
    assert sock.getsockopt(tcp, socket.TCP_USER_TIMEOUT) == 30_000
    assert sock.getsockopt(tcp, socket.TCP_NODELAY) == 1
    # Non-blocking: a read waits on the event loop and never times out (a timeout would call
    # a silent reader dead).
    assert sock.gettimeout() == 0.0


def test_silent_reader_is_not_dead(sim: Simulator, start_link: StartLink) -> None:
    # The tightest keepalive allowed (2 s): probes go out during the wait and are answered.
    run = start_link(sim.port, keepalive=2.0)
    run.wait_state(up=True)
    assert sim.wait_client()
    # The one wall-clock wait: "nothing happens" has no event to await. 3 s of silence is
    # longer than the keepalive window and the quick-close window, shorter than a test budget.
    assert not run.sink.down.wait(3.0), f"silent link went down: {run.link.down_reason}"
    assert run.link.is_up
    assert run.link.counters.connects == 1
    assert sim.accepted == 1
    event = sim.factory.make("nfc")
    sim.emit(event)
    assert run.next_frame().payload == compact(event)


def test_link_survives_an_object_the_json_parser_cannot_take(
    sim: Simulator, start_link: StartLink
) -> None:
    run = start_link(sim.port)
    run.wait_state(up=True)
    assert sim.wait_client()
    # Balanced and well under the 64 KiB cap, but deeper than Python's json recursion limit.
    deep = b'{"TagData":' + b"[" * 5000 + b"]" * 5000 + b"}\r\n"
    sim.send_raw(deep)
    event = sim.factory.make("nfc")
    sim.emit(event)
    assert run.next_frame().payload == compact(event)
    assert run.link.counters.skipped == 1
    assert run.link.counters.connects == 1


def test_send_while_down_fails_at_the_deadline_and_is_never_sent_late(
    start_link: StartLink,
) -> None:
    port = free_port()  # nothing listens yet: the link is down, retrying
    run = start_link(port)
    started = time.monotonic()
    with pytest.raises(CommandNotSentError, match="link is down") as caught:
        run.send(b'{"Sequence":"60"}', started + 0.5)
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 1.5
    assert "refused" in str(caught.value)
    with Simulator(port=port) as sim:
        assert sim.wait_client()
        run.wait_state(up=True)
        run.send(b'{"Sequence":"0E"}', time.monotonic() + 2)
        # TCP keeps order: had the expired command been written, it would come first.
        assert sim.commands.get(timeout=5) == {"Sequence": "0E"}
        assert sim.commands.empty()


def test_sends_are_spaced_by_the_gap_and_never_pushed_past_the_deadline(
    sim: Simulator, start_link: StartLink
) -> None:
    run = start_link(sim.port)
    run.wait_state(up=True)
    gap = 0.3
    run.send(b'{"Sequence":"0E"}', time.monotonic() + 2, gap)
    first_done = time.monotonic()
    run.send(b'{"Sequence":"60"}', time.monotonic() + 2, gap)
    second_done = time.monotonic()
    assert second_done - first_done >= gap - 0.01  # measured after the first write returned
    assert sim.commands.get(timeout=5) == {"Sequence": "0E"}
    assert sim.commands.get(timeout=5) == {"Sequence": "60"}
    # A gap that would end after the deadline: refused at once, not sent late.
    with pytest.raises(CommandNotSentError, match="busy past the deadline"):
        run.send(b'{"Sequence":"61"}', time.monotonic() + 0.1, 1.0)
    run.send(b'{"Sequence":"05"}', time.monotonic() + 3, 1.0)
    assert sim.commands.get(timeout=5) == {"Sequence": "05"}  # the refused one never followed


def test_write_now_writes_a_command_whole_at_once_or_nothing(
    sim: Simulator, start_link: StartLink
) -> None:
    port = free_port()
    down = start_link(port)
    assert not down.loop.ask(lambda: down.link.write_now(b'{"Sequence":"60"}'))  # link down
    run = start_link(sim.port)
    run.wait_state(up=True)
    assert run.loop.ask(lambda: run.link.write_now(b'{"Sequence":"0E"}', 0.5))
    # within the gap: nothing written, the caller takes send()'s way
    assert not run.loop.ask(lambda: run.link.write_now(b'{"Sequence":"61"}', 0.5))
    run.send(b'{"Sequence":"05"}', time.monotonic() + 3)
    assert sim.commands.get(timeout=5) == {"Sequence": "0E"}
    assert sim.commands.get(timeout=5) == {"Sequence": "05"}  # TCP keeps order: no 61


def test_write_now_restarts_the_link_rather_than_leave_half_a_command_to_follow_later(
    start_link: StartLink,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:  # a reader that never reads
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        run = start_link(server.getsockname()[1])
        peer, _ = server.accept()
        with peer:
            peer.send(b'{"TagId":"01"}')  # data: the link counts as up at once
            run.wait_state(up=True)
            too_big = b"x" * 8_000_000  # more than the socket takes: a short write
            assert not run.loop.ask(lambda: run.link.write_now(too_big))
            assert "only part of a command" in run.wait_state(up=False)


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_reader_closing_or_resetting_is_told_and_reconnected_quickly(
    start_link: StartLink, reset: bool
) -> None:
    # A bare server socket, closed from the thread that owns it, so the RST really goes out.
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(5)
        run = start_link(server.getsockname()[1])
        conn, _ = server.accept()
        run.wait_state(up=True)
        conn.sendall(b'{"Interface":"13.56","TagId":"04AB","Uptime":"1:2.000"}\r\n')
        assert (
            run.next_frame().payload == b'{"Interface":"13.56","TagId":"04AB","Uptime":"1:2.000"}'
        )
        if reset:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            conn.shutdown(socket.SHUT_RDWR)
        conn.close()
        reason = run.wait_state(up=False)
        went_down = time.monotonic()
        assert reason == run.link.down_reason
        if reset:
            assert "reset" in reason
        else:
            assert reason == "the reader closed the connection"  # not "another client"
        again, _ = server.accept()
        with again:
            assert time.monotonic() - went_down <= 0.5 + 0.3  # first retry within 0.5 s
            run.wait_state(up=True)
            assert run.link.counters.connects == 2


def test_busy_reader_is_reported_as_another_client_holding_the_slot(
    start_link: StartLink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bridge.reader")
    with (
        Simulator(port=0, busy="close") as sim,
        socket.create_connection(("127.0.0.1", sim.port), timeout=5),
    ):
        assert sim.wait_client()  # the plain socket holds the reader's single slot
        run = start_link(sim.port)
        # It retries, and is turned away again: the link never counts as up, so it never
        # "goes down" either - no "online" flapping, no command written into it.
        wait_until(lambda: run.link.counters.connects >= 2, "a second attempt")
        assert "another client" in run.link.down_reason
        assert not run.link.is_up
        assert run.sink.states.empty()
        warnings = [r.getMessage() for r in caplog.records if r.name == "bridge.reader"]
        assert any("link down" in m and "another client" in m for m in warnings), warnings
        assert sim.turned_away >= 2
        assert sim.accepted == 1
