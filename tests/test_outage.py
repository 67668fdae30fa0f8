"""Broker outages lose no event: kill and restart a real Mosquitto, start without one, crash.

The bridge's side of each outage is real (its broker connection dies with a SIGKILLed
Mosquitto). The tests that must *see* what the bridge delivers after a restart put a
:class:`Gate` between the bridge and the broker: a restarted broker has forgotten every
subscription, so the test's subscriber has to resubscribe before the bridge reconnects, or
the broker would drop those events for want of a subscriber. The gate decides only that
order; shut, it refuses connections exactly as a stopped broker does.
"""

from __future__ import annotations

import json
import logging
import queue
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from bridge.app import Bridge
from bridge.config import MB, load_settings
from bridge.delivery import WINDOW
from bridge.simulator import Simulator
from bridge.spool_outbox import SPOOL_ROW_OVERHEAD
from tests.support import (
    Broker,
    Subscriber,
    bridge_command,
    bridge_env,
    free_port,
    local_settings,
    reaped,
    wait_until,
)

if TYPE_CHECKING:  # conftest is pytest's to import; only its types are needed here
    from tests.support import Received

pytestmark = pytest.mark.integration

# -- helpers ---------------------------------------------------------------------------


def watch_resubscribe(sub: Subscriber) -> threading.Event:
    """An event set when ``sub`` has (re)subscribed; its reconnect delay made short."""
    done = threading.Event()
    sub.client.on_subscribe = lambda *args: done.set()
    sub.client.reconnect_delay_set(1, 1)
    return done


def tag(index: int) -> str:
    return f"04{index:012X}"


def index_of(message: Received) -> int:
    tag_id = json.loads(message.payload)["TagId"]
    assert isinstance(tag_id, str)
    return int(tag_id[2:], 16)


def emit_and_wait_read(bridge: Bridge, simulator: Simulator, index: int) -> bytes:
    """Emit one event and wait until the bridge has taken it from the reader link."""
    before = bridge.reader.counters.frames
    data = simulator.emit(simulator.factory.make("uhf", tag_id=tag(index)))
    wait_until(lambda: bridge.reader.counters.frames > before, f"the bridge to read event {index}")
    return data


def emit_range(simulator: Simulator, start: int, stop: int) -> None:
    for index in range(start, stop):
        simulator.emit(simulator.factory.make("nfc", tag_id=tag(index)))


class Gate:
    """A TCP relay the bridge dials instead of the broker; shut, nothing listens on its port."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.upstream_port = broker.port
        self.port = free_port()
        self._stop: threading.Event | None = None
        self._acceptor: threading.Thread | None = None
        self._pumps: list[threading.Thread] = []
        self._flowing = threading.Event()
        self._flowing.set()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._from_bridge = bytearray()

    def open(self) -> None:
        assert self._acceptor is None, "already open"
        listener = socket.create_server(("127.0.0.1", self.port))
        self._stop = threading.Event()
        self._acceptor = threading.Thread(
            target=self._accept_loop, args=(listener, self._stop), daemon=True
        )
        self._acceptor.start()

    def shut(self) -> None:
        """Stop listening (new connections are refused); relayed ones live on."""
        if self._acceptor is not None and self._stop is not None:
            self._stop.set()
            self._acceptor.join(5)
        self._acceptor = self._stop = None

    def stall(self) -> None:
        """Relayed connections stay up but carry nothing, in either direction."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self.resume()
        self.shut()
        for sock in self._sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for pump in self._pumps:
            pump.join(5)
        for sock in self._sockets:
            sock.close()

    def _accept_loop(self, listener: socket.socket, stop: threading.Event) -> None:
        with listener:
            while not stop.is_set():
                ready, _, _ = select.select([listener], [], [], 0.05)
                if ready:
                    downstream, _ = listener.accept()
                    self._relay(downstream)

    def _relay(self, downstream: socket.socket) -> None:
        self._sockets.append(downstream)
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
        except OSError:
            downstream.close()  # broker down: the bridge sees its connection end
            return
        upstream.settimeout(None)
        self._sockets.append(upstream)
        for source, target in ((downstream, upstream), (upstream, downstream)):
            chunks: queue.Queue[bytes | None] = queue.Queue()
            record = source is downstream
            for job, args in (
                (self._read, (source, chunks, record)),
                (self._write, (chunks, source, target)),
            ):
                thread = threading.Thread(target=job, args=args, daemon=True)
                thread.start()
                self._pumps.append(thread)

    def _read(self, source: socket.socket, chunks: queue.Queue[bytes | None], record: bool) -> None:
        """Reads on even while stalled, so that :meth:`has_seen` knows what the bridge sent."""
        with suppress(OSError):
            while data := source.recv(65536):
                if record:
                    with self._lock:
                        self._from_bridge += data
                chunks.put(data)
        chunks.put(None)

    def _write(
        self, chunks: queue.Queue[bytes | None], source: socket.socket, target: socket.socket
    ) -> None:
        with suppress(OSError):
            while (data := chunks.get()) is not None:
                self._flowing.wait()
                target.sendall(data)
        self._flowing.wait()  # stalled, not even the end passes (a black-holed path)
        for sock in (source, target):  # one side ended: end the other, as a broker crash does
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def has_seen(self, data: bytes) -> bool:
        """Whether the bridge has written ``data`` to the broker (delivered or not)."""
        with self._lock:
            return data in self._from_bridge


