#!/usr/bin/env python3
"""Benchmark of the bridge against a bare baseline path, both measured in the same run.

``python scripts/bench.py`` (the full run, 10-15 minutes on two cores), ``--quick`` (about two
minutes; its phases are shorter than the issue asks), ``--seconds S`` (every phase S seconds),
``--skip-million``, ``--json out.json``. Not a pytest test (``tests/test_bench.py`` only
checks that a very short run produces every figure).

It starts, in a temporary work directory of its own:

* a Mosquitto on a free loopback port with a generated configuration that keeps the broker
  out of the way: ``max_queued_messages 0``, ``max_inflight_messages 0``,
  ``set_tcp_nodelay true``, ``persistence false``;
* one reader double per system under test: a TCP server in this process that serves one
  client, writes READER EVENTs separated by CR LF and timestamps every byte it receives
  (commands). Events stay flat and realistic (an NFC read); the tag id carries the event's
  number (``"TagId": "%014X"``) and ``"BenchT"`` the ``time.time_ns()`` of its write;
* the systems under test, each a subprocess: the bridge (``python -m bridge run``, durable
  spool on, discovery off, no command rate limit and no command gap) and the *bare path*
  (``python scripts/bench.py --baseline``): one loop that reads the socket, splits on CR LF
  and publishes each line with paho (MQTT v5, ``max_inflight_messages_set(100)``) - no
  validation, no spool, no user properties - and writes every message of its ``rdr/cmd``
  to the reader socket as it is. Both set TCP_NODELAY on both of their sockets (the bridge
  does it itself), so the comparison is not about Nagle's algorithm. One bridge and one bare
  path per QoS; the QoS 0 pair only runs the QoS 0 throughput phase;
* the subscriber, in this process: a minimal MQTT v5 client on a raw socket (QoS 1
  subscription to ``+/rdr/evt``, one PUBACK write per received batch), because paho's
  reader costs ~50 us of CPU per message on this kind of machine, which would cap the
  baseline near 10,000 events/s and steal a core from the systems under test.
  ``--paho-subscriber`` uses paho instead. Commands are published with paho (QoS 1).

The figures, each for the bridge and for the bare path:

* event latency: ``time.time_ns()`` just before the reader double writes an event, to
  ``time.time_ns()`` when the subscriber's ``recv()`` returned it; paced (open loop) at 10,
  200 and 2,000 events/s. At 10 events/s both paths run at once, their events interleaved
  half a period (50 ms) apart so they never overlap; the other rates run one path at a time;
* throughput (QoS 0 and QoS 1), measured last (see below). *Saturation*: closed loop for
  ``--seconds`` (10 s in the full run) - the reader double keeps at most 2,000 events written
  and not yet received, as fast as they are taken; what
  arrived within that time divided by it. *Maximum sustained*: the highest paced (open loop)
  rate that holds for the same time with zero loss, the last event arriving within 0.5 s of
  its write and the reader double never held back. Searched from 90 % of saturation, 15 %
  lower a step until one holds or 10 % higher while they hold, then halving the gap between
  the highest rate that held and the lowest that failed (at most 5 steps). A reader
  paces its own events, and paced arrivals come in small batches that cost more per event
  than the closed loop's, so saturation overstates what a path sustains;
* command latency: ``time.time_ns()`` before paho's ``publish()`` of ``{"Sequence":"60"}`` on
  ``rdr/cmd``, to the reader double's ``recv()`` of the whole object; one at a time, 10 ms
  apart;
* CPU seconds (utime + stime from ``/proc/<pid>/stat``) per 10,000 events of the 2,000
  events/s phase, and of the QoS 1 saturation phase;
* RSS (``VmRSS``) before and after 1,000,000 events (closed loop, as fast as the path goes,
  after 100,000 warm-up events), and the peak (``VmHWM``) of the process up to then. The
  throughput steps that do not hold overload a path - the bridge then holds the excess in its
  spool (on disk, up to BRIDGE_SPOOL_MAX_MB), the bare path grows paho's queue without bound -
  so they run last, and their losses and the peak RSS including them are reported apart;
* a burst of 30,000 events (``--burst N``) written as fast as each path reads, the broker up
  all along: events lost (the target is 0) and the time from the first write to the last
  event received. It runs after the steady peak RSS is taken, before the throughput phases.

Next to each phase it records the context switches of the system under test (all threads)
and the CPU used by the broker, by this process and by every other process on the machine
(``/proc/<pid>/stat``): on a small machine the "other" part says how much other jobs took.

Exit status: 0 when the run completed (targets are reported, not asserted), 2 when it could
not be set up or a process died, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import queue
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import types
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import paho.mqtt.client as paho
from harness import (  # scripts/harness.py
    ProcStat,
    cpu_of,
    find_mosquitto,
    free_port,
    guarded,
    stop_process,
    wait_port,
)
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

REPO: Final = Path(__file__).resolve().parent.parent
PREFIX: Final = "springcard/springcore"
SEPARATOR: Final = b"\r\n"
COMMAND: Final = b'{"Sequence":"60"}'
CPUS: Final = os.cpu_count() or 1

WINDOW: Final = 2000
"""Closed loop: events written and not yet received, at most."""
MAX_BATCH: Final = 500
"""Events in one write of the reader double, at most."""
KEEP_UP: Final = 0.5
"""Sustained rate: seconds the last event may arrive after its write (a path that falls
behind by more than 5 % over 10 s does not hold the rate)."""
MILLION: Final = 1_000_000
BURST: Final = 30_000
"""Events of the burst phase (issue 10: a burst this size lost 25,463 events to a count bound)."""

# One event: an NFC read as the reader sends it, plus BenchT (its write time).
_HEAD: Final = b'{"Interface":"13.56","Protocol":"NFC-A","Template":1,"TagId":"'
_MID: Final = b'","TagData":"00'
_TAIL: Final = b'","Uptime":"%b","BenchT":"%d"}'
_TAG_KEY: Final = b'"TagId":"'
_TIME_KEY: Final = b'"BenchT":"'
_BOOT: Final = 417  # the reader's boot counter, the first part of Uptime
_T0: Final = time.time_ns()


class BenchError(Exception):
    """The benchmark could not be set up or run (not a finding about the bridge)."""


class StopRequestedError(Exception):
    """SIGTERM or SIGINT to the benchmark itself."""


# -- events -----------------------------------------------------------------------------------


def _tail(t_ns: int) -> bytes:
    uptime = b"%d:%.3f" % (_BOOT, (t_ns - _T0) / 1e9)
    return _TAIL % (uptime, t_ns)


def render_event(number: int, t_ns: int) -> bytes:
    """The event numbered ``number`` written at ``t_ns``, as the bridge must publish it."""
    tag = b"%014X" % number
    return _HEAD + tag + _MID + tag + _tail(t_ns)


def render_batch(first: int, count: int, t_ns: int) -> bytes:
    """Events ``first`` .. ``first + count - 1``, all written at ``t_ns``, CR LF after each."""
    tail = _tail(t_ns) + SEPARATOR
    parts = []
    for number in range(first, first + count):
        tag = b"%014X" % number
        parts.append(_HEAD + tag + _MID + tag + tail)
    return b"".join(parts)


def next_rate(passed: float | None, failed: float | None) -> float | None:
    """The next paced rate of the sustained-throughput search, or None when it is done.

    From 90 % of saturation: 15 % lower a step while none holds, 10 % higher a step while all
    hold, then halfway between the highest rate that held and the lowest that failed, until
    the two are within 4 %. Both directions, so that a path whose first step holds is not
    reported at that step (it may sustain more), and one whose first step fails is not
    reported at 85 % of it."""
    if passed is None:
        return None if failed is None else failed * 0.85
    if failed is None:
        return passed * 1.1
    if failed / passed < 1.04:
        return None
    return (passed + failed) / 2


def percentile(ordered: list[int], q: float) -> int:
    """Nearest-rank percentile of an ascending list (the maximum when there are < 1/(1-q))."""
    if not ordered:
        raise ValueError("no samples")
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# -- processes --------------------------------------------------------------------------------


def process_cpu() -> dict[int, float]:
    """CPU seconds of every process on the machine, by pid.

    Not ``/proc/stat``: on the 2-core microVM this was written on, its idle accounting is
    wrong under bursty loads (a 5 s window counted 11.6 CPU-seconds on 2 CPUs, and 2.5 s
    busy for 0.7 s of work), while per-process accounting matches ``process_time()``.
    """
    found: dict[int, float] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue  # ended meanwhile
            found[int(name)] = cpu_of(stat)
    return found


def mosquitto_binary() -> str:
    found = find_mosquitto()
    if not found:
        raise BenchError("mosquitto is not installed (apt-get install mosquitto)")
    return found


class Broker:
    """Our own Mosquitto, configured so that it is not the bottleneck."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.config = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_queued_messages 0\n"  # docs/paho.md §12: unlimited, or the broker loses events
            "max_inflight_messages 0\n"
            "set_tcp_nodelay true\n"
            "log_dest stdout\n"
            "log_type error\n"
            "log_type warning\n"
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.stat = ProcStat(-1)

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(  # noqa: S603 - our own command line
                guarded([mosquitto_binary(), "-c", str(self.config)]),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,  # Ctrl-C is ours to handle
            )
        self.stat = ProcStat(self.process.pid)
        wait_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


