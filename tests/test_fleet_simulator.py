"""Tests for the fleet simulator: many readers on one event loop, each with its own client,
ticks, counters and commands; and ``simulate --readers N`` as a user runs it (a subprocess).

Every reader listens on a real loopback port and is read by a real TCP client on the same
loop. Nothing is awaited by sleeping: the fleet's ``wait_until`` wakes on each change (a
connection, a command, an event sent), and a client waits for bytes or for the end of its
stream. Timing is checked on the computed schedule (phases, due times), never on a stopwatch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path

import pytest

from bridge.fleet_simulator import FleetSimulator, PortUnavailableError, counter_of, tag_id_for
from bridge.protocol import Frame, StreamDecoder
from tests.support import bridge_command, bridge_env, reaped
from tests.test_simulator import assert_one_line_exit_2, run_simulate

SEQUENCE_60 = b'{"Sequence":"60"}'


class Client:
    """A host connected to one reader of the fleet: reads its events, writes commands."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._decoder = StreamDecoder()
        self._events: list[dict[str, object]] = []

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def events(self, count: int) -> list[dict[str, object]]:
        while len(self._events) < count:
            data = await self.reader.read(4096)
            assert data, "the reader closed the connection"
            items = self._decoder.feed(data)
            assert all(isinstance(item, Frame) for item in items), items
            self._events += [item.fields for item in items if isinstance(item, Frame)]
        taken, self._events = self._events[:count], self._events[count:]
        return taken

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def running(fleet: FleetSimulator) -> AsyncIterator[FleetSimulator]:
    await fleet.start()
    try:
        yield fleet
    finally:
        await fleet.stop()


def run(scenario: Coroutine[object, object, None]) -> None:
    """Run a test's coroutine on a fresh loop, bounded in time."""
    asyncio.run(asyncio.wait_for(scenario, 30))