@pytest.fixture
def gate(broker: Broker) -> Iterator[Gate]:
    relay = Gate(broker)
    yield relay
    relay.close()


@pytest.fixture
def gated_bridge(
    gate: Gate, simulator: Simulator, device_id: str
) -> Iterator[Callable[..., Bridge]]:
    """Like ``make_bridge``, but the bridge reaches the broker through ``gate``."""
    started: list[Bridge] = []

    def make(**overrides: Any) -> Bridge:
        defaults = local_settings(simulator.port, gate.port, device_id)
        settings = load_settings(env_file=None, **{**defaults, **overrides})
        bridge = Bridge(settings)
        bridge.start()
        started.append(bridge)
        return bridge

    yield make
    for bridge in started:
        bridge.stop(timeout=1.0)


# -- the tests -------------------------------------------------------------------------

TOTAL = 10_000  # issue 3: 10,000 events at full speed, QoS 1
WARM_UP = 100  # events seen through before the stream that the kill interrupts
KILL_AT = 3000  # the emitter kills the broker right after emitting this many, and goes on
BEFORE_RESTART = 6000  # where the emitter stops
DOWN_BATCH = 200  # then emitted once the bridge knows the broker is gone: all must be "late"


@pytest.mark.slow
def test_no_event_lost_when_broker_killed_mid_stream(
    broker: Broker, gate: Gate, gated_bridge, simulator: Simulator, subscribe
):
    gate.open()
    bridge = gated_bridge()
    sub = subscribe(bridge.topics.event)
    resubscribed = watch_resubscribe(sub)
    assert simulator.wait_client()
    assert bridge.mqtt.wait_connected(10)

    emit_range(simulator, 0, WARM_UP)
    received = sub.take(WARM_UP, bridge.topics.event)

    def stream() -> None:
        emit_range(simulator, WARM_UP, KILL_AT)
        broker.kill()  # mid-stream: the bridge is still publishing, the emitter goes on
        gate.shut()
        emit_range(simulator, KILL_AT, BEFORE_RESTART)

    emitter = threading.Thread(target=stream)
    emitter.start()
    emitter.join(20)
    wait_until(lambda: not bridge.mqtt.is_connected, "the bridge to notice the broker is gone")
    # The old broker acknowledged these (a prefix, QoS 1 keeps order; acknowledgements still
    # in the killed connection are lost); all later ones are the bridge's to deliver again.
    acked_by_old_broker = bridge.mqtt.counters.published
    assert acked_by_old_broker <= KILL_AT

    emit_range(simulator, BEFORE_RESTART, BEFORE_RESTART + DOWN_BATCH)
    down_end = BEFORE_RESTART + DOWN_BATCH
    wait_until(lambda: bridge.reader.counters.frames == down_end, "the bridge to read them")
    wait_until(
        lambda: bridge.mqtt.backlog == down_end - acked_by_old_broker,
        "the bridge to hold every event the old broker did not acknowledge",
    )
    read_by = time.monotonic()  # every event was received (and timed) by the bridge before
    assert not bridge.mqtt.is_connected

    broker.start()
    assert resubscribed.wait(15), "the subscriber did not resubscribe after the restart"
    reopened = time.monotonic()
    gate.open()
    assert bridge.mqtt.wait_connected(40)
    emit_range(simulator, down_end, TOTAL)

    while index_of(received[-1]) != TOTAL - 1:
        received.append(sub.next(20, bridge.topics.event))
    wait_until(lambda: bridge.mqtt.backlog == 0, "the bridge's backlog to drain")

    assert bridge.mqtt.counters.published == TOTAL
    assert bridge.mqtt.dropped == {"size": 0, "age": 0}
    assert bridge.mqtt.counters.rejected == 0

    by_seq: dict[str, Received] = {}
    unique: list[Received] = []
    for message in received:
        seq = message.properties["seq"]
        if seq in by_seq:  # a QoS 1 duplicate: the same event again
            assert message.payload == by_seq[seq].payload
            continue
        by_seq[seq] = message
        unique.append(message)
    order = [index_of(message) for message in unique]
    assert order == sorted(set(order)), "events arrived out of order or twice under two seqs"
    seqs = [int(message.properties["seq"]) for message in unique]
    assert seqs == sorted(seqs)
    missing = sorted(set(range(TOTAL)) - set(order))
    # The subscriber cannot see what the killed broker acknowledged to the bridge but had not
    # yet forwarded; everything else - all the bridge still held at the kill - must arrive.
    assert all(index < acked_by_old_broker for index in missing), missing

    for message in unique:
        index = index_of(message)
        if BEFORE_RESTART <= index < down_end:
            assert message.properties.get("late") == "true", index
            age_ms = int(message.properties["age_ms"])
            assert age_ms > 0
            assert age_ms >= int((reopened - read_by) * 1000), (index, age_ms)
        elif index >= down_end:
            assert "late" not in message.properties, index
            # Read after the reconnection: age_ms only if it waited over a second behind
            # the backlog (README, Topics: an outage or a burst).
            assert int(message.properties.get("age_ms", 1000)) >= 1000, index