# -- the reader double ------------------------------------------------------------------------


class ReaderDouble:
    """The reader's side of the link: serves one client, writes events, timestamps what it
    receives (commands) as ``(time.time_ns(), bytes)`` in :attr:`incoming`."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._client: socket.socket | None = None
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.incoming: queue.Queue[tuple[int, bytes]] = queue.Queue()
        self.accepted = 0
        threading.Thread(target=self._accept_loop, name="reader-accept", daemon=True).start()

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._client is not None:  # the reader serves one client
                    sock.close()
                    continue
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._client = sock
                self.accepted += 1
            self.connected.set()
            threading.Thread(
                target=self._read_loop, args=(sock,), name="reader-read", daemon=True
            ).start()

    def _read_loop(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            now = time.time_ns()
            if not data:
                break
            self.incoming.put((now, data))
        with self._lock:
            if self._client is sock:
                self._client = None
                self.connected.clear()
        sock.close()

    def write(self, data: bytes) -> None:
        client = self._client
        if client is None:
            raise BenchError("the system under test is not connected to its reader double")
        try:
            client.sendall(data)
        except OSError as exc:
            raise BenchError(f"writing to the system under test failed: {exc}") from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            client.close()


# -- what the subscriber records --------------------------------------------------------------


@dataclass
class Phase:
    """Events ``first_id`` .. ``first_id + capacity - 1`` sent to one path's topic."""

    name: str
    path: str
    topic: bytes
    first_id: int
    capacity: int
    latency: array[int] = field(init=False)  # ns per event, -1 = not received
    sent: int = 0
    received: int = 0
    duplicates: int = 0
    mismatched: int = 0  # payload not byte-for-byte what was written
    unparseable: int = 0
    out_of_range: int = 0
    first_write: float = 0.0  # time.perf_counter()
    last_write: float = 0.0
    last_write_ns: int = 0
    last_receive_ns: int = 0

    def __post_init__(self) -> None:
        self.latency = array("q", [-1]) * self.capacity

    def lost(self) -> int:
        return self.sent - self.received

    def sorted_latencies(self) -> list[int]:
        return sorted(x for x in self.latency[: self.sent] if x >= 0)


class Recorder:
    """Matches every received event to its phase; called from the subscriber's thread."""

    def __init__(self) -> None:
        self.active: dict[bytes, Phase] = {}
        self.strays = 0  # events on no active phase's topic (late ones of a finished phase)
        self.progress = threading.Event()  # set after every received batch

    def record(self, topic: bytes, payload: bytes, now: int) -> None:
        phase = self.active.get(topic)
        if phase is None:
            self.strays += 1
            return
        i = payload.find(_TAG_KEY)
        j = payload.find(_TIME_KEY, i + 1)
        k = payload.find(b'"', j + len(_TIME_KEY))
        try:
            if i < 0 or j < 0 or k < 0:
                raise ValueError
            number = int(payload[i + 9 : i + 23], 16)
            sent = int(payload[j + len(_TIME_KEY) : k])
        except ValueError:
            phase.unparseable += 1
            return
        index = number - phase.first_id
        if not 0 <= index < phase.capacity:
            phase.out_of_range += 1
            return
        if phase.latency[index] >= 0:
            phase.duplicates += 1
            return
        if payload != render_event(number, sent):
            phase.mismatched += 1
        phase.latency[index] = max(0, now - sent)
        phase.received += 1
        phase.last_receive_ns = now


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def _mqtt_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


