#!/usr/bin/env python3
"""Soak test of the bridge: hours of events through broker restarts and reader drops.

Not a pytest test: ``python scripts/soak.py --minutes 20``. It starts, in a temporary work
directory of its own:

* a Mosquitto on a free loopback port (persistence on by default, so a *graceful* restart
  keeps the subscriber's queue and only the bridge is measured);
* the reader simulator (``bridge.simulator.Simulator``) in this process, fed by a thread that
  emits events carrying a unique ``SoakCounter`` field at ``--rate`` events/s;
* the bridge as a subprocess (``python -m bridge run``), so that its RSS and CPU time can be
  read from ``/proc``;
* a persistent-session MQTT v5 subscriber (QoS 1, fixed client id, clean_start=False) that
  records every event by counter and by ``seq`` user property.

Faults on a schedule: the broker is restarted every ``--broker-restart-every`` s (SIGTERM,
and SIGKILL every ``--sigkill-every``-th time), the reader connection is dropped every
``--reader-drop-every`` s (alternately FIN and RST). An event the simulator could not write
because no client was connected never existed for the bridge and is counted as "not sent".

Two kinds of loss are not the bridge's and are counted apart:

* a SIGKILLed broker loses what it had acknowledged but not yet delivered or saved: an event
  sent before the kill, not received at the kill and newer than every event received by then
  (delivery is in order, so an older one was skipped before the kill) was exposed to it;
* an RST discards the bytes the simulator's kernel had not sent yet (Nagle holds small
  segments back while earlier ones wait for the bridge's delayed ACK): before an RST drop the
  emitter pauses until those bytes are sent (at most 2 s); what is still unsent at the RST
  never reached the bridge.

Every other event written and never received is a loss by the bridge.

Exit status: 0 when nothing was lost by the bridge, the bridge stopped with status 0 and its
RSS grew by at most ``--max-rss-growth`` %; 1 otherwise; 2 when the set-up failed; 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import itertools
import json
import logging
import os
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

REPO: Final = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bridge.simulator import PROFILES, Simulator  # noqa: E402 - after the path set-up
from harness import (  # noqa: E402 - scripts/harness.py
    ProcStat,
    find_mosquitto,
    free_port,
    guarded,
    stop_process,
    wait_port,
)

log = logging.getLogger("soak")

DEVICE_ID: Final = "soak"
PREFIX: Final = "springcard/springcore"
EVENT_TOPIC: Final = f"{PREFIX}/{DEVICE_ID}/rdr/evt"
COUNTER_FIELD: Final = "SoakCounter"

MAX_COUNTER: Final = 100_000_000
"""A counter beyond this is garbage, not a reason to grow the ledger."""
NOT_SENT: Final = 1
SENT: Final = 2

SIOCOUTQNSD: Final = 0x894B
"""ioctl: bytes in a TCP socket's send queue not yet sent (linux/sockios.h)."""


class SoakError(Exception):
    """The soak could not be set up or run (not a finding about the bridge)."""


class StopRequestedError(Exception):
    """SIGTERM or SIGINT to the soak itself."""


# -- processes --------------------------------------------------------------------------------


def mosquitto_binary() -> str:
    found = find_mosquitto()
    if not found:
        raise SoakError("mosquitto is not installed (apt-get install mosquitto)")
    return found


class Broker:
    """Our own Mosquitto, restartable on the same port, SIGTERM or SIGKILL."""

    def __init__(self, workdir: Path, persistence: bool, autosave: int) -> None:
        self.port = free_port()
        self.config = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "max_queued_messages 0",  # docs/paho.md §12: the default 1000 would lose events
            "max_inflight_messages 0",
            "set_tcp_nodelay true",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if persistence:
            lines += [
                "persistence true",
                f"persistence_location {workdir}/",
                "persistence_file mosquitto.db",
                f"autosave_interval {autosave}",
            ]
        else:
            lines.append("persistence false")
        if os.geteuid() == 0:
            lines.append("user root")  # or mosquitto drops to a user that cannot write here
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(  # noqa: S603 - our own command line
                guarded([mosquitto_binary(), "-c", str(self.config)]),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,  # Ctrl-C is ours to handle, not the broker's
            )
        wait_port(self.port)

    def stop(self, kill: bool = False) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if kill:
            process.kill()
            process.wait(10)
        else:
            stop_process(process)