@pytest.mark.slow
def test_meta_and_status_retained_again_after_broker_restart(
    broker: Broker, make_bridge, simulator: Simulator, subscribe
):
    bridge = make_bridge(reader_serial="SN-123", reader_location="door 4")
    first = subscribe(bridge.topics.status)
    first.wait_for(lambda m: m.json() == {"State": "online,ready"})

    broker.kill()  # persistence is off: the new broker knows no retained message
    broker.start()
    watcher = subscribe(f"{bridge.topics.base}/#")
    awaited = {bridge.topics.meta, bridge.topics.status}
    while awaited:  # live or retained, in either order: the bridge announced itself again
        message = watcher.next(20)
        if message.topic == bridge.topics.meta or message.json() == {"State": "online,ready"}:
            awaited.discard(message.topic)

    fresh = subscribe(f"{bridge.topics.base}/#")
    seen: dict[str, Received] = {}
    for _ in range(2):
        message = fresh.next()
        seen[message.topic] = message
    assert set(seen) == {bridge.topics.meta, bridge.topics.status}
    assert all(message.retain for message in seen.values())
    assert seen[bridge.topics.status].json() == {"State": "online,ready"}
    meta = seen[bridge.topics.meta].json()
    assert isinstance(meta, dict)
    assert meta["VendorName"] == "SpringCard"
    assert meta["SerialNumber"] == "SN-123"
    assert meta["Location"] == "door 4"
    assert meta["IpAddress"] == "127.0.0.1"