class RawSubscriber:
    """A minimal MQTT v5 subscriber on a raw socket: CONNECT, SUBSCRIBE (QoS 1), then PUBLISH
    packets parsed in bulk, timestamped per ``recv()``, acknowledged with one write per batch."""

    def __init__(self, port: int, topic_filter: str, recorder: Recorder) -> None:
        self._port = port
        self._filter = topic_filter
        self._recorder = recorder
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._thread = threading.Thread(target=self._run, name="subscriber", daemon=True)
        self.error: str | None = None

    def start(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self._port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        receive_maximum = b"\x21\xff\xff"  # property: as many QoS 1 messages in flight as allowed
        header = _mqtt_string("MQTT") + bytes([5, 0x02]) + struct.pack("!H", 0)  # clean, no ping
        header += _varint(len(receive_maximum)) + receive_maximum
        body = header + _mqtt_string(f"bench-sub-{os.getpid()}")
        sock.sendall(b"\x10" + _varint(len(body)) + body)
        kind, connack = self._read_packet(sock)
        if kind != 0x20 or len(connack) < 2 or connack[1] != 0:
            raise BenchError(f"the broker refused the subscriber: {kind:#x} {connack!r}")
        body = struct.pack("!HB", 1, 0) + _mqtt_string(self._filter) + b"\x01"
        sock.sendall(b"\x82" + _varint(len(body)) + body)
        kind, suback = self._read_packet(sock)
        if kind != 0x90 or suback[-1] >= 0x80:
            raise BenchError(f"the broker refused the subscription: {kind:#x} {suback!r}")
        sock.settimeout(None)
        self._sock = sock
        self._thread.start()

    def _read_packet(self, sock: socket.socket) -> tuple[int, bytes]:
        """One whole packet at start-up: (first byte & 0xF0, the rest)."""
        while True:
            parsed = self._split(self._buffer, 0)
            if parsed is not None:
                first, start, end = parsed
                packet, self._buffer = self._buffer[start:end], self._buffer[end:]
                return first & 0xF0, packet
            data = sock.recv(65536)
            if not data:
                raise BenchError("the broker closed the subscriber's connection")
            self._buffer += data

    @staticmethod
    def _split(buf: bytes, pos: int) -> tuple[int, int, int] | None:
        """(first byte, start of the body, end) of the packet at ``pos``, None if incomplete."""
        size = len(buf)
        if size - pos < 2:
            return None
        i, shift, length = pos + 1, 0, 0
        while True:
            if i >= size:
                return None
            byte = buf[i]
            i += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        if i + length > size:
            return None
        return buf[pos], i, i + length

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        record, progress = self._recorder.record, self._recorder.progress
        buf = self._buffer
        try:
            while True:
                data = sock.recv(1 << 20)
                now = time.time_ns()
                if not data:
                    self.error = "the broker closed the subscriber's connection"
                    return
                buf = buf + data if buf else data
                pos, acks = 0, []
                while (parsed := self._split(buf, pos)) is not None:
                    first, start, end = parsed
                    pos = end
                    if first >> 4 != 3:  # not a PUBLISH: nothing else is expected
                        continue
                    topic_end = start + 2 + ((buf[start] << 8) | buf[start + 1])
                    topic = buf[start + 2 : topic_end]
                    i = topic_end
                    if first & 0x06:  # QoS 1 (or 2): packet id, then acknowledge
                        acks.append(b"\x40\x02" + buf[i : i + 2])
                        i += 2
                    shift, props = 0, 0
                    while True:
                        byte = buf[i]
                        i += 1
                        props |= (byte & 0x7F) << shift
                        shift += 7
                        if byte < 0x80:
                            break
                    record(topic, buf[i + props : end], now)
                buf = buf[pos:]
                if acks:
                    sock.sendall(b"".join(acks))
                progress.set()
        except OSError as exc:
            self.error = f"subscriber: {exc}"
        except Exception as exc:  # a bug here must be seen, not hang the run
            self.error = f"subscriber failed: {exc!r}"

    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()


class PahoSubscriber:
    """The same, with paho (``--paho-subscriber``): ~5 times the CPU per message."""

    def __init__(self, port: int, topic_filter: str, recorder: Recorder) -> None:
        self._port = port
        self._filter = topic_filter
        self._recorder = recorder
        self._subscribed = threading.Event()
        self.error: str | None = None
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-sub-{os.getpid()}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.suppress_exceptions = True
        self.client.on_socket_open = _nodelay
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def start(self) -> None:
        self.client.connect("127.0.0.1", self._port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise BenchError("the paho subscriber did not get subscribed within 10 s")

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        client.subscribe(self._filter, qos=1)

    def _on_subscribe(self, *args: object) -> None:
        self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        now = time.time_ns()
        try:
            self._recorder.record(message.topic.encode(), bytes(message.payload), now)
            self._recorder.progress.set()
        except Exception as exc:
            self.error = f"subscriber failed: {exc!r}"

    def alive(self) -> bool:
        return self.error is None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


def _nodelay(client: paho.Client, userdata: object, sock: object) -> None:
    """paho leaves Nagle's algorithm on: every small write could wait for an ACK."""
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Control:
    """The paho client that publishes commands."""

    def __init__(self, port: int) -> None:
        self._connected = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-control-{os.getpid()}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.suppress_exceptions = True
        self.client.on_socket_open = _nodelay
        self.client.on_connect = self._on_connect
        self.client.connect("127.0.0.1", port)

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not reason_code.is_failure:
            self._connected.set()

    def start(self) -> None:
        self.client.loop_start()
        if not self._connected.wait(10):
            raise BenchError("the control client could not connect to the broker")

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


# -- the systems under test -------------------------------------------------------------------

Kind = Literal["bridge", "baseline"]
KINDS: Final[tuple[Kind, Kind]] = ("bridge", "baseline")


class Sut:
    """One system under test (the bridge or the bare path) at one QoS, with its reader double."""

    def __init__(self, kind: Kind, qos: int, broker_port: int, workdir: Path) -> None:
        self.kind = kind
        self.qos = qos
        self.device = ("bench" if kind == "bridge" else "bare") + ("-q0" if qos == 0 else "")
        self.name = f"{kind} (QoS {qos})"
        self.event_topic = f"{PREFIX}/{self.device}/rdr/evt"
        self.command_topic = f"{PREFIX}/{self.device}/rdr/cmd"
        self.reader = ReaderDouble()
        self.log = workdir / f"{self.device}.log"
        if kind == "bridge":
            command = [sys.executable, "-m", "bridge", "run"]
            env = self._bridge_env(broker_port, workdir)
        else:
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--baseline",
                f"--reader-port={self.reader.port}",
                f"--mqtt-port={broker_port}",
                f"--device={self.device}",
                f"--qos={qos}",
            ]
            env = dict(os.environ)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(  # noqa: S603 - our own command line
                guarded(command),
                cwd=workdir,  # no .env of the checkout is read
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        self.stat = ProcStat(self.process.pid)

    def _bridge_env(self, broker_port: int, workdir: Path) -> dict[str, str]:
        env = {name: value for name, value in os.environ.items() if not name.startswith("BRIDGE_")}
        env.update(
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            XDG_STATE_HOME=str(workdir),
            BRIDGE_READER_HOST="127.0.0.1",
            BRIDGE_READER_PORT=str(self.reader.port),
            BRIDGE_MQTT_HOST="127.0.0.1",
            BRIDGE_MQTT_PORT=str(broker_port),
            BRIDGE_MQTT_QOS=str(self.qos),
            BRIDGE_DEVICE_ID=self.device,
            BRIDGE_SPOOL_PATH=str(workdir / f"spool-{self.device}.db"),
            BRIDGE_LOG_LEVEL="WARNING",
            BRIDGE_HA_DISCOVERY="false",
            BRIDGE_COMMAND_RATE="0",
            BRIDGE_COMMAND_GAP="0",
        )
        return env

    def alive(self) -> bool:
        return self.process.poll() is None

    def check(self) -> None:
        if not self.alive():
            raise BenchError(
                f"{self.name} exited with status {self.process.returncode}; see {self.log}"
            )

    def stop(self) -> int:
        status = stop_process(self.process)
        self.reader.close()
        return status


# -- the baseline: the bare path, run as a subprocess -----------------------------------------


def run_baseline(reader_port: int, mqtt_port: int, device: str, qos: int) -> int:
    """Read the reader socket, split on CR LF, publish each line; commands go back as they are."""
    event_topic = f"{PREFIX}/{device}/rdr/evt"
    command_topic = f"{PREFIX}/{device}/rdr/cmd"
    reader = socket.create_connection(("127.0.0.1", reader_port))
    reader.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_connect(
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        client.subscribe(command_topic, qos=qos)

    def on_message(client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        reader.sendall(message.payload)

    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-{device}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.max_inflight_messages_set(100)
    client.on_socket_open = _nodelay
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", mqtt_port)
    client.loop_start()
    buffer = b""
    while data := reader.recv(65536):
        buffer += data
        *lines, buffer = buffer.split(SEPARATOR)
        for line in lines:
            if line:
                client.publish(event_topic, line, qos=qos)
    client.disconnect()
    client.loop_stop()
    return 0


# -- the benchmark ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    latency: tuple[tuple[float, float], ...]  # (events/s, seconds)
    throughput_seconds: float
    command_samples: int
    million_events: int  # 0 = skipped
    warmup_events: int
    search_steps: int = 5  # paced steps of the throughput search, at most
    burst_events: int = BURST  # written at once with the broker up; 0 = skipped


def make_plan(args: argparse.Namespace) -> Plan:
    if args.seconds is not None:
        s = float(args.seconds)
        plan = Plan(
            latency=((10, s), (200, s), (2000, s)),
            throughput_seconds=s,
            command_samples=min(200, max(10, int(20 * s))),
            million_events=MILLION,
            warmup_events=min(1000, max(100, int(200 * s))),
            search_steps=3,
            burst_events=min(BURST, max(1000, int(3000 * s))),
        )
    elif args.quick:
        plan = Plan(((10, 10), (200, 5), (2000, 5)), 5, 50, MILLION, 1000, search_steps=3)
    else:
        plan = Plan(((10, 100), (200, 20), (2000, 10)), 10, 200, MILLION, 1000)
    if args.million_events is not None:
        plan = dataclasses.replace(plan, million_events=args.million_events)
    if args.skip_million:
        plan = dataclasses.replace(plan, million_events=0)
    if args.burst is not None:
        plan = dataclasses.replace(plan, burst_events=args.burst)
    return plan


class Meter:
    """CPU of the systems under test measured, of the broker, of this process and of all the
    machine's processes; ``other_busy_cores`` is what processes other than ours (measured or
    idle) took: other jobs. Processes that started and ended within the phase are missed,
    and so is kernel work charged to no process."""

    def __init__(self, suts: list[Sut], broker: Broker, everyone: list[Sut]) -> None:
        self._suts, self._broker, self._everyone = suts, broker, everyone
        self._wall = time.monotonic()
        self._sut_cpu = [sut.stat.cpu_seconds() for sut in suts]
        self._sut_switches = [sut.stat.context_switches() for sut in suts]
        self._all_cpu = sum(sut.stat.cpu_seconds() for sut in everyone)
        self._broker_cpu = broker.stat.cpu_seconds()
        self._bench_cpu = time.process_time()
        self._processes = process_cpu()
        self.per_sut: dict[str, float] = {}
        self.per_sut_switches: dict[str, int] = {}

    def read(self) -> dict[str, float]:
        """The readings since creation: ``sut_cpu_s`` sums all the systems under test."""
        wall = time.monotonic() - self._wall
        before, after = self._processes, process_cpu()
        ours = {os.getpid(), *(s.process.pid for s in self._everyone)}
        if self._broker.process is not None:
            ours.add(self._broker.process.pid)
        other = sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items() if pid not in ours)
        self.per_sut = {
            s.name: s.stat.cpu_seconds() - c for s, c in zip(self._suts, self._sut_cpu, strict=True)
        }
        sut = sum(self.per_sut.values())
        self.per_sut_switches = {
            s.name: s.stat.context_switches() - c
            for s, c in zip(self._suts, self._sut_switches, strict=True)
        }
        switches = sum(self.per_sut_switches.values())
        broker = self._broker.stat.cpu_seconds() - self._broker_cpu
        bench = time.process_time() - self._bench_cpu
        mine = sum(sut.stat.cpu_seconds() for sut in self._everyone) - self._all_cpu
        mine += broker + bench
        return {
            "wall_s": round(wall, 3),
            "sut_cpu_s": round(sut, 2),
            "sut_context_switches": switches,
            "broker_cpu_s": round(broker, 2),
            "bench_cpu_s": round(bench, 2),
            "machine_busy_cores": round((mine + other) / wall, 2),
            "other_busy_cores": round(other / wall, 2),
        }


def ms(ns: float) -> float:
    return round(ns / 1e6, 3)


class Bench:
    def __init__(self, args: argparse.Namespace, plan: Plan, workdir: Path) -> None:
        self.args = args
        self.plan = plan
        self.workdir = workdir
        self.broker = Broker(workdir)
        self.recorder = Recorder()
        self.subscriber: RawSubscriber | PahoSubscriber | None = None
        self.control: Control | None = None
        self.suts: list[Sut] = []
        self.next_id = 1
        self.phases: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self.rss_ready: dict[str, int] = {}
        self.whole_run: Meter | None = None
        self.throughput: dict[tuple[str, int], dict[str, Any]] = {}
        self.code = "?"

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f} s] {text}", flush=True)

    # -- set-up ------------------------------------------------------------------------------

    def setup(self) -> None:
        self.code = git_state()  # what the systems under test load, now
        self.broker.start()
        topic_filter = f"{PREFIX}/+/rdr/evt"
        subscriber_class = PahoSubscriber if self.args.paho_subscriber else RawSubscriber
        self.subscriber = subscriber_class(self.broker.port, topic_filter, self.recorder)
        self.subscriber.start()
        self.control = Control(self.broker.port)
        self.control.start()
        for kind in KINDS:
            for qos in (1, 0):
                self.suts.append(Sut(kind, qos, self.broker.port, self.workdir))
        for sut in self.suts:
            self.wait_ready(sut)

    def sut(self, kind: Kind, qos: int) -> Sut:
        return next(s for s in self.suts if s.kind == kind and s.qos == qos)

    def new_phase(self, name: str, sut: Sut, capacity: int) -> Phase:
        phase = Phase(name, sut.kind, sut.event_topic.encode(), self.next_id, capacity)
        self.next_id += capacity
        self.recorder.active[phase.topic] = phase
        return phase

    def end_phase(self, phase: Phase) -> None:
        if self.recorder.active.get(phase.topic) is phase:
            del self.recorder.active[phase.topic]

    def check(self, *suts: Sut) -> None:
        for sut in suts:
            sut.check()
        if self.subscriber is not None and not self.subscriber.alive():
            raise BenchError(self.subscriber.error or "the subscriber stopped")

    def wait_ready(self, sut: Sut, timeout: float = 60.0) -> None:
        """Connected to its reader double, an event made it through, then a warm-up."""
        deadline = time.monotonic() + timeout
        while not sut.reader.connected.wait(0.2):
            self.check(sut)
            if time.monotonic() > deadline:
                raise BenchError(f"{sut.name} did not connect within {timeout} s; see {sut.log}")
        probe = self.new_phase("probe", sut, 1000)
        while probe.received == 0:
            self.check(sut)
            if time.monotonic() > deadline or probe.sent >= probe.capacity:
                raise BenchError(f"no event of {sut.name} arrived within {timeout} s")
            self.write(sut, probe, 1)
            self.recorder.progress.wait(0.25)
            self.recorder.progress.clear()
        self.drain(probe, quiet=2.0)
        self.end_phase(probe)
        warmup = self.new_phase("warm-up", sut, self.plan.warmup_events)
        self.paced([(sut, warmup)], 2000.0, self.plan.warmup_events / 2000.0)
        self.drain(warmup)
        self.end_phase(warmup)
        rss = self.rss_ready[sut.name] = sut.stat.rss_kb()
        self.say(f"{sut.name} ready (pid {sut.process.pid}, RSS {rss / 1024:.1f} MB)")

    # -- emitting ----------------------------------------------------------------------------

    def write(self, sut: Sut, phase: Phase, count: int) -> None:
        now = time.perf_counter()
        t_ns = time.time_ns()
        sut.reader.write(render_batch(phase.first_id + phase.sent, count, t_ns))
        if not phase.sent:
            phase.first_write = now
        phase.sent += count
        phase.last_write = now
        phase.last_write_ns = t_ns

    def paced(self, targets: list[tuple[Sut, Phase]], rate: float, seconds: float) -> None:
        """Open loop: ``rate`` events/s to each target for ``seconds``; target j's event i is
        due at ``start + (i + j / len(targets)) / rate`` (interleaved, never at once)."""
        count = max(1, round(rate * seconds))
        share = len(targets)
        start = time.perf_counter()
        checked = start
        while True:
            now = time.perf_counter()
            elapsed = (now - start) * rate
            next_due = math.inf
            for j, (sut, phase) in enumerate(targets):
                due = min(count, max(0, math.floor(elapsed - j / share) + 1))
                if due > phase.sent:
                    self.write(sut, phase, min(due - phase.sent, MAX_BATCH))
                if phase.sent < count:
                    next_due = min(next_due, start + (phase.sent + j / share) / rate)
            if next_due == math.inf:
                return
            if now - checked > 1.0:
                self.check(*(sut for sut, _ in targets))
                checked = now
            delay = next_due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)

    def closed_loop(
        self,
        sut: Sut,
        phase: Phase,
        seconds: float | None,
        limit: int,
        samples: list[dict[str, float]] | None = None,
    ) -> float:
        """Keep at most WINDOW events in flight, as fast as they are taken, for ``seconds``
        (or until ``limit`` events); the seconds it ran. With ``samples``: the RSS every
        100,000 events and a progress line every 10 s."""
        start = time.perf_counter()
        deadline = math.inf if seconds is None else start + seconds
        checked = shown = start
        report = samples is not None
        progress = self.recorder.progress
        while phase.sent < limit:
            now = time.perf_counter()
            if now >= deadline:
                break
            progress.clear()
            room = min(limit - phase.sent, phase.received + WINDOW - phase.sent)
            if room >= min(100, limit - phase.sent):
                self.write(sut, phase, min(room, MAX_BATCH))
            else:
                progress.wait(0.01)
            if now - checked > 1.0:
                self.check(sut)
                checked = now
                if samples is not None and (phase.received // 100_000) > len(samples):
                    samples.append(
                        {"events": phase.received, "rss_kb": sut.stat.rss_kb(), "t_s": now - start}
                    )
                if report and now - shown >= 10.0:
                    shown = now
                    self.say(
                        f"  {sut.name}: {phase.received:,}/{limit:,} events, "
                        f"{phase.received / (now - start):,.0f}/s, "
                        f"RSS {sut.stat.rss_kb() / 1024:.1f} MB"
                    )
        return time.perf_counter() - start

    def drain(self, phase: Phase, quiet: float = 5.0, limit: float = 120.0) -> None:
        """Wait for every event of the phase, or until none arrived for ``quiet`` s."""
        start = last_change = time.monotonic()
        seen = phase.received
        while phase.received < phase.sent:
            self.recorder.progress.wait(0.05)
            self.recorder.progress.clear()
            now = time.monotonic()
            if phase.received != seen:
                seen, last_change = phase.received, now
            elif now - last_change > quiet or now - start > limit:
                return

    # -- phases ------------------------------------------------------------------------------

    def summary(self, phase: Phase, meter: dict[str, float], **extra: object) -> dict[str, Any]:
        ordered = phase.sorted_latencies()
        result: dict[str, Any] = {
            "phase": phase.name,
            "path": phase.path,
            "sent": phase.sent,
            "received": phase.received,
            "lost": phase.lost(),
            "duplicates": phase.duplicates,
            "mismatched_payloads": phase.mismatched,
            "unparseable": phase.unparseable + phase.out_of_range,
        }
        if ordered:
            result["latency_ms"] = {
                "n": len(ordered),
                "min": ms(ordered[0]),
                "p50": ms(percentile(ordered, 0.50)),
                "p90": ms(percentile(ordered, 0.90)),
                "p99": ms(percentile(ordered, 0.99)),
                "p99.9": ms(percentile(ordered, 0.999)),
                "max": ms(ordered[-1]),
            }
        result.update(extra)
        result["cpu"] = meter
        cpu = meter["sut_cpu_s"]
        result["sut_cpu_s_per_10k"] = round(cpu / phase.sent * 10_000, 3) if phase.sent else None
        switches = meter.get("sut_context_switches")
        if switches is not None and phase.sent:
            result["sut_context_switches_per_event"] = round(switches / phase.sent, 2)
        self.phases.append(result)
        return result

    def latency_phase(self, rate: float, seconds: float) -> None:
        pairs = [self.sut("bridge", 1), self.sut("baseline", 1)]
        groups = [pairs] if rate <= 10 else [[pairs[0]], [pairs[1]]]
        for group in groups:
            phases = [
                self.new_phase(f"latency {rate:g}/s", sut, max(1, round(rate * seconds)))
                for sut in group
            ]
            meter = Meter(group, self.broker, self.suts)
            self.paced(list(zip(group, phases, strict=True)), rate, seconds)
            for phase in phases:
                self.drain(phase)
                self.end_phase(phase)
            shared = meter.read()
            for sut, phase in zip(group, phases, strict=True):
                # Both paths at once (10/s): each its own CPU; broker, bench, machine shared.
                reading = dict(
                    shared,
                    sut_cpu_s=round(meter.per_sut[sut.name], 2),
                    sut_context_switches=meter.per_sut_switches[sut.name],
                )
                result = self.summary(phase, reading, rate=rate, seconds=seconds)
                lat = result.get("latency_ms", {})
                self.say(
                    f"latency {rate:g}/s {sut.name}: p50 {lat.get('p50')} ms, p99 "
                    f"{lat.get('p99')} ms, p99.9 {lat.get('p99.9')} ms "
                    f"({phase.received}/{phase.sent}); machine busy "
                    f"{reading['machine_busy_cores']} cores"
                )

    def throughput_phase(self, sut: Sut) -> None:
        """Saturation (closed loop), then the highest paced rate that holds (open loop)."""
        seconds = self.plan.throughput_seconds
        capacity = int(seconds * 200_000) + WINDOW  # beyond any Python path on one core
        phase = self.new_phase(f"saturation QoS {sut.qos}", sut, capacity)
        meter = Meter([sut], self.broker, self.suts)
        ran = self.closed_loop(sut, phase, seconds, phase.capacity)
        in_time = phase.received
        self.drain(phase)
        self.end_phase(phase)
        saturation = in_time / ran
        result = self.summary(
            phase, meter.read(), qos=sut.qos, seconds=round(ran, 2), events_per_s=round(saturation)
        )
        self.say(
            f"saturation QoS {sut.qos} {sut.name}: {saturation:,.0f} events/s over {ran:.1f} s "
            f"(closed loop), lost {phase.lost()}; CPU {result['cpu']}"
        )
        passed: float | None = None
        failed: float | None = None
        rate: float | None = 0.9 * saturation
        for _ in range(self.plan.search_steps):
            if rate is None:
                break
            if self.sustained_step(sut, rate, seconds):
                passed = rate
            else:
                failed = rate
            rate = next_rate(passed, failed)
        self.throughput[(sut.kind, sut.qos)] = {
            "saturation": round(saturation),
            "sustained": None if passed is None else round(passed),
            "lowest_failed": None if failed is None else round(failed),
            "cpu_s_per_10k_at_saturation": result["sut_cpu_s_per_10k"],
        }
        if passed is None:
            self.say(f"  no paced rate held within {self.plan.search_steps} steps")

    def sustained_step(self, sut: Sut, rate: float, seconds: float) -> bool:
        """Paced at ``rate`` for ``seconds``: every event arrives, the last one within KEEP_UP
        of its write, and the reader double could write at the rate (no back-pressure)."""
        step = self.new_phase(f"sustained QoS {sut.qos}", sut, max(1, round(rate * seconds)))
        meter = Meter([sut], self.broker, self.suts)
        self.paced([(sut, step)], rate, seconds)
        written_for = step.last_write - step.first_write
        self.drain(step)
        self.end_phase(step)
        behind = (step.last_receive_ns - step.last_write_ns) / 1e9
        achieved = (step.sent - 1) / written_for if written_for > 0 else rate
        ok = not step.lost() and behind <= KEEP_UP and achieved >= 0.97 * rate
        self.summary(
            step,
            meter.read(),
            qos=sut.qos,
            rate=round(rate),
            achieved_write_rate=round(achieved),
            last_event_behind_s=round(behind, 3),
            ok=ok,
            overload=not ok,  # a step that did not hold may have lost events: counted apart
        )
        self.say(
            f"  paced at {rate:,.0f}/s for {seconds:g} s: {'holds' if ok else 'does not hold'} "
            f"(lost {step.lost()}, last event {behind:.3f} s after its write, "
            f"written at {achieved:,.0f}/s)"
        )
        return ok

    def command_phase(self, sut: Sut) -> None:
        assert self.control is not None
        incoming = sut.reader.incoming
        deadline = time.monotonic() + 30
        while True:  # warm-up: the path is subscribed when a command comes through
            self.check(sut)
            if time.monotonic() > deadline:
                raise BenchError(f"no command reached the reader double of {sut.name} in 30 s")
            self.control.publish(sut.command_topic, COMMAND)
            with contextlib.suppress(queue.Empty):
                incoming.get(timeout=1.0)
                break
        time.sleep(0.2)
        samples: list[int] = []
        unexpected: list[str] = []
        missing = 0
        for _ in range(self.plan.command_samples):
            while not incoming.empty():
                incoming.get_nowait()
            start = time.time_ns()
            self.control.publish(sut.command_topic, COMMAND)
            got, arrived = b"", 0
            try:
                while b"}" not in got:
                    arrived, data = incoming.get(timeout=2.0)
                    got += data
            except queue.Empty:
                missing += 1
                continue
            if got.strip(b"\r\n\x00 ") != COMMAND:  # a late warm-up command, say
                unexpected.append(got.decode(errors="replace"))
                continue
            samples.append(arrived - start)
            time.sleep(0.01)
        samples.sort()
        result = {
            "phase": "commands",
            "path": sut.kind,
            "samples": len(samples),
            "missing": missing,
            "unexpected": len(unexpected),
            "unexpected_sample": unexpected[:5],
            "latency_ms": {
                "p50": ms(percentile(samples, 0.5)),
                "p90": ms(percentile(samples, 0.9)),
                "p99": ms(percentile(samples, 0.99)),
                "max": ms(samples[-1]),
            },
        }
        self.phases.append(result)
        self.say(f"commands {sut.name}: {result['latency_ms']}, missing {missing}")

    def burst_phase(self, sut: Sut) -> None:
        """The whole burst written as fast as the path reads it, the broker up all along:
        every event must arrive (the bridge's spool absorbs what the broker takes slower).
        Delivered-in runs from the first write to the last event received."""
        count = self.plan.burst_events
        phase = self.new_phase("burst", sut, count)
        meter = Meter([sut], self.broker, self.suts)
        start_ns = time.time_ns()
        while phase.sent < count:
            self.write(sut, phase, min(MAX_BATCH, count - phase.sent))
        written = (phase.last_write_ns - start_ns) / 1e9
        self.drain(phase, quiet=10.0, limit=300.0)
        self.end_phase(phase)
        took = max(1e-9, (phase.last_receive_ns - start_ns) / 1e9)
        self.summary(
            phase,
            meter.read(),
            written_in_s=round(written, 2),
            delivered_in_s=round(took, 2),
            events_per_s=round(phase.received / took),
        )
        self.say(
            f"burst of {count:,} {sut.name}: written in {written:.2f} s, delivered in "
            f"{took:.2f} s, lost {phase.lost()}"
        )

    def million_phase(self, sut: Sut) -> dict[str, Any]:
        events = self.plan.million_events
        warm = min(100_000, events // 10)
        self.say(
            f"{warm:,} + {events:,} events through {sut.name} (closed loop, as fast as it goes; "
            "RSS measured after the first ones)"
        )
        warmup = self.new_phase("million warm-up", sut, warm)
        meter = Meter([sut], self.broker, self.suts)
        self.closed_loop(sut, warmup, None, warm)
        self.drain(warmup)
        self.end_phase(warmup)
        self.summary(warmup, meter.read())
        rss_before, hwm_before = sut.stat.rss_kb(), sut.stat.hwm_kb()
        phase = self.new_phase("million", sut, events)
        meter = Meter([sut], self.broker, self.suts)
        samples: list[dict[str, float]] = []
        ran = self.closed_loop(sut, phase, None, events, samples)
        self.drain(phase)
        self.end_phase(phase)
        time.sleep(1.0)  # the spool's flush and the allocator settle
        rss_after = sut.stat.rss_kb()
        growth = 100.0 * (rss_after - rss_before) / rss_before
        result = self.summary(
            phase,
            meter.read(),
            seconds=round(ran, 1),
            events_per_s=round(phase.received / ran),
            rss_before_kb=rss_before,
            rss_after_kb=rss_after,
            rss_growth_pct=round(growth, 2),
            hwm_before_kb=hwm_before,
            hwm_after_kb=sut.stat.hwm_kb(),
            rss_samples=samples,
        )
        self.say(
            f"  {sut.name}: {ran:.0f} s, RSS {rss_before / 1024:.1f} -> {rss_after / 1024:.1f} MB "
            f"({growth:+.2f} %), lost {phase.lost()}"
        )
        return result

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        load_start = os.getloadavg()
        self.whole_run = Meter(self.suts, self.broker, self.suts)
        self.say(
            f"broker on port {self.broker.port}, {CPUS} CPUs, load average "
            f"{load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}"
        )
        for rate, seconds in self.plan.latency:
            self.latency_phase(rate, seconds)
        for kind in KINDS:
            self.command_phase(self.sut(kind, 1))
        million: dict[str, dict[str, Any]] = {}
        if self.plan.million_events:
            for kind in KINDS:
                million[kind] = self.million_phase(self.sut(kind, 1))
        # Peak RSS so far: every load within capacity. The throughput phases come last
        # because their open-loop checks may overload a path: the bridge then spools the
        # excess, the bare path queues it in paho's memory.
        steady: dict[str, int] = {kind: self.sut(kind, 1).stat.hwm_kb() for kind in KINDS}
        if self.plan.burst_events:  # after the steady peak: the bare path's queue grows here
            for kind in KINDS:
                self.burst_phase(self.sut(kind, 1))
        for qos in (1, 0):
            for kind in KINDS:
                self.throughput_phase(self.sut(kind, qos))
        for kind in KINDS:
            self.sut(kind, 0).stop()
        peak: dict[str, int] = {kind: self.sut(kind, 1).stat.hwm_kb() for kind in KINDS}
        return self.report(steady, peak, million, load_start)

    def report(
        self,
        steady: dict[str, int],
        peak: dict[str, int],
        million: dict[str, dict[str, Any]],
        load_start: tuple[float, float, float],
    ) -> dict[str, Any]:
        def find(name: str, path: str) -> dict[str, Any]:
            return next(p for p in self.phases if p["phase"] == name and p["path"] == path)

        metrics: dict[str, dict[str, Any]] = {}

        def add(key: str, label: str, unit: str, values: dict[str, float | None]) -> None:
            metrics[key] = {"label": label, "unit": unit, **values}

        for rate, _ in self.plan.latency:
            for q, qname in ((0.5, "p50"), (0.99, "p99"), (0.999, "p99.9")):
                values = {
                    path: find(f"latency {rate:g}/s", path).get("latency_ms", {}).get(qname)
                    for path in ("bridge", "baseline")
                }
                n = find(f"latency {rate:g}/s", "bridge").get("latency_ms", {}).get("n", 0)
                note = f" (n={n})" if q * n > n - 1 else ""
                key = f"latency_{rate:g}_{qname.replace('.', '')}_ms"
                add(key, f"event latency {qname} @ {rate:g}/s{note}", "ms", values)
        seconds = self.plan.throughput_seconds
        for qos in (0, 1):
            add(
                f"throughput_qos{qos}_eps",
                f"max sustained throughput, QoS {qos} ({seconds:g} s paced, 0 loss)",
                "events/s",
                {path: self.throughput[(path, qos)]["sustained"] for path in KINDS},
            )
        for qos in (0, 1):
            add(
                f"saturation_qos{qos}_eps",
                f"saturation throughput, QoS {qos} (closed loop)",
                "events/s",
                {path: self.throughput[(path, qos)]["saturation"] for path in KINDS},
            )
        for qname in ("p50", "p99"):
            add(
                f"command_latency_{qname}_ms",
                f"command latency {qname}",
                "ms",
                {
                    path: find("commands", path)["latency_ms"][qname]
                    for path in ("bridge", "baseline")
                },
            )
        top = max(rate for rate, _ in self.plan.latency)
        add(
            "cpu_s_per_10k_at_2000",
            f"CPU s / 10,000 events @ {top:g}/s",
            "s",
            {p: find(f"latency {top:g}/s", p)["sut_cpu_s_per_10k"] for p in ("bridge", "baseline")},
        )
        add(
            "context_switches_per_event_at_2000",
            f"context switches / event @ {top:g}/s",
            "",
            {p: find(f"latency {top:g}/s", p).get("sut_context_switches_per_event") for p in KINDS},
        )
        add(
            "cpu_s_per_10k_at_max_qos1",
            "CPU s / 10,000 events at saturation, QoS 1",
            "s",
            {p: self.throughput[(p, 1)]["cpu_s_per_10k_at_saturation"] for p in KINDS},
        )
        add(
            "peak_rss_mb",
            "peak RSS (VmHWM), loads within capacity",
            "MB",
            {path: round(kb / 1024, 1) for path, kb in steady.items()},
        )
        add(
            "peak_rss_with_probes_mb",
            "peak RSS incl. the throughput search",
            "MB",
            {path: round(kb / 1024, 1) for path, kb in peak.items()},
        )
        add(
            "rss_after_million_mb",
            f"RSS after {self.plan.million_events or MILLION:,} events",
            "MB",
            {
                p: round(million[p]["rss_after_kb"] / 1024, 1) if million else None
                for p in ("bridge", "baseline")
            },
        )
        add(
            "rss_growth_million_pct",
            f"RSS growth over {self.plan.million_events or MILLION:,} events",
            "%",
            {p: million[p]["rss_growth_pct"] if million else None for p in ("bridge", "baseline")},
        )
        if self.plan.burst_events:
            burst = {path: find("burst", path) for path in KINDS}
            add(
                "burst_lost",
                f"burst of {self.plan.burst_events:,} at full speed, broker up: events lost",
                "events",
                {path: burst[path]["lost"] for path in KINDS},
            )
            add(
                "burst_delivered_s",
                f"burst of {self.plan.burst_events:,}: first write to last event received",
                "s",
                {path: burst[path]["delivered_in_s"] for path in KINDS},
            )
        add(
            "events_lost",
            "events lost, except steps that did not hold",
            "events",
            {
                path: sum(
                    p.get("lost", 0)
                    for p in self.phases
                    if p["path"] == path and not p.get("overload")
                )
                for path in KINDS
            },
        )
        add(
            "events_lost_overload",
            "events lost, throughput steps that did not hold",
            "events",
            {
                path: sum(
                    p.get("lost", 0) for p in self.phases if p["path"] == path and p.get("overload")
                )
                for path in KINDS
            },
        )
        for metric in metrics.values():
            bridge, base = metric["bridge"], metric["baseline"]
            metric["ratio"] = round(bridge / base, 3) if bridge is not None and base else None
        targets(metrics)
        load_end = os.getloadavg()
        return {
            "meta": {
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime()),
                "runtime_s": round(time.monotonic() - self.started, 1),
                "cpus": CPUS,
                "load_average_start": [round(x, 2) for x in load_start],
                "load_average_end": [round(x, 2) for x in load_end],
                "python": sys.version.split()[0],
                "paho": paho_version(),
                "mosquitto": self.broker_version(),
                "git": self.code,
                "subscriber": "paho" if self.args.paho_subscriber else "raw socket",
                "plan": vars(self.plan),
                "million_skipped": not self.plan.million_events,
                "hwm_within_capacity_kb": steady,
                "throughput": {f"{k} QoS {q}": v for (k, q), v in self.throughput.items()},
                "hwm_end_kb": peak,
                "rss_ready_kb": self.rss_ready,
                "cpu_whole_run": self.whole_run.read() if self.whole_run else None,
                "strays": self.recorder.strays,
                "workdir": str(self.workdir),
            },
            "metrics": metrics,
            "phases": self.phases,
            "notes": self.notes(),
        }

    def notes(self) -> list[str]:
        """What a reader of the table should know: losses, failed probes, a busy machine."""
        notes = []
        busy = []
        for phase in self.phases:
            where = f"{phase['phase']} / {phase['path']}"
            for what in ("duplicates", "mismatched_payloads", "unparseable", "missing"):
                if phase.get(what):
                    notes.append(f"{where}: {what} = {phase[what]}")
            if phase.get("lost"):
                beyond = " (a rate it did not hold)" if phase.get("overload") else ""
                notes.append(f"{where}: {phase['lost']} event(s) lost{beyond}")
            cpu = phase.get("cpu")
            if cpu and cpu["wall_s"] > 1 and cpu["bench_cpu_s"] / cpu["wall_s"] > 0.8:
                notes.append(
                    f"{where}: this process used {cpu['bench_cpu_s'] / cpu['wall_s']:.0%} of a "
                    "core; it may have limited the figure"
                )
            if cpu and cpu["other_busy_cores"] > 0.5:
                busy.append(f"{where} {cpu['other_busy_cores']}")
        if busy:
            notes.append(
                "other processes kept more than half a core busy during: " + ", ".join(busy)
            )
        for (kind, qos), figures in self.throughput.items():
            if figures["sustained"] is None:
                notes.append(
                    f"{kind} QoS {qos}: no paced rate held within {self.plan.search_steps} steps "
                    f"(lowest tried {figures['lowest_failed']:,}/s)"
                )
        if self.recorder.strays:
            notes.append(f"{self.recorder.strays} event(s) arrived after their phase ended")
        return notes

    def broker_version(self) -> str:
        try:
            out = subprocess.run(  # noqa: S603 - our own command line
                [mosquitto_binary(), "-h"], capture_output=True, text=True, timeout=5, check=False
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        return out.splitlines()[0] if out else "?"

    def cleanup(self) -> None:
        if self.control is not None:
            self.control.close()
        for sut in self.suts:
            sut.stop()
        if self.subscriber is not None:
            self.subscriber.close()
        self.broker.stop()


def targets(metrics: dict[str, dict[str, Any]]) -> None:
    """The issue's targets, marked met or not (reported, never asserted)."""
    checks: list[tuple[str, str, str, Callable[[float], bool]]] = [
        ("latency_200_p50_ms", "ratio <= 1.5", "ratio", lambda r: r <= 1.5),
        ("throughput_qos1_eps", "ratio >= 0.8", "ratio", lambda r: r >= 0.8),
        ("command_latency_p50_ms", "< 2 ms", "bridge", lambda v: v < 2),
        ("peak_rss_mb", "< 40 MB", "bridge", lambda v: v < 40),
        ("rss_after_million_mb", "< 40 MB", "bridge", lambda v: v < 40),
        ("rss_growth_million_pct", "< 5 %", "bridge", lambda v: v < 5),
        ("events_lost", "0", "bridge", lambda v: v == 0),
        ("burst_lost", "0", "bridge", lambda v: v == 0),
    ]
    for key, text, column, ok in checks:
        metric = metrics.get(key)
        if metric is None:
            continue
        value = metric[column]
        metric["target"] = text
        metric["met"] = None if value is None else ok(value)


def paho_version() -> str:
    from importlib.metadata import version  # noqa: PLC0415

    return version("paho-mqtt")


def git_state() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607 - git from PATH
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "bridge"],  # noqa: S607
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        return "?"
    digest = hashlib.sha256()
    for path in sorted((REPO / "bridge").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    state = " + uncommitted changes in bridge/" if dirty else ""
    return f"{head}{state} (bridge/*.py sha256 {digest.hexdigest()[:12]})"


# -- output -----------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def print_table(report: dict[str, Any]) -> None:
    rows = [("metric", "unit", "bridge", "baseline", "ratio", "target", "met?")]
    for metric in report["metrics"].values():
        met = metric.get("met")
        rows.append(
            (
                metric["label"],
                metric["unit"],
                _fmt(metric["bridge"]),
                _fmt(metric["baseline"]),
                "n/a" if metric["ratio"] is None else f"{metric['ratio']:.2f}",
                metric.get("target", ""),
                "" if "target" not in metric else "n/a" if met is None else "yes" if met else "NO",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    for n, row in enumerate(rows):
        cells = [
            cell.ljust(width) if i < 2 or i >= 5 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("| " + " | ".join(cells) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    meta = report["meta"]
    print(
        f"\nruntime {meta['runtime_s']} s; {meta['cpus']} CPUs; load average "
        f"{meta['load_average_start'][0]} at the start, {meta['load_average_end'][0]} at the end; "
        f"bridge at {meta['git']}; {meta['mosquitto']}; paho {meta['paho']}; "
        f"subscriber: {meta['subscriber']}"
    )
    whole = meta["cpu_whole_run"]
    if whole:
        print(
            f"machine busy on average {whole['machine_busy_cores']} of {meta['cpus']} cores, "
            f"{whole['other_busy_cores']} of them by other processes"
        )
    if meta["million_skipped"]:
        print("the 1,000,000-event run was skipped (--skip-million)")
    for note in report["notes"]:
        print(" -", note)
    sys.stdout.flush()


# -- command line -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases (a couple of minutes)")
    parser.add_argument("--seconds", type=float, help="every phase this long (overrides --quick)")
    parser.add_argument("--skip-million", action="store_true", help="no 1,000,000-event run")
    parser.add_argument("--million-events", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--burst", type=int, help=f"events of the burst phase (default {BURST:,})")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--paho-subscriber", action="store_true", help="subscribe with paho")
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    internal = parser.add_argument_group("the bare baseline path (started by the benchmark)")
    internal.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    internal.add_argument("--reader-port", type=int, help=argparse.SUPPRESS)
    internal.add_argument("--mqtt-port", type=int, help=argparse.SUPPRESS)
    internal.add_argument("--device", help=argparse.SUPPRESS)
    internal.add_argument("--qos", type=int, choices=(0, 1), default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.seconds is not None and args.seconds <= 0:
        parser.error("--seconds must be positive")
    if args.baseline and (args.reader_port is None or args.mqtt_port is None or not args.device):
        parser.error("--baseline needs --reader-port, --mqtt-port and --device")
    return args


def _raise_interrupted(signum: int, frame: types.FrameType | None) -> None:
    raise StopRequestedError(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.baseline:
        return run_baseline(args.reader_port, args.mqtt_port, args.device, args.qos)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)
    plan = make_plan(args)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        workdir = args.workdir.resolve()
    else:
        workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    print(f"bench: work directory {workdir}", flush=True)
    bench = Bench(args, plan, workdir)
    status = 2
    try:
        bench.setup()
        report = bench.run()
        print_table(report)
        if args.json is not None:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        status = 0
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
    except StopRequestedError as exc:
        print(f"bench: interrupted ({exc}); cleaning up", file=sys.stderr)
        status = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.cleanup()
        if status == 0 and args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
