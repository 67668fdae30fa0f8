"""A SpringCore reader simulator: the TCP server side of "Smart Reader + JSON over TCP".

Like the reader (PROTOCOL.md §1) it serves one client at a time, sends READER EVENTs and
never a greeting, and takes READER COMMANDs without replying. It is the double the tests
use as the reader and a tool to try flows without hardware: events on a timer or on demand,
and each command logged with its meaning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import random
import socket
import struct
import threading
import time
from typing import Final, Literal

from bridge.protocol import Frame, StreamDecoder

log = logging.getLogger(__name__)

SEPARATORS: Final = {"crlf": b"\r\n", "lf": b"\n", "nul": b"\x00", "space": b" ", "none": b""}
PROFILES: Final = ("nfc", "ble", "uhf")
SEQUENCES: Final = {
    "05": "cancel (all off)",
    "06": "startup",
    "07": "shutdown",
    "08": "please wait",
    "0D": "self-test",
    "0E": "wink (locate the device)",
    "10": "started, idle",
    "11": "started, active",
    "20": "RF off",
    "21": "RF on",
    "22": "reading",
    "23": "read success",
    "24": "read failed",
    "25": "read again",
    "60": "access granted",
    "61": "access denied",
}

Busy = Literal["close", "hang"]


def describe_command(command: dict[str, object]) -> str:
    """What a READER COMMAND would make the reader do, in words."""
    parts = []
    for key, value in command.items():
        if key == "Sequence":
            code = (
                value
                if isinstance(value, str)
                else f"{value:02X}"
                if isinstance(value, int)
                else ""
            )
            parts.append(f"play sequence {code}: {SEQUENCES.get(code.upper(), 'unknown code')}")
        elif key == "Leds" and isinstance(value, str):
            parts.append(
                "LEDs " + " ".join(_led_mode(value[i : i + 2]) for i in range(0, len(value), 2))
            )
        elif key == "Buzzer":
            ms = value if isinstance(value, int) else int(str(value), 16)
            parts.append(f"beep {ms} ms")
        else:
            parts.append(f"{key} = {json.dumps(value)}")
    return "; ".join(parts) or "nothing"


def _led_mode(byte: str) -> str:
    code = int(byte, 16)
    if code in (0x00, 0x01, 0x0F):
        return {0x00: "off", 0x01: "on", 0x0F: "breathing"}[code]
    return f"blink(freq {code >> 4}, pattern {code & 0x0F})"


class EventFactory:
    """Builds realistic READER EVENTs (key order as the reader sends them)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()  # noqa: S311 - test data
        self._boot = self._rng.randint(1, 999)
        self._started = time.monotonic()

    def _hex(self, size: int) -> str:
        return "".join(f"{self._rng.randrange(256):02X}" for _ in range(size))

    def _uptime(self) -> str:
        return f"{self._boot}:{time.monotonic() - self._started:.3f}"

    def make(
        self, profile: str, move: str | None = None, tag_id: str | None = None
    ) -> dict[str, object]:
        event: dict[str, object]
        if profile == "ble":
            event = {
                "Interface": "bluetooth",
                "Protocol": self._rng.choice(["BLE", "iBeacon", "Eddystone"]),
                "Template": 0,
                "TagId": tag_id or self._hex(6),
                "RSSI": -self._rng.randint(40, 95),
                "TagData": self._hex(25),
            }
        elif profile == "uhf":
            event = {
                "Interface": "900",
                "Protocol": "UHF-EPC",
                "Template": 1,
                "TagId": tag_id or "E280" + self._hex(10),
                "RSSI": -self._rng.randint(30, 80),
            }
        else:
            uid = tag_id or "04" + self._hex(6)
            event = {
                "Interface": "13.56",
                "Protocol": "NFC-A",
                "Template": 1,
                "TagId": uid,
                "TagData": "00" + uid,
            }
        if move:
            event["Move"] = move
        event["Uptime"] = self._uptime()
        return event