SMALL_MB = 0.002
"""A spool bound (BRIDGE_SPOOL_MAX_MB) of about a dozen events of the simulator's."""


def newest_within(sent: list[bytes], mb: float) -> int:
    """How many of the newest ``sent`` events a spool of ``mb`` holds: the byte bound drops
    the oldest until the rest fits, so what stays is the longest suffix that fits."""
    room, kept = int(mb * MB), 0
    for data in reversed(sent):
        room -= len(data.rstrip(b"\r\n")) + SPOOL_ROW_OVERHEAD
        if room < 0:
            break
        kept += 1
    return kept


@pytest.mark.slow
def test_outbox_keeps_newest_events_and_warns_when_full(
    gate: Gate, gated_bridge, simulator: Simulator, subscribe, caplog
):
    broker = gate.broker
    gate.open()
    bridge = gated_bridge(spool_max_mb=SMALL_MB)
    status = subscribe(bridge.topics.status)
    status.wait_for(lambda m: m.json() == {"State": "online,ready"})
    sub = subscribe(bridge.topics.event)
    resubscribed = watch_resubscribe(sub)

    broker.kill()
    gate.shut()
    wait_until(lambda: not bridge.mqtt.is_connected, "the bridge to notice the broker is gone")
    sent = [simulator.emit(simulator.factory.make("nfc", tag_id=tag(i))) for i in range(25)]
    wait_until(lambda: bridge.reader.counters.frames == 25, "the bridge to read 25 events")
    kept = newest_within(sent, SMALL_MB)
    assert 5 < kept < 20
    assert bridge.mqtt.dropped == {"size": 25 - kept, "age": 0}
    assert bridge.mqtt.backlog == kept
    warnings = [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.WARNING and "BRIDGE_SPOOL_MAX_MB" in record.getMessage()
    ]
    assert len(warnings) == 1, warnings  # the first drop; the rest go into a summary
    assert "reason size" in warnings[0]

    broker.start()
    assert resubscribed.wait(15)
    gate.open()
    delivered = sub.take(kept, bridge.topics.event, timeout=40)
    assert [m.payload for m in delivered] == [data.rstrip(b"\r\n") for data in sent[-kept:]]
    assert all(m.properties.get("late") == "true" for m in delivered)

    # Nothing else follows the newest: the next event is a new one.
    wait_until(lambda: bridge.mqtt.backlog == 0, "the bridge's backlog to drain")
    after = simulator.emit(simulator.factory.make("nfc", tag_id=tag(99)))
    assert sub.next(10, bridge.topics.event).payload == after.rstrip(b"\r\n")
    assert bridge.mqtt.dropped == {"size": 25 - kept, "age": 0}


@pytest.mark.slow
def test_full_outbox_drops_older_events_never_newer_ones(
    gate: Gate, gated_bridge, simulator: Simulator, subscribe
):
    """A broker that stops answering without closing the link (a black-holed path): the
    window's events are in flight and stay; of those that wait, the oldest are dropped."""
    gate.open()
    bridge = gated_bridge(spool_max_mb=SMALL_MB)
    subscribe(bridge.topics.status).wait_for(lambda m: m.json() == {"State": "online,ready"})
    sub = subscribe(bridge.topics.event)

    gate.stall()
    sent = [emit_and_wait_read(bridge, simulator, index) for index in range(WINDOW + 30)]
    wait_until(
        lambda: bridge.mqtt.backlog + bridge.mqtt.dropped["size"] == len(sent),
        "every event held or dropped",
    )
    # In flight: a window of messages, each event with its bridge/live copy (discovery is on).
    flown = sum(gate.has_seen(tag(index).encode()) for index in range(len(sent)))
    assert flown == WINDOW // 2
    waiting = newest_within(sent[flown:], SMALL_MB)
    assert 5 < waiting < 20
    assert bridge.mqtt.backlog == flown + waiting
    assert bridge.mqtt.dropped == {"size": len(sent) - flown - waiting, "age": 0}
    gate.resume()
    wait_until(lambda: bridge.mqtt.backlog == 0, "the bridge's backlog to drain")

    delivered = sub.take(flown + waiting, bridge.topics.event)
    expected = sent[:flown] + sent[len(sent) - waiting :]
    assert [m.payload for m in delivered] == [data.rstrip(b"\r\n") for data in expected]