class BridgeProcess:
    """``python -m bridge run`` with BRIDGE_* settings; /proc readings of its RSS and CPU."""

    def __init__(self, workdir: Path, reader_port: int, broker_port: int) -> None:
        self.log = workdir / "bridge.log"
        self.spool = workdir / "spool.db"
        env = {name: value for name, value in os.environ.items() if not name.startswith("BRIDGE_")}
        env.update(
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            XDG_STATE_HOME=str(workdir),
            BRIDGE_READER_HOST="127.0.0.1",
            BRIDGE_READER_PORT=str(reader_port),
            BRIDGE_MQTT_HOST="127.0.0.1",
            BRIDGE_MQTT_PORT=str(broker_port),
            BRIDGE_DEVICE_ID=DEVICE_ID,
            BRIDGE_SPOOL_PATH=str(self.spool),
            BRIDGE_LOG_LEVEL="WARNING",
        )
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(  # noqa: S603 - our own command line
                guarded([sys.executable, "-m", "bridge", "run"]),
                cwd=workdir,  # no .env of the checkout is read
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        self.pid = self.process.pid
        self.stat = ProcStat(self.pid)

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_kb(self) -> int:
        return self.stat.rss_kb()

    def hwm_kb(self) -> int:
        return self.stat.hwm_kb()

    def threads(self) -> int:
        return self.stat.threads()

    def cpu_seconds(self) -> float:
        """utime + stime; the last known value once the process is gone."""
        return self.stat.cpu_seconds()

    def open_fds(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return -1

    def spool_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += Path(str(self.spool) + suffix).stat().st_size
        return total

    def stop(self, timeout: float) -> int:
        return stop_process(self.process, timeout)

    def problems(self, limit: int = 20) -> tuple[int, list[str]]:
        """Lines of its log at ERROR/CRITICAL or from a traceback: how many, and the first."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return 0, []
        bad = [
            line
            for line in lines
            if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")
        ]
        return len(bad), bad[:limit]


# -- the event source and the subscriber ------------------------------------------------------


class Ledger:
    """Per-counter facts, growing with the emitter; arrays, so hours of events stay small."""

    def __init__(self) -> None:
        self.state = bytearray()  # NOT_SENT / SENT, written by the emitter only
        self.sent_at = array("d")  # monotonic time of the write
        self.connection = array("I")  # simulator's accepted-client count at the write
        self.size = array("I")  # bytes written
        self.received = array("H")  # copies received, written by the subscriber only
        self.seq = array("q")  # seq of the first copy (0 = none)
        self.late = bytearray()  # 1 when the first copy was marked late
        self.lock = threading.Lock()

    def grow(self, size: int) -> None:
        """Room for counters below ``size`` (called under ``lock``)."""
        missing = size - len(self.state)
        if missing > 0:
            extra = max(missing, 4096)
            self.state.extend(bytes(extra))
            self.sent_at.extend([0.0] * extra)
            self.connection.extend([0] * extra)
            self.size.extend([0] * extra)
            self.received.extend([0] * extra)
            self.seq.extend([0] * extra)
            self.late.extend(bytes(extra))


@dataclass
class EmitterStats:
    attempted: int = 0
    sent: int = 0
    not_sent: int = 0
    catch_ups: int = 0  # times the emitter fell over 1 s behind its schedule
    last_progress: float = 0.0


class Emitter:
    """Writes one event with a fresh ``SoakCounter`` every 1/rate s while a client is there."""

    def __init__(self, simulator: Simulator, ledger: Ledger, rate: float) -> None:
        self._sim = simulator
        self._ledger = ledger
        self._interval = 1.0 / rate
        self.stats = EmitterStats(last_progress=time.monotonic())
        self._stop = threading.Event()
        self._gate = threading.Lock()  # held around each write; pause() holds it
        self._resumed = False
        self._thread = threading.Thread(target=self._run, name="emitter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        self._stop.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def pause(self, timeout: float = 5.0) -> bool:
        """Wait for the write in progress, then hold the emitter until :meth:`resume`."""
        return self._gate.acquire(timeout=timeout)

    def resume(self) -> None:
        self._resumed = True  # the schedule restarts from now: no burst to catch up
        self._gate.release()

    def _run(self) -> None:
        start = time.monotonic()
        done = 0
        while not self._stop.is_set():
            due = start + done * self._interval
            now = time.monotonic()
            if due > now:
                if self._stop.wait(due - now):
                    return
            elif now - due > 1.0:  # fell behind (GIL, a slow write): do not burst to catch up
                self.stats.catch_ups += 1
                start = now - done * self._interval
            with self._gate:
                if self._resumed:
                    self._resumed = False
                    start = time.monotonic() - done * self._interval
                self._emit_one(PROFILES[done % len(PROFILES)])
            done += 1

    def _emit_one(self, profile: str) -> None:
        ledger = self._ledger
        counter = self.stats.attempted
        event = self._sim.factory.make(profile)
        event[COUNTER_FIELD] = counter
        with ledger.lock:
            ledger.grow(counter + 1)
        size = 0
        try:
            size = len(self._sim.emit(event))
        except OSError:  # no client connected (ConnectionError), or it went away mid-write
            state = NOT_SENT
            self.stats.not_sent += 1
        else:
            state = SENT
            self.stats.sent += 1
        with ledger.lock:
            ledger.state[counter] = state
            ledger.sent_at[counter] = time.monotonic()
            ledger.connection[counter] = self._sim.accepted
            ledger.size[counter] = size
        self.stats.attempted += 1
        self.stats.last_progress = time.monotonic()


@dataclass
class SubscriberStats:
    messages: int = 0
    unique: int = 0
    duplicates: int = 0  # copies beyond the first, by counter
    duplicate_seqs: int = 0  # copies beyond the first, by seq
    seq_conflicts: int = 0  # a counter seen with two seqs, or a seq with two counters
    late: int = 0  # unique events whose first copy was marked late
    unparseable: int = 0
    out_of_order: int = 0  # first copies arriving with a counter below the highest seen
    connects: int = 0
    sessions_resumed: int = 0
    disconnects: int = 0
    callback_errors: int = 0


class Subscriber:
    """MQTT v5, QoS 1, persistent session: the broker queues events while it is away."""

    def __init__(self, port: int, ledger: Ledger, client_id: str) -> None:
        self._ledger = ledger
        self.stats = SubscriberStats()
        self._seqs: dict[int, int] = {}
        self._highest = -1
        self.subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.suppress_exceptions = True
        self.client.reconnect_delay_set(0.1, 1)  # type: ignore[arg-type]  # floats work
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 7 * 86400
        self.client.connect_async(
            "127.0.0.1", port, keepalive=10, clean_start=False, properties=properties
        )

    def start(self, timeout: float = 15.0) -> None:
        self.client.loop_start()
        if not self.subscribed.wait(timeout):
            raise SoakError(f"the subscriber did not get subscribed within {timeout} s")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            if reason_code.is_failure:
                return
            self.stats.connects += 1
            self.stats.sessions_resumed += int(flags.session_present)
            # Every time: a broker that lost its state (SIGKILL) lost the subscription too.
            client.subscribe(EVENT_TOPIC, options=SubscribeOptions(qos=1))
        except Exception:
            self.stats.callback_errors += 1

    def _on_disconnect(self, *args: object) -> None:
        self.stats.disconnects += 1

    def _on_subscribe(self, *args: object) -> None:
        self.subscribed.set()

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        try:
            self._record(message)
        except Exception:
            self.stats.callback_errors += 1

    def _record(self, message: paho.MQTTMessage) -> None:
        props = getattr(message, "properties", None)
        user = dict(getattr(props, "UserProperty", None) or [])
        try:
            counter = json.loads(message.payload)[COUNTER_FIELD]
            seq = int(user["seq"])
        except (ValueError, KeyError, TypeError):
            self.stats.unparseable += 1
            return
        if not isinstance(counter, int) or not 0 <= counter < MAX_COUNTER:
            self.stats.unparseable += 1
            return
        ledger, stats = self._ledger, self.stats
        with ledger.lock:
            ledger.grow(counter + 1)
            stats.messages += 1
            known = self._seqs.get(seq)
            if known is None:
                self._seqs[seq] = counter
            else:
                stats.duplicate_seqs += 1
                if known != counter:
                    stats.seq_conflicts += 1
            if ledger.received[counter]:
                stats.duplicates += 1
                if ledger.seq[counter] != seq:
                    stats.seq_conflicts += 1
            else:
                stats.unique += 1
                ledger.seq[counter] = seq
                if user.get("late") == "true":
                    ledger.late[counter] = 1
                    stats.late += 1
                if counter < self._highest:
                    stats.out_of_order += 1
                self._highest = max(self._highest, counter)
            ledger.received[counter] = min(ledger.received[counter] + 1, 65535)

    def received_unique(self) -> int:
        with self._ledger.lock:
            return self.stats.unique

    @property
    def highest(self) -> int:
        """The highest counter received so far (read it under the ledger's lock)."""
        return self._highest


# -- the soak ---------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    rss_kb: int
    cpu_s: float
    threads: int
    fds: int
    spool_bytes: int
    sent: int
    received: int


@dataclass
class Fault:
    t: float
    kind: str  # broker-sigterm, broker-sigkill, reader-fin, reader-rst
    detail: str = ""


@dataclass
class KillWindow:
    t: float
    outstanding: int = 0  # sent and not received at the kill
    # ... and newer than anything received: the broker may have acknowledged them and not
    # delivered them yet. Older outstanding ones were skipped before the kill (delivery is
    # in order), so a kill cannot excuse them.
    exposed: list[int] = field(default_factory=list)


@dataclass
class ResetDrop:
    t: float
    unsent_bytes: int  # in the simulator's send queue when the emitter was paused
    waited_ms: float  # until the kernel had sent them (Nagle holds small segments back)
    still_unsent_bytes: int  # at the RST: these never left the simulator's host
    discarded: list[int] = field(default_factory=list)  # the events those bytes held


def unsent_bytes(simulator: Simulator) -> int:
    """Bytes the simulator's kernel has not sent to the bridge yet (0 without a client)."""
    sock = getattr(simulator, "_client", None)  # the simulator keeps no public handle
    if not isinstance(sock, socket.socket):
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), SIOCOUTQNSD, b"\0\0\0\0")
    except OSError:
        return 0
    value: int = struct.unpack("i", raw)[0]
    return value


@dataclass
class Ending:
    """What the end of a run measured."""

    emitted_for: float
    drained: bool = False
    drain_seconds: float = 0.0
    rss_start: int = 0
    rss_end: int = 0
    rss_peak: int = 0
    cpu_start: float = 0.0
    cpu_end: float = 0.0
    exit_code: int | None = None


class Soak:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.ledger = Ledger()
        self.broker = Broker(workdir, args.broker_persistence, args.autosave_interval)
        self.simulator: Simulator | None = None
        self.subscriber: Subscriber | None = None
        self.bridge: BridgeProcess | None = None
        self.emitter: Emitter | None = None
        self.samples: list[Sample] = []
        self.faults: list[Fault] = []
        self.kill_windows: list[KillWindow] = []
        self.reset_drops: list[ResetDrop] = []
        self.failures: list[str] = []
        self.started = time.monotonic()
        self._restarts = 0
        self._drops = 0

    # -- set-up and tear-down -------------------------------------------------------------

    def setup(self) -> None:
        self.broker.start()
        self.simulator = Simulator("127.0.0.1", 0, b"\r\n").start()
        self.subscriber = Subscriber(self.broker.port, self.ledger, f"soak-sub-{os.getpid()}")
        self.subscriber.start()
        self.bridge = BridgeProcess(self.workdir, self.simulator.port, self.broker.port)
        if not self.simulator.wait_client(30):
            raise SoakError(f"the bridge did not connect to the simulator; see {self.bridge.log}")
        self.emitter = Emitter(self.simulator, self.ledger, self.args.rate)

    def cleanup(self) -> None:
        """Everything down, whatever happened; the bridge first (it may hold the emitter)."""
        if self.bridge is not None and self.bridge.alive():
            self.bridge.stop(timeout=5)
        if self.emitter is not None:
            self.emitter.stop(timeout=5)
        if self.subscriber is not None:
            self.subscriber.close()
        if self.simulator is not None:
            self.simulator.stop()
        self.broker.stop()

    # -- the run ----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        bridge, emitter, _ = self._parts()
        emitter.start()
        self.started = time.monotonic()
        warm = self._loop()
        end = Ending(emitted_for=time.monotonic() - self.started)
        if not emitter.stop():
            self.failures.append("the emitter thread did not stop (blocked in a write)")
        # A run shorter than the warm-up is measured from its end.
        end.rss_start, end.cpu_start = warm or (bridge.rss_kb(), bridge.cpu_seconds())
        drain_started = time.monotonic()
        end.drained = self._drain(self.args.drain_timeout)
        end.drain_seconds = time.monotonic() - drain_started
        self._sample(time.monotonic() - self.started)
        end.rss_end, end.cpu_end, end.rss_peak = (
            bridge.rss_kb(),
            bridge.cpu_seconds(),
            bridge.hwm_kb(),
        )
        if bridge.alive():
            end.exit_code = bridge.stop(timeout=self.args.stop_timeout)
            if end.exit_code != 0:
                self.failures.append(f"the bridge exited with status {end.exit_code} after SIGTERM")
        else:
            end.exit_code = bridge.process.returncode
        return self._report(end)

    def _loop(self) -> tuple[int, float] | None:
        """Faults and samples until the time is up; RSS and CPU after the warm-up."""
        args = self.args
        bridge, emitter, _ = self._parts()
        warm: tuple[int, float] | None = None
        next_restart = args.broker_restart_every or float("inf")
        next_drop = args.reader_drop_every or float("inf")
        next_sample = 0.0
        next_progress = args.progress
        while (elapsed := time.monotonic() - self.started) < args.minutes * 60:
            if not bridge.alive():
                self.failures.append(
                    f"the bridge exited with status {bridge.process.returncode} "
                    f"after {elapsed:.0f} s"
                )
                break
            if warm is None and elapsed >= args.warmup:
                warm = bridge.rss_kb(), bridge.cpu_seconds()
            if elapsed >= next_sample:
                self._sample(elapsed)
                next_sample += args.sample_every
            if elapsed >= next_restart:
                self._restart_broker(elapsed)
                next_restart += args.broker_restart_every
            if elapsed >= next_drop:
                self._drop_reader(elapsed)
                next_drop += args.reader_drop_every
            if elapsed >= next_progress:
                self._progress(elapsed)
                next_progress += args.progress
            if time.monotonic() - emitter.stats.last_progress > 10:
                self.failures.append(
                    f"the emitter made no progress for 10 s at {elapsed:.0f} s: "
                    "the bridge stopped reading the reader socket?"
                )
                break
            time.sleep(0.2)
        return warm

    def _parts(self) -> tuple[BridgeProcess, Emitter, Subscriber]:
        if self.bridge is None or self.emitter is None or self.subscriber is None:
            raise SoakError("setup() first")
        return self.bridge, self.emitter, self.subscriber

    def _sample(self, elapsed: float) -> None:
        bridge, emitter, subscriber = self._parts()
        self.samples.append(
            Sample(
                t=round(elapsed, 1),
                rss_kb=bridge.rss_kb(),
                cpu_s=round(bridge.cpu_seconds(), 2),
                threads=bridge.threads(),
                fds=bridge.open_fds(),
                spool_bytes=bridge.spool_bytes(),
                sent=emitter.stats.sent,
                received=subscriber.received_unique(),
            )
        )

    def _progress(self, elapsed: float) -> None:
        bridge, emitter, subscriber = self._parts()
        sent, received = emitter.stats.sent, subscriber.received_unique()
        print(
            f"[{elapsed:7.0f} s] sent {sent} (not sent {emitter.stats.not_sent}), "
            f"received {received}, outstanding {sent - received}, "
            f"duplicates {subscriber.stats.duplicates}, late {subscriber.stats.late}, "
            f"restarts {self._restarts}, drops {self._drops}, "
            f"bridge RSS {bridge.rss_kb()} kB, CPU {bridge.cpu_seconds():.1f} s",
            flush=True,
        )

    def _restart_broker(self, elapsed: float) -> None:
        self._restarts += 1
        every = self.args.sigkill_every
        kill = bool(every) and self._restarts % every == 0
        if kill:
            self.kill_windows.append(self._kill_window(elapsed))
        self.broker.stop(kill=kill)
        time.sleep(self.args.broker_down)
        self.broker.start()
        kind = "broker-sigkill" if kill else "broker-sigterm"
        self.faults.append(Fault(round(elapsed, 1), kind, f"down {self.args.broker_down:g} s"))

    def _kill_window(self, elapsed: float) -> KillWindow:
        _, _, subscriber = self._parts()
        ledger = self.ledger
        with ledger.lock:
            end = min(len(ledger.state), len(ledger.received))
            outstanding = [
                counter
                for counter in range(end)
                if ledger.state[counter] == SENT and not ledger.received[counter]
            ]
            highest = subscriber.highest
        exposed = [counter for counter in outstanding if counter > highest]
        return KillWindow(round(elapsed, 1), len(outstanding), exposed)

    def _drop_reader(self, elapsed: float) -> None:
        simulator = self.simulator
        assert simulator is not None
        self._drops += 1
        reset = self._drops % 2 == 0
        if not reset:  # a FIN follows the data in flight: nothing to take care of
            self._drop_now(simulator, elapsed, reset)
            return
        # An RST discards what the simulator's kernel has not sent yet - events the bridge
        # never saw. Pause the events and let those bytes go first, then reset.
        _, emitter, _ = self._parts()
        if not emitter.pause():
            self.failures.append(f"could not pause the emitter for the RST at {elapsed:.0f} s")
            return
        try:
            before = unsent_bytes(simulator)
            waited = time.monotonic()
            while unsent_bytes(simulator) and time.monotonic() - waited < 2.0:
                time.sleep(0.002)
            drop = ResetDrop(
                round(elapsed, 1),
                before,
                round(1000 * (time.monotonic() - waited), 1),
                unsent_bytes(simulator),
            )
            drop.discarded = self._unsent_tail(simulator.accepted, drop.still_unsent_bytes)
            self.reset_drops.append(drop)
            self._drop_now(simulator, elapsed, reset)
        finally:
            emitter.resume()

    def _unsent_tail(self, connection: int, unsent: int) -> list[int]:
        """The last events written to ``connection`` that ``unsent`` bytes hold."""
        _, emitter, _ = self._parts()
        ledger, tail = self.ledger, []
        with ledger.lock:
            counter = emitter.stats.attempted - 1
            while unsent > 0 and counter >= 0 and ledger.connection[counter] == connection:
                if ledger.state[counter] == SENT:
                    tail.append(counter)
                    unsent -= ledger.size[counter]
                counter -= 1
        return tail

    def _drop_now(self, simulator: Simulator, elapsed: float, reset: bool) -> None:
        # In a thread: a drop waits for the simulator's lock, which a write blocked on a
        # bridge that stopped reading would hold for ever.
        dropper = threading.Thread(target=simulator.drop_client, args=(reset,), daemon=True)
        dropper.start()
        dropper.join(5)
        if dropper.is_alive():
            self.failures.append(f"reader drop at {elapsed:.0f} s blocked for 5 s")
        self.faults.append(Fault(round(elapsed, 1), "reader-rst" if reset else "reader-fin"))

    def _excused(self) -> set[int]:
        """Events a loss of which is not the bridge's: see KillWindow and ResetDrop."""
        excused: set[int] = set()
        for window in self.kill_windows:
            excused.update(window.exposed)
        for drop in self.reset_drops:
            excused.update(drop.discarded)
        return excused

    def _drain(self, timeout: float) -> bool:
        """Wait for every event but the excused ones; then a little for those too."""
        _, emitter, subscriber = self._parts()
        excused = self._excused()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.ledger.lock:
                missing = sum(1 for c in excused if not self.ledger.received[c])
                received = subscriber.stats.unique
            if received + missing >= emitter.stats.sent:
                if missing:
                    time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
                return True
            time.sleep(0.2)
        return False

    # -- the report -------------------------------------------------------------------------

    def _report(self, end: Ending) -> dict[str, Any]:
        bridge, emitter, subscriber = self._parts()
        simulator = self.simulator
        assert simulator is not None
        ledger = self.ledger
        exposed = {c for window in self.kill_windows for c in window.exposed}
        discarded = {c for drop in self.reset_drops for c in drop.discarded}
        with ledger.lock:
            attempted = emitter.stats.attempted
            lost = [
                c for c in range(attempted) if ledger.state[c] == SENT and not ledger.received[c]
            ]
            phantom = sum(
                1 for c in range(attempted) if ledger.state[c] != SENT and ledger.received[c]
            )
            beyond = sum(1 for c in range(attempted, len(ledger.received)) if ledger.received[c])
            seqs = [ledger.seq[c] for c in range(attempted) if ledger.received[c]]
            start = self.started
            lost_detail = [
                {
                    "counter": c,
                    "sent_at_s": round(ledger.sent_at[c] - start, 3),
                    "reader_connection": ledger.connection[c],
                    "exposed_to_sigkill": c in exposed,
                    "unsent_at_rst": c in discarded,
                }
                for c in lost[:50]
            ]
        seq_not_increasing = sum(1 for a, b in itertools.pairwise(seqs) if b <= a)
        lost_sigkill = sum(1 for c in lost if c in exposed)
        lost_unsent = sum(1 for c in lost if c in discarded and c not in exposed)
        lost_bridge = len(lost) - lost_sigkill - lost_unsent
        growth = 100.0 * (end.rss_end - end.rss_start) / end.rss_start if end.rss_start > 0 else 0.0
        problems, problem_lines = bridge.problems()
        stats = subscriber.stats
        if lost_bridge:
            self.failures.append(f"{lost_bridge} event(s) lost by the bridge")
        if phantom or beyond:
            self.failures.append(f"{phantom + beyond} event(s) received that were never sent")
        if stats.seq_conflicts:
            self.failures.append(f"{stats.seq_conflicts} seq conflict(s)")
        if self.args.max_rss_growth is not None and growth > self.args.max_rss_growth:
            self.failures.append(
                f"bridge RSS grew by {growth:.1f} % (> {self.args.max_rss_growth:g} %)"
            )
        kinds = [fault.kind for fault in self.faults]
        return {
            "duration_s": round(end.emitted_for, 1),
            "rate_target_per_s": self.args.rate,
            "events_attempted": attempted,
            "events_sent": emitter.stats.sent,
            "events_not_sent_no_reader_client": emitter.stats.not_sent,
            "emitter_catch_ups": emitter.stats.catch_ups,
            "received_unique": stats.unique,
            "messages_received": stats.messages,
            "lost": len(lost),
            "lost_exposed_to_broker_sigkill": lost_sigkill,
            "lost_unsent_by_simulator_at_rst": lost_unsent,
            "lost_by_bridge": lost_bridge,
            "lost_sample": lost_detail,
            "duplicated": stats.duplicates,
            "duplicate_seqs": stats.duplicate_seqs,
            "seq_conflicts": stats.seq_conflicts,
            "seq_not_increasing_with_counter": seq_not_increasing,
            "out_of_order_first_copies": stats.out_of_order,
            "late_marked": stats.late,
            "unparseable_messages": stats.unparseable,
            "received_never_sent": phantom + beyond,
            "broker_restarts": sum(1 for kind in kinds if kind.startswith("broker")),
            "broker_restarts_sigterm": kinds.count("broker-sigterm"),
            "broker_restarts_sigkill": kinds.count("broker-sigkill"),
            "sigkill_outstanding_at_kill": [w.outstanding for w in self.kill_windows],
            "sigkill_exposed_events": [len(w.exposed) for w in self.kill_windows],
            "rst_drops_with_unsent_bytes": sum(1 for d in self.reset_drops if d.unsent_bytes),
            "rst_unsent_bytes_max": max((d.unsent_bytes for d in self.reset_drops), default=0),
            "rst_wait_ms_max": max((d.waited_ms for d in self.reset_drops), default=0.0),
            "rst_still_unsent_at_reset": sum(1 for d in self.reset_drops if d.still_unsent_bytes),
            "reader_drops": kinds.count("reader-fin") + kinds.count("reader-rst"),
            "reader_drops_fin": kinds.count("reader-fin"),
            "reader_drops_rst": kinds.count("reader-rst"),
            "reader_connections_accepted": simulator.accepted,
            "subscriber_connects": stats.connects,
            "subscriber_sessions_resumed": stats.sessions_resumed,
            "subscriber_callback_errors": stats.callback_errors,
            "drained": end.drained,
            "drain_s": round(end.drain_seconds, 1),
            "bridge_rss_start_kb": end.rss_start,
            "bridge_rss_end_kb": end.rss_end,
            "bridge_rss_growth_pct": round(growth, 2),
            "bridge_rss_peak_kb": end.rss_peak,
            "bridge_cpu_s": round(end.cpu_end, 2),
            "bridge_cpu_s_after_warmup": round(end.cpu_end - end.cpu_start, 2),
            "bridge_exit_code": end.exit_code,
            "bridge_log_problems": problems,
            "bridge_log_problem_lines": problem_lines,
            "faults": [asdict(fault) for fault in self.faults],
            "samples": [asdict(sample) for sample in self.samples],
            "workdir": str(self.workdir),
            "failures": self.failures,
            "ok": not self.failures,
        }


# -- command line -----------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    def line(label: str, value: object) -> None:
        print(f"  {label:<44} {value}")

    print("\n=== soak report ===")
    line("duration (emitting)", f"{report['duration_s']} s at {report['rate_target_per_s']}/s")
    line("events sent (written to the bridge's socket)", report["events_sent"])
    line("events not sent (no reader client)", report["events_not_sent_no_reader_client"])
    line("received by the subscriber (unique)", report["received_unique"])
    line("lost", report["lost"])
    line("  of which exposed to a broker SIGKILL", report["lost_exposed_to_broker_sigkill"])
    line("  of which never left the simulator (RST)", report["lost_unsent_by_simulator_at_rst"])
    line("  of which lost by the bridge", report["lost_by_bridge"])
    line("duplicated (extra copies)", report["duplicated"])
    line("late-marked", report["late_marked"])
    line(
        "seq conflicts / seq not increasing",
        (f"{report['seq_conflicts']} / {report['seq_not_increasing_with_counter']}"),
    )
    line("out-of-order first copies", report["out_of_order_first_copies"])
    line(
        "broker restarts (SIGTERM + SIGKILL)",
        f"{report['broker_restarts']} ({report['broker_restarts_sigterm']} + "
        f"{report['broker_restarts_sigkill']})",
    )
    line(
        "reader drops (FIN + RST)",
        f"{report['reader_drops']} ({report['reader_drops_fin']} + {report['reader_drops_rst']})",
    )
    line(
        "RST drops that had to wait for unsent bytes",
        f"{report['rst_drops_with_unsent_bytes']} (max {report['rst_unsent_bytes_max']} bytes, "
        f"{report['rst_wait_ms_max']} ms)",
    )
    line("drain", f"{report['drain_s']} s, complete: {report['drained']}")
    line(
        "bridge RSS start / end / peak (kB)",
        (
            f"{report['bridge_rss_start_kb']} / {report['bridge_rss_end_kb']} / "
            f"{report['bridge_rss_peak_kb']}"
        ),
    )
    line("bridge RSS growth", f"{report['bridge_rss_growth_pct']} %")
    line(
        "bridge CPU (total / after warm-up)",
        (f"{report['bridge_cpu_s']} s / {report['bridge_cpu_s_after_warmup']} s"),
    )
    line("bridge exit status after SIGTERM", report["bridge_exit_code"])
    line("bridge log ERROR/traceback lines", report["bridge_log_problems"])
    line("work directory (logs)", report["workdir"])
    print("  result:", "PASS" if report["ok"] else "FAIL")
    for failure in report["failures"]:
        print("   -", failure)
    sys.stdout.flush()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=20.0, help="emitting time (default 20)")
    parser.add_argument("--rate", type=float, default=200.0, help="events per second (200)")
    parser.add_argument("--broker-restart-every", type=float, default=60.0, help="s; 0 = never")
    parser.add_argument(
        "--sigkill-every",
        type=int,
        default=4,
        help="every N-th broker restart is a SIGKILL instead of a SIGTERM (4); 0 = never",
    )
    parser.add_argument("--broker-down", type=float, default=2.0, help="s the broker stays down")
    parser.add_argument("--reader-drop-every", type=float, default=45.0, help="s; 0 = never")
    parser.add_argument("--warmup", type=float, default=10.0, help="s before the first RSS reading")
    parser.add_argument("--sample-every", type=float, default=10.0, help="s between RSS samples")
    parser.add_argument("--progress", type=float, default=30.0, help="s between progress lines")
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument("--stop-timeout", type=float, default=20.0, help="s the bridge gets")
    parser.add_argument(
        "--max-rss-growth", type=float, default=10.0, help="%% of RSS growth that fails the run"
    )
    parser.add_argument(
        "--no-broker-persistence",
        dest="broker_persistence",
        action="store_false",
        help="restart the broker empty (then even a SIGTERM restart loses queued events)",
    )
    parser.add_argument(
        "--autosave-interval",
        type=int,
        default=2,
        help="s between the broker's saves: what a SIGKILLed broker keeps (2)",
    )
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir after a pass")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0:
        parser.error("--minutes and --rate must be positive")
    return args


def _raise_interrupted(signum: int, frame: types.FrameType | None) -> None:
    raise StopRequestedError(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        workdir = args.workdir.resolve()
    else:
        workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    print(f"soak: {args.minutes:g} min at {args.rate:g} events/s, work directory {workdir}")
    soak = Soak(args, workdir)
    status = 2
    try:
        soak.setup()
        report = soak.run()
        print_report(report)
        if args.json is not None:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        status = 0 if report["ok"] else 1
    except SoakError as exc:
        print(f"soak: {exc}", file=sys.stderr)
    except StopRequestedError as exc:
        print(f"soak: interrupted ({exc}); cleaning up", file=sys.stderr)
        status = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the clean-up finish
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        soak.cleanup()
        if status == 0 and args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
