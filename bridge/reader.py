"""Owns the one TCP connection the reader allows: connect, keepalive, read, write, reconnect.

This module is the only one that touches the reader's socket. It reads bytes and hands
them to :class:`bridge.protocol.StreamDecoder`; it writes commands with a deadline and
never after it. It does not know about MQTT.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bridge.logs import Throttle
from bridge.options import ReaderOptions
from bridge.protocol import Frame, Skipped, StreamDecoder

log = logging.getLogger(__name__)

RECV_SIZE = 16384
QUICK_CLOSE = 2.0
"""An EOF within this many seconds of connecting, before any byte, means the slot is busy."""
SETTLE = 0.5
"""Seconds a new connection must stay open (or deliver data) before the link counts as up."""
STABLE_LINK = 10.0
"""A link that stayed up this long (or delivered data) resets the reconnect backoff."""
_DOWN = "reader-down"


class CommandNotSentError(Exception):
    """A command could not be written before its deadline; ``str()`` says why."""


class Backoff:
    """Capped exponential backoff with jitter: each delay is drawn from [d/2, d]."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * (2**self._attempt))
        self._attempt = min(self._attempt + 1, 32)
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._attempt = 0


@dataclass
class ReaderCounters:
    connects: int = 0
    frames: int = 0
    skipped: int = 0
    skipped_bytes: int = 0
    last_frame_at: float | None = None  # time.monotonic() of the last frame; None before any