def consecutive_free_ports(count: int) -> int:
    """The first of ``count`` consecutive loopback ports that were free a moment ago."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = int(probe.getsockname()[1])
        if first + count > 65536:
            continue
        with contextlib.ExitStack() as held:
            try:
                for port in range(first, first + count):
                    held.enter_context(socket.create_server(("127.0.0.1", port)))
            except OSError:
                continue
        return first
    raise AssertionError(f"no {count} consecutive free ports found")


# -- events and their counters -----------------------------------------------------------------


def test_each_reader_sends_its_client_events_numbered_from_0() -> None:
    async def scenario() -> None:
        first = consecutive_free_ports(3)
        async with running(FleetSimulator("127.0.0.1", first, 3, rate=50.0, seed=1)) as fleet:
            assert fleet.ports == [first, first + 1, first + 2]
            clients = [await Client.connect(port) for port in fleet.ports]
            received = [await client.events(4) for client in clients]
            for client in clients:
                await client.close()
        for events, reader in zip(received, fleet.readers, strict=True):
            assert [counter_of(event) for event in events] == [0, 1, 2, 3]
            assert reader.sent >= 4
            for event in events:  # the bench's scheme: an NFC read numbered "%014X"
                assert event["Interface"] == "13.56"
                assert event["TagData"] == "00" + str(event["TagId"])
                assert list(event) == [
                    "Interface",
                    "Protocol",
                    "Template",
                    "TagId",
                    "TagData",
                    "Uptime",
                ]

    run(scenario())


@pytest.mark.parametrize("profile", ["nfc", "ble", "uhf"])
def test_every_profile_carries_the_counter_in_a_tag_id_of_its_shape(profile: str) -> None:
    lengths = {"nfc": 14, "ble": 12, "uhf": 24}
    for number in (0, 1, 0xABCDEF, 2**48 - 1):
        tag_id = tag_id_for(profile, number)
        assert len(tag_id) == lengths[profile]
        assert counter_of({"TagId": tag_id}) == number
    assert tag_id_for("uhf", 7).startswith("E280")


def test_ticks_without_a_client_are_missed_not_queued() -> None:
    async def scenario() -> None:
        async with running(FleetSimulator(readers=1, rate=200.0)) as fleet:
            reader = fleet.readers[0]
            await fleet.wait_until(lambda: reader.missed >= 3)
            client = await Client.connect(reader.port)
            (event,) = await client.events(1)
            await client.close()
        assert counter_of(event) == 0  # the dropped ticks took no number and were not sent
        assert reader.sent >= 1
        assert reader.missed >= 3

    run(scenario())


def test_rate_0_schedules_nothing_and_sends_nothing() -> None:
    async def scenario() -> None:
        fleet = FleetSimulator(readers=3, rate=0.0)
        async with running(fleet):
            assert [reader.next_due for reader in fleet.readers] == [None] * 3
            client = await Client.connect(fleet.ports[1])
            client.writer.write(SEQUENCE_60)
            await fleet.wait_until(lambda: fleet.readers[1].commands == 1)
        assert await client.reader.read() == b""  # everything up to the end: nothing
        await client.close()
        assert [(reader.sent, reader.missed) for reader in fleet.readers] == [(0, 0)] * 3

    run(scenario())


# -- the schedule ------------------------------------------------------------------------------


def test_readers_start_at_different_phases_of_their_period() -> None:
    async def scenario() -> None:
        async with running(FleetSimulator(readers=20, rate=1.0)) as fleet:
            phases = [reader.phase for reader in fleet.readers]
            dues = [reader.next_due for reader in fleet.readers]
        assert all(0.0 <= phase < 1.0 for phase in phases)
        assert max(phases) - min(phases) > 0.001  # not all within 1 ms of each other
        assert len(set(phases)) == 20
        for phase, due in zip(phases, dues, strict=True):  # each first tick is at its phase
            assert due == pytest.approx(fleet.started_at + phase, abs=1e-9)

    run(scenario())


def test_a_reader_ticks_on_its_own_grid_of_periods() -> None:
    async def scenario() -> None:
        async with running(FleetSimulator(readers=2, rate=100.0)) as fleet:
            reader = fleet.readers[1]
            await fleet.wait_until(lambda: reader.missed >= 5)
            due = reader.next_due
        assert due is not None
        ticks = (due - fleet.started_at - reader.phase) / 0.01
        assert ticks == pytest.approx(round(ticks), abs=1e-6)  # no drift off start + phase + k/rate
        assert round(ticks) >= 5  # (float sums: 5 ticks can come out as 4.99999999998)

    run(scenario())


# -- clients and commands ----------------------------------------------------------------------


def test_a_second_client_is_closed_while_the_first_is_served() -> None:
    async def scenario() -> None:
        async with running(FleetSimulator(readers=2, rate=0.0)) as fleet:
            reader = fleet.readers[0]
            first = await Client.connect(reader.port)
            await fleet.wait_until(lambda: reader.has_client)
            second = await Client.connect(reader.port)
            assert await second.reader.read() == b""  # closed at once, nothing sent
            first.writer.write(SEQUENCE_60)  # the first one is still served
            await fleet.wait_until(lambda: reader.commands == 1)
            assert (reader.accepted, reader.turned_away) == (1, 1)
            await first.close()
            await fleet.wait_until(lambda: not reader.has_client)
            third = await Client.connect(reader.port)  # the slot is free again
            await fleet.wait_until(lambda: reader.accepted == 2)
            for client in (second, third):
                await client.close()

    run(scenario())


def test_busy_hang_holds_a_second_client_open_until_stop() -> None:
    async def scenario() -> None:
        fleet = FleetSimulator(readers=1, rate=200.0, busy="hang")
        async with running(fleet):
            reader = fleet.readers[0]
            first = await Client.connect(reader.port)
            await fleet.wait_until(lambda: reader.has_client)
            second = await Client.connect(reader.port)
            await fleet.wait_until(lambda: reader.turned_away == 1)
            await first.events(3)  # served on; the held one gets nothing
            assert not second.reader.at_eof()
        assert await second.reader.read() == b""
        for client in (first, second):
            await client.close()

    run(scenario())


def test_commands_are_counted_per_reader_and_logged_with_their_meaning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.fleet_simulator")

    async def scenario() -> None:
        async with running(FleetSimulator(readers=3, rate=0.0)) as fleet:
            clients = [await Client.connect(port) for port in fleet.ports]
            clients[0].writer.write(SEQUENCE_60 + b'\r\n{"Buzz')  # the second one in two halves
            clients[2].writer.write(b'{"Leds":"0F00"}')
            await fleet.wait_until(lambda: fleet.readers[2].commands == 1)
            clients[0].writer.write(b'er":200}')
            await fleet.wait_until(lambda: fleet.readers[0].commands == 2)
            assert [reader.commands for reader in fleet.readers] == [2, 0, 1]
            for client in clients:
                await client.close()
        port = fleet.ports[0]
        assert (
            f'reader 0 (port {port}): command {{"Sequence":"60"}} -> play sequence 60'
            in caplog.text
        )
        assert f'reader 0 (port {port}): command {{"Buzzer":200}} -> beep 200 ms' in caplog.text
        assert f"reader 2 (port {fleet.ports[2]}): command" in caplog.text

    run(scenario())


# -- starting --------------------------------------------------------------------------------------


def test_a_port_in_use_fails_the_start_and_frees_the_ports_taken() -> None:
    async def scenario() -> None:
        first = consecutive_free_ports(2)
        with socket.create_server(("127.0.0.1", first + 1)):
            fleet = FleetSimulator("127.0.0.1", first, 2)
            with pytest.raises(
                PortUnavailableError, match=f"127.0.0.1:{first + 1}: the port is in use"
            ):
                await fleet.start()
        with socket.create_server(("127.0.0.1", first)):  # not left listening
            pass

    run(scenario())


@pytest.mark.parametrize(
    ("first_port", "readers", "rate", "message"),
    [
        (0, 0, 1.0, "readers must be 1 or more, got 0"),
        (0, 2, -1.0, "rate must be 0 (no events) or more events per second, got -1.0"),
        (0, 2, math.nan, "got nan"),
        (0, 2, math.inf, "got inf"),
        (65535, 2, 1.0, "ports 65535-65536 are not all between 1 and 65535"),
        (-1, 2, 1.0, "ports -1-0"),
    ],
)
def test_bad_arguments_are_refused(
    first_port: int, readers: int, rate: float, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        FleetSimulator("127.0.0.1", first_port, readers, rate)


# -- the command line --------------------------------------------------------------------------


def test_command_line_port_in_use_is_one_line_and_exit_2() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_simulate("--readers", "3", "--port", str(port))
    assert_one_line_exit_2(result, f"127.0.0.1:{port}", "in use", "--port")


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (("--readers", "0"), ("--readers", "1 or more", "'0'")),
        (("--readers", "-2"), ("--readers", "'-2'")),
        (("--readers", "many"), ("--readers", "'many'")),
        (("--readers", "2", "--rate", "-1"), ("--rate", "'-1'")),
        (("--readers", "2", "--rate", "nan"), ("--rate", "'nan'")),
        (("--readers", "2", "--rate", "fast"), ("--rate", "'fast'")),
        (("--rate", "2"), ("--rate is for --readers 2 or more", "--interval")),
        (("--readers", "2", "--moves"), ("--moves is for one reader",)),
        (("--readers", "2", "--port", "65535"), ("--port 65535", "--readers 2", "65535")),
    ],
)
def test_bad_fleet_flags_are_one_line_and_exit_2(
    flags: tuple[str, ...], needles: tuple[str, ...]
) -> None:
    assert_one_line_exit_2(run_simulate(*flags), *needles)


@pytest.fixture
def fleet_process(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    command = bridge_command("simulate", "--readers", "3", "--port", "0", "--rate", "50")
    process = subprocess.Popen(
        command, cwd=tmp_path, env=bridge_env(), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    with reaped(process):
        yield process
    assert process.stderr is not None
    process.stderr.close()


def test_command_line_serves_every_reader_then_stops_on_sigterm(
    fleet_process: subprocess.Popen[bytes],
) -> None:
    assert fleet_process.stderr is not None
    line = b""
    while b"simulated readers listening" not in line:
        line = fleet_process.stderr.readline()
        assert line, "the simulator ended without listening"
    found = re.search(rb"ports ([\d, ]+) \(50 events/s each\)", line)
    assert found, line
    ports = [int(port) for port in found[1].split(b", ")]
    assert len(set(ports)) == 3  # --port 0: any free ports, not necessarily consecutive
    hosts = [socket.create_connection(("127.0.0.1", port), timeout=10) for port in ports]
    firsts = [first_event(host) for host in hosts]
    assert [counter_of(event) for event in firsts] == [0, 0, 0]
    fleet_process.send_signal(signal.SIGTERM)
    assert fleet_process.wait(10) == 0
    for host in hosts:
        with host:
            while host.recv(4096):  # events up to the stop, then the end of the stream
                pass
    rest = fleet_process.stderr.read().decode()
    assert "received SIGTERM, stopping" in rest
    assert "Traceback" not in rest


def first_event(host: socket.socket) -> dict[str, object]:
    decoder = StreamDecoder()
    while True:
        data = host.recv(4096)
        assert data, "the simulator closed the connection"
        for item in decoder.feed(data):
            if isinstance(item, Frame):
                return item.fields