@pytest.mark.slow
def test_no_more_events_in_flight_than_the_brokers_receive_maximum(
    tmp_path: Path, simulator: Simulator, device_id: str, subscribe
):
    """MQTT 5 3.3.4: a broker that takes 5 QoS 1 messages at a time (Mosquitto's
    max_inflight_messages, sent as Receive Maximum) gets no sixth until one is acknowledged."""
    (tmp_path / "strict").mkdir()
    strict = Broker(tmp_path / "strict", max_inflight=5).start()
    gate = Gate(strict)
    gate.open()
    settings = load_settings(
        env_file=None,
        **local_settings(
            simulator.port,
            gate.port,
            device_id,
            ha_discovery=False,  # no bridge/live copies: one message per event
            spool_path=str(tmp_path / "spool.db"),
        ),
    )
    bridge = Bridge(settings)
    bridge.start()
    try:
        status = Subscriber(strict.port, bridge.topics.status)
        status.wait_for(lambda m: m.json() == {"State": "online,ready"})
        status.close()
        in_flight = bridge.session.delivery.in_flight
        wait_until(lambda: bridge.ask(in_flight) == 0, "meta and status acknowledged")
        gate.stall()
        sent = [emit_and_wait_read(bridge, simulator, index) for index in range(12)]
        wait_until(lambda: gate.has_seen(tag(4).encode()), "five events in flight")
        wait_until(lambda: bridge.mqtt.backlog == 12, "every event held")
        assert [gate.has_seen(tag(i).encode()) for i in range(12)] == [True] * 5 + [False] * 7
        gate.resume()
        wait_until(lambda: bridge.mqtt.backlog == 0, "the backlog to drain")
        assert bridge.mqtt.counters.published == len(sent)
    finally:
        bridge.stop(timeout=1.0)
        gate.close()
        strict.stop()


@pytest.mark.slow
def test_a_broker_that_stops_answering_is_reported_once_in_words(
    gate: Gate, gated_bridge, subscribe, caplog
):
    """paho reports a keepalive timeout through on_disconnect twice; one line must say what
    happened, and the second call must not read as a refused connection attempt."""
    gate.open()
    bridge = gated_bridge(mqtt_keepalive=5)
    subscribe(bridge.topics.status).wait_for(lambda m: m.json() == {"State": "online,ready"})
    gate.stall()  # the connection stays up and carries nothing: no PINGRESP comes back
    wait_until(lambda: not bridge.mqtt.is_connected, "the keepalive timeout", timeout=30)
    gate.resume()
    assert bridge.mqtt.wait_connected(30)
    lines = [r.getMessage() for r in caplog.records if r.name == "bridge.mqtt.watch"]
    lost = [line for line in lines if line.startswith("lost the broker")]
    assert len(lost) == 1, lines
    assert "did not answer a keepalive ping (BRIDGE_MQTT_KEEPALIVE=5 s)" in lost[0]
    assert not [line for line in lines if "before accepting it" in line], lines