def keepalive_timings(window: float) -> tuple[int, int, int]:
    """TCP keepalive idle, interval and count that notice a dead host within ``window`` s."""
    total = max(2, int(window))
    idle = max(1, total // 3)
    count = min(4, total - idle)  # fewer probes for very short windows, never zero
    interval = max(1, (total - idle) // count)
    return idle, interval, count


def is_stalled(sock: socket.socket, window: float) -> bool:
    """Data written and not acknowledged, and no ACK at all for more than ``window`` seconds."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    if len(info) < 60:
        return False
    # struct tcp_info (linux/tcp.h): 8 bytes of u8 fields, then u32s; tcpi_unacked at offset
    # 24, tcpi_last_ack_recv (ms since the last ACK) at offset 56.
    (unacked,) = struct.unpack_from("I", info, 24)
    (last_ack_ms,) = struct.unpack_from("I", info, 56)
    return bool(unacked) and last_ack_ms > window * 1000


def describe_error(exc: BaseException) -> str:
    """Why the link is down, in words that point at the fix."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the reader's host name ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: nothing listens there (is the reader's TCP server on, 02C0=24?)"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the reader"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out: no answer from the reader host (powered off, or the network is down)"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"reader host unreachable ({exc.strerror})"
    return f"{type(exc).__name__}: {exc}"


class ReaderLink:
    """Keeps a connection to the reader and turns its bytes into frames.

    ``on_frame`` and ``on_skipped`` are called from the link's thread for every decoded item;
    ``on_state(up, reason)`` when the link goes up or down.
    """

    def __init__(
        self,
        options: ReaderOptions,
        on_frame: Callable[[Frame], None],
        on_skipped: Callable[[Skipped], None],
        on_state: Callable[[bool, str], None],
        *,
        backoff_initial: float = 0.5,
        on_batch: Callable[[], None] | None = None,
    ) -> None:
        self.options = options
        self._on_frame = on_frame
        self._on_skipped = on_skipped
        self._on_state = on_state
        self._on_batch = on_batch  # after the items of one read: e.g. commit them together
        self._backoff = Backoff(backoff_initial, options.backoff_max)
        self._stop = threading.Event()
        self._up = threading.Event()
        self._sock: socket.socket | None = None
        self._write_lock = threading.Lock()
        self._last_write = 0.0
        self.counters = ReaderCounters()
        self.down_reason = "not connected yet"
        self._throttle = Throttle(log)

    @property
    def is_up(self) -> bool:
        return self._up.is_set()

    def stop(self) -> None:
        """Ask the loop to end; unblocks a pending read at once."""
        self._stop.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        """Connect, read, reconnect with backoff - until :meth:`stop`."""
        target = f"{self.options.host}:{self.options.port}"
        while not self._stop.is_set():
            try:
                sock = self._connect()
            except OSError as exc:
                self.down_reason = describe_error(exc)
            else:
                if self._stop.is_set():  # stop() came during the connect: free the slot
                    sock.close()
                    break
                self.down_reason = self._serve(sock)
                if self._stop.is_set():
                    break
                self._on_state(False, self.down_reason)
            delay = self._backoff.next_delay()
            # The first failure at once; while the reader stays away, one line a minute.
            self._throttle.warning(
                _DOWN,
                "reader %s link down: %s; retrying in %.1f s",
                target,
                self.down_reason,
                delay,
                extra={"device_id": self.options.device_id, "link": "reader", "state": "down"},
            )
            self._stop.wait(delay)

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(
            (self.options.host, self.options.port), timeout=self.options.connect_timeout
        )
        try:
            self._tune(sock)
        except OSError:
            sock.close()
            raise
        return sock

    def _tune(self, sock: socket.socket) -> None:
        # Keepalive notices a reader that lost power; silence alone is normal (no card for hours).
        idle, interval, count = keepalive_timings(self.options.keepalive)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
        # Bounds how long written data may stay unacknowledged (a command to a dead host).
        sock.setsockopt(
            socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(self.options.keepalive * 1000)
        )
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)  # reads block; stop() shuts the socket down to wake them

    def _serve(self, sock: socket.socket) -> str:
        """Read until the link ends; return why it ended."""
        decoder = StreamDecoder(self.options.max_object)
        connected_at = time.monotonic()
        received = 0
        self._sock = sock
        self.counters.connects += 1
        try:
            # A busy reader may accept and close at once: declare the link up only after it
            # survived a moment (or spoke), so status does not flap and no command is written
            # into a connection that is already gone.
            readable, _, _ = select.select([sock], [], [], SETTLE)
            data = sock.recv(RECV_SIZE) if readable else None
            if data is not None and not data:
                return self._closed_reason(connected_at, received)
            self._up.set()
            self._throttle.reset(_DOWN)  # how many attempts failed meanwhile, first
            log.info(
                "reader %s:%d link up",
                self.options.host,
                self.options.port,
                extra={"device_id": self.options.device_id, "link": "reader", "state": "up"},
            )
            self._on_state(True, "connected")
            while True:
                if data:
                    received += len(data)
                    self._dispatch(decoder.feed(data))
                data = self._receive(sock)
                if not data:
                    return self._closed_reason(connected_at, received)
        except OSError as exc:
            return "bridge stopping" if self._stop.is_set() else describe_error(exc)
        finally:
            self._up.clear()
            with self._write_lock:
                self._sock = None
                sock.close()
            # A link that carried data, or lasted, was a good one: reconnect quickly. One that
            # the reader closed at once (a busy slot) keeps backing off.
            if received or time.monotonic() - connected_at > STABLE_LINK:
                self._backoff.reset()

    def _receive(self, sock: socket.socket) -> bytes:
        """The next bytes from the reader, waking every second to look for a stalled write.

        Linux sends no keepalive probe while written data is unacknowledged, and
        TCP_USER_TIMEOUT counts from the write: a command written to a reader that had just
        lost power would delay noticing it to nearly twice the keepalive window. So while
        data is in flight, no ACK for longer than the window means the reader is gone.
        """
        while True:
            readable, _, _ = select.select([sock], [], [], 1.0)
            if readable:
                return sock.recv(RECV_SIZE)
            if is_stalled(sock, self.options.keepalive):
                raise TimeoutError(errno.ETIMEDOUT, "no acknowledgement from the reader host")

    def _closed_reason(self, connected_at: float, received: int) -> str:
        if self._stop.is_set():
            return "bridge stopping"
        if received == 0 and time.monotonic() - connected_at < QUICK_CLOSE:
            return (
                "the reader closed the connection right after accepting it: "
                "another client probably holds its single connection slot"
            )
        return "the reader closed the connection"

    def _dispatch(self, items: list[Frame | Skipped]) -> None:
        now = time.monotonic()
        for item in items:
            if isinstance(item, Frame):
                self.counters.frames += 1
                self.counters.last_frame_at = now
                self._on_frame(item)
            else:
                self.counters.skipped += 1
                self.counters.skipped_bytes += item.size
                self._on_skipped(item)
        if items and self._on_batch is not None:
            self._on_batch()

    # -- commands ------------------------------------------------------------------------

    def send(self, data: bytes, deadline: float, gap: float = 0.0) -> None:
        """Write ``data`` whole before ``deadline`` (monotonic), at least ``gap`` s after the last.

        Raises :class:`CommandNotSentError` when that cannot be done; nothing is written late.
        """
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._up.wait(remaining):
                raise CommandNotSentError(f"the reader link is down ({self.down_reason})")
            with self._write_lock:
                sock = self._sock
                if sock is None:
                    continue  # went down between the wait and the lock: wait again
                wait_until = self._last_write + gap
                if wait_until > deadline:
                    raise CommandNotSentError(
                        "earlier commands kept the reader busy past the deadline"
                    )
                delay = wait_until - time.monotonic()
                if delay > 0:  # sleep(0) would still hand the GIL to another thread
                    time.sleep(delay)
                self._write(sock, data, deadline)
                self._last_write = time.monotonic()
                return

    def _write(self, sock: socket.socket, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if len(view) < len(data):
                    # Half a command is on the wire; the rest must never follow late.
                    self._abort(sock)
                raise CommandNotSentError("the reader did not take the command before the deadline")
            try:  # try first: select() before every write cost a syscall and a GIL hand-over
                sent = sock.send(view, socket.MSG_DONTWAIT)
            except BlockingIOError:
                select.select([], [sock], [], remaining)
                continue
            except OSError as exc:
                self._abort(sock)
                raise CommandNotSentError(
                    f"write to the reader failed: {describe_error(exc)}"
                ) from None
            view = view[sent:]

    @staticmethod
    def _abort(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # the read loop sees the end and reconnects