class Simulator:
    """A reader on ``host:port`` (port 0 picks a free one; see :attr:`port`)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        separator: bytes = b"\r\n",
        busy: Busy = "close",
        seed: int | None = None,
    ) -> None:
        self.separator = separator
        self.busy = busy
        self.factory = EventFactory(random.Random(seed))  # noqa: S311 - test data
        self.commands: queue.Queue[dict[str, object]] = queue.Queue()
        self.accepted = 0
        self.turned_away = 0
        self._listener = socket.create_server((host, port), reuse_port=False)
        self.host, self.port = self._listener.getsockname()[:2]
        self._client: socket.socket | None = None
        self._lock = threading.Lock()
        self._connected = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept_loop, name="sim-accept", daemon=True)

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> Simulator:
        self._thread.start()
        log.info("simulated reader listening on %s:%d", self.host, self.port)
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone does not
        self._listener.close()
        self.drop_client()
        for sock in self._held:
            sock.close()
        self._thread.join(2)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what a test (or the command line) does ------------------------------------------

    def wait_client(self, timeout: float = 10.0) -> bool:
        """Wait until a client is connected."""
        with self._connected:
            return self._connected.wait_for(lambda: self._client is not None, timeout)

    def wait_no_client(self, timeout: float = 10.0) -> bool:
        with self._connected:
            return self._connected.wait_for(lambda: self._client is None, timeout)

    @property
    def has_client(self) -> bool:
        return self._client is not None

    def emit(
        self, event: dict[str, object] | None = None, profile: str = "nfc", move: str | None = None
    ) -> bytes:
        """Send one event (a generated one if none is given); return the bytes sent."""
        event = event if event is not None else self.factory.make(profile, move)
        data = json.dumps(event, separators=(",", ":")).encode() + self.separator
        self.send_raw(data)
        return data

    def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (garbage, halves of objects...). Raises if no client."""
        with self._lock:
            client = self._client
            if client is None:
                raise ConnectionError("no client is connected to the simulator")
            client.sendall(data)

    def drop_client(self, reset: bool = False) -> None:
        """Close the client's connection: a FIN, or an RST when ``reset``."""
        with self._lock:
            client, self._client = self._client, None
            self._connected.notify_all()
        if client is None:
            return
        # shutdown() wakes the read thread blocked in recv(); close() alone would not, and the
        # socket (and its RST) would wait for it.
        with contextlib.suppress(OSError):
            if reset:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.shutdown(socket.SHUT_RD)  # no FIN; close() with linger 0 sends the RST
            else:
                client.shutdown(socket.SHUT_RDWR)
        client.close()

    # -- internals ---------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, peer = self._listener.accept()
            except OSError:
                return
            with self._lock:
                busy = self._client is not None
                if not busy:
                    self._client = sock
                    self.accepted += 1
                    self._connected.notify_all()
            if busy:
                self.turned_away += 1
                log.info("second client %s:%d turned away (%s)", *peer[:2], self.busy)
                if self.busy == "hang":
                    self._held.append(sock)
                else:
                    sock.close()
                continue
            # Each event goes out at once, as a reader's would (no Nagle delay that an RST
            # could catch unsent: the soak saw that).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            log.info("client %s:%d connected", *peer[:2])
            threading.Thread(target=self._read_loop, args=(sock,), daemon=True).start()

    def _read_loop(self, sock: socket.socket) -> None:
        decoder = StreamDecoder()
        while True:
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                break
            for item in decoder.feed(data):
                if isinstance(item, Frame):
                    log.info(
                        "command %s -> %s", item.payload.decode(), describe_command(item.fields)
                    )
                    self.commands.put(item.fields)
                else:
                    log.warning("unreadable command bytes: %s (%r)", item.reason, item.sample)
        with self._lock:
            if self._client is sock:
                self._client = None
                self._connected.notify_all()
        sock.close()
        log.info("client disconnected")

    def run_timer(self, interval: float, profiles: tuple[str, ...], moves: bool) -> None:
        """Emit an event every ``interval`` s while a client is connected, until stopped."""
        while not self._stop.wait(interval):
            if not self.has_client:
                continue
            profile = random.choice(profiles)  # noqa: S311 - test data
            try:
                if moves:
                    event = self.factory.make(profile, "Insert")
                    self.emit(event)
                    removal = dict(
                        event, Move="Remove", Uptime=self.factory.make(profile)["Uptime"]
                    )
                    self._stop.wait(min(1.0, interval / 2))
                    self.emit(removal)
                else:
                    self.emit(profile=profile)
            except OSError as exc:
                log.info("could not send: %s", exc)