@pytest.mark.slow
def test_bridge_started_while_broker_down_delivers_held_events(
    broker: Broker, gate: Gate, gated_bridge, simulator: Simulator, subscribe, *, caplog
):
    caplog.set_level(logging.INFO, logger="bridge.delivery")
    broker.kill()
    bridge = gated_bridge()  # the gate is shut too: nothing listens where the bridge dials
    assert simulator.wait_client()
    sent = [simulator.emit(simulator.factory.make("ble", tag_id=tag(i))) for i in range(5)]
    wait_until(lambda: bridge.reader.counters.frames == 5, "the bridge to read 5 events")
    assert not bridge.mqtt.is_connected
    assert bridge.mqtt.backlog == 5

    broker.start()
    sub = subscribe(f"{bridge.topics.base}/#")
    gate.open()
    delivered = sub.take(5, bridge.topics.event, timeout=40)
    assert [m.payload for m in delivered] == [data.rstrip(b"\r\n") for data in sent]
    assert all(m.properties.get("late") == "true" for m in delivered)
    assert all(int(m.properties["age_ms"]) > 0 for m in delivered)
    wait_until(lambda: bridge.mqtt.backlog == 0, "the bridge's backlog to drain")
    assert bridge.mqtt.counters.published == 5
    # Once the outage's backlog is delivered, one line says so.
    reports = [r.getMessage() for r in caplog.records if "late events" in r.getMessage()]
    assert len(reports) == 1, reports
    assert reports[0].startswith("delivered 5 late events, oldest ")


@pytest.mark.slow
def test_late_reads_arrive_on_rdr_evt_marked_late_and_never_on_bridge_live(
    gate: Gate, gated_bridge, simulator: Simulator, subscribe
):
    """README, Late reads: a read delivered after an outage is history, not a person at the door;
    Home Assistant's tag scanner and triggers read bridge/live, so it must never appear there."""
    broker = gate.broker
    gate.open()
    bridge = gated_bridge()  # Home Assistant discovery on (the default): bridge/live too
    sub = subscribe(f"{bridge.topics.base}/#")
    resubscribed = watch_resubscribe(sub)
    sub.wait_for(
        lambda m: m.topic == bridge.topics.status and m.json() == {"State": "online,ready"}
    )
    before = simulator.emit(simulator.factory.make("nfc", tag_id=tag(0))).rstrip(b"\r\n")
    assert sub.wait_for(lambda m: m.topic == bridge.topics.live).payload == before

    broker.kill()
    gate.shut()
    wait_until(lambda: not bridge.mqtt.is_connected, "the bridge to notice the broker is gone")
    held = [simulator.emit(simulator.factory.make("nfc", tag_id=tag(i))) for i in range(1, 4)]
    wait_until(lambda: bridge.mqtt.backlog == 3, "the bridge to hold three reads")
    broker.start()
    assert resubscribed.wait(15)
    gate.open()
    late = [sub.wait_for(lambda m: m.topic == bridge.topics.event, timeout=30) for _ in held]
    assert [m.payload for m in late] == [data.rstrip(b"\r\n") for data in held]
    assert all(m.properties.get("late") == "true" for m in late)
    after = simulator.emit(simulator.factory.make("nfc", tag_id=tag(9))).rstrip(b"\r\n")
    # The next thing on bridge/live is the new read: none of the three late ones came before.
    assert sub.wait_for(lambda m: m.topic == bridge.topics.live).payload == after


@pytest.mark.slow
def test_last_will_marks_a_killed_bridge_dead(
    broker: Broker, simulator: Simulator, subscribe, device_id: str, tmp_path: Path
):
    topic = f"springcard/springcore/{device_id}/status"
    sub = subscribe(topic)
    env = bridge_env(
        reader_host="127.0.0.1",
        reader_port=str(simulator.port),
        mqtt_host="127.0.0.1",
        mqtt_port=str(broker.port),
        mqtt_keepalive="5",
        device_id=device_id,
    )
    with (tmp_path / "bridge.log").open("wb") as log:
        process = subprocess.Popen(
            bridge_command("run"), cwd=tmp_path, env=env, stdout=log, stderr=log
        )
        with reaped(process):
            sub.wait_for(lambda m: m.json() == {"State": "online,ready"}, timeout=15)
            process.send_signal(signal.SIGKILL)
            assert process.wait(10) == -signal.SIGKILL
            will = sub.wait_for(lambda m: m.json() != {"State": "online,ready"}, timeout=5)
    assert will.json() == {"State": "offline,dead"}
    retained = subscribe(topic).next()
    assert retained.retain
    assert retained.json() == {"State": "offline,dead"}
