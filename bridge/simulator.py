"""A SpringCore reader simulator: the TCP server side of "Smart Reader + JSON over TCP".

Like the reader (docs/reader-protocol.md §1) it serves one client at a time, sends READER EVENTs and
never a greeting, and takes READER COMMANDs without replying. It is the double the tests
use as the reader and a tool to try flows without hardware: events on a timer or on demand,
and each command logged with its meaning.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import queue
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Final, Literal

from bridge.protocol import Frame, StreamDecoder
from bridge.tag import PROFILES, Clock, EventFactory

__all__ = [  # PROFILES and EventFactory too: callers took them from here first
    "PROFILES",
    "SEPARATORS",
    "Busy",
    "EventFactory",
    "Simulator",
    "TagNotOnReaderError",
    "describe_command",
    "describe_listen_error",
]

log = logging.getLogger(__name__)

SEPARATORS: Final = {"crlf": b"\r\n", "lf": b"\n", "nul": b"\x00", "space": b" ", "none": b""}
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
Wait = Callable[[float], bool]
"""Sleeps up to the given seconds; True means "stop now" (``threading.Event.wait``)."""


class TagNotOnReaderError(LookupError):
    """A Remove was asked for a tag that is not on the simulated reader."""


def describe_listen_error(exc: OSError) -> str:
    """Why the simulator cannot listen on its address, in words that point at the fix."""
    if exc.errno == errno.EADDRINUSE:
        return "the port is in use (choose another --port, or 0 for any free one)"
    if exc.errno == errno.EACCES:
        return "not allowed (ports below 1024 need privileges: choose another --port)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "not an address of this machine (check --host)"
    # socket.create_server appends "(while attempting to bind on address ...)": the caller's
    # line names the address already.
    return (exc.strerror or str(exc)).split(" (while attempting", 1)[0]


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


class Simulator:
    """A reader on ``host:port`` (port 0 picks a free one; see :attr:`port`).

    ``clock`` times the timer and the events' ``Uptime``; tests pass a fake one.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        separator: bytes = b"\r\n",
        busy: Busy = "close",
        seed: int | None = None,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.separator = separator
        self.busy = busy
        self.factory = EventFactory(random.Random(seed), clock)  # noqa: S311 - test data
        self._clock = clock
        self._tags: list[dict[str, object]] = []  # Insert events of the tags on the reader
        self._tags_lock = threading.Lock()
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

    def insert(self, profile: str = "nfc") -> dict[str, object]:
        """Put a new tag on the reader: send its Insert event and return it."""
        event = self.factory.make(profile, "Insert")
        self.emit(event)  # raises without a client: then no tag was put on
        with self._tags_lock:
            self._tags.append(event)
        return event

    def remove(self, tag_id: str | None = None) -> dict[str, object]:
        """Take a tag off the reader (``tag_id``, or the last one inserted): send its Remove
        event and return it. The tag is off even if that send fails, as a card lifted from a
        reader whose host is away; :class:`TagNotOnReaderError` if no such tag is on."""
        with self._tags_lock:
            on = [i for i, tag in enumerate(self._tags) if tag_id in (None, tag["TagId"])]
            if not on:
                where = "no tag is on" if tag_id is None else f"tag {tag_id} is not on"
                raise TagNotOnReaderError(f"{where} the reader")
            inserted = self._tags.pop(on[-1])
        event = self.factory.removal(inserted)
        self.emit(event)
        return event

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

    def run_timer(
        self, interval: float, profiles: tuple[str, ...], moves: bool, wait: Wait | None = None
    ) -> None:
        """Emit an event every ``interval`` s while a client is connected, until stopped.

        Ticks are at fixed times, start + k * interval on the simulator's clock, so neither
        the time a send takes nor a Remove's hold stretches the period; a tick missed while
        the process could not run is skipped, not made up in a burst. With ``moves`` each
        tick puts a tag on (Insert) and takes it off ``min(1, interval / 2)`` s later
        (Remove). ``wait`` sleeps and says when to stop (default: until :meth:`stop`).
        """
        if not interval > 0:
            raise ValueError(f"interval must be more than 0 s, got {interval}")
        wait = wait or self._stop.wait
        hold = min(1.0, interval / 2) if moves else None
        start, tick = self._clock(), 1
        while not self._wait_until(start + tick * interval, wait):
            if self.has_client:
                self._tick(random.choice(profiles), hold, start + tick * interval, wait)  # noqa: S311
            tick = max(tick + 1, math.ceil((self._clock() - start) / interval))

    def _tick(self, profile: str, hold: float | None, due: float, wait: Wait) -> None:
        try:
            if hold is None:
                self.emit(profile=profile)
                return
            tag_id = str(self.insert(profile)["TagId"])
            if not self._wait_until(due + hold, wait):
                self.remove(tag_id)
        except OSError as exc:
            log.info("could not send: %s", exc)
        except TagNotOnReaderError:
            pass  # taken off by hand (the console's "remove") during the hold

    def _wait_until(self, deadline: float, wait: Wait) -> bool:
        """Sleep until ``deadline`` on the simulator's clock; True if told to stop."""
        stopped = wait(max(0.0, deadline - self._clock()))
        while not stopped and self._clock() < deadline:  # a wait may end a little early
            stopped = wait(deadline - self._clock())
        return stopped
