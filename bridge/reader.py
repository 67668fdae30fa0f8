"""Owns the one TCP connection the reader allows: connect, read, write, reconnect - from the
event loop, without a thread and without a timer while the reader is silent.

This module and the connection it holds (``bridge.reader_connection``: the socket's writes and
the stall watch) are the only ones that touch the reader's socket. It reads bytes and hands
them to :class:`bridge.protocol.StreamDecoder`, then the frames to its :class:`ReaderSink`;
it writes commands with a deadline and never after it. It does not know about MQTT. A dead
reader host is noticed by TCP keepalive (the kernel's timers, not ours); a command written to
a host that died is noticed by a check armed only while written data is unacknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass
from typing import Protocol

from bridge.backoff import Backoff
from bridge.logs import Throttle
from bridge.options import ReaderOptions
from bridge.protocol import Frame, Skipped
from bridge.reader_connection import CommandNotSentError, ReaderConnection
from bridge.tcp import describe_error, open_socket

log = logging.getLogger(__name__)

RECV_SIZE = 65536
QUICK_CLOSE = 2.0
"""An EOF within this many seconds of connecting, before any byte, means the slot is busy."""
SETTLE = 0.5
"""Seconds a new connection must stay open (or deliver data) before the link counts as up."""
STABLE_LINK = 10.0
"""A link that stayed up this long (or delivered data) resets the reconnect backoff."""
_DOWN = "reader-down"


class ReaderSink(Protocol):
    """Where the link hands what it reads (the session's event path)."""

    def frames(self, frames: list[Frame]) -> None: ...
    def skipped(self, skipped: Skipped) -> None: ...
    def link_changed(self, up: bool, reason: str) -> None: ...


@dataclass
class ReaderCounters:
    connects: int = 0
    frames: int = 0
    skipped: int = 0
    skipped_bytes: int = 0
    last_frame_at: float | None = None  # time.monotonic() of the last frame; None before any


class ReaderLink:
    """Keeps a connection to the reader and turns its bytes into frames for ``sink``."""

    def __init__(
        self, options: ReaderOptions, sink: ReaderSink, *, backoff_initial: float = 0.5
    ) -> None:
        self.options = options
        self._sink = sink
        self._backoff = Backoff(backoff_initial, options.backoff_max)
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._up = asyncio.Event()
        self._conn: ReaderConnection | None = None
        self._last_write = 0.0
        self._throttle = Throttle(log)
        self._extra = {"device_id": options.device_id, "link": "reader"}
        self.counters = ReaderCounters()
        self.down_reason = "not connected yet"

    @property
    def is_up(self) -> bool:
        return self._up.is_set()

    def stop(self) -> None:
        """End the loop of :meth:`run`: the connection closes at once, the slot is freed."""
        self._stopping.set()
        self._end("bridge stopping")

    # -- the connection's life ---------------------------------------------------------------

    async def run(self) -> None:
        """Connect, read, reconnect with backoff - until :meth:`stop`."""
        target = f"{self.options.host}:{self.options.port}"
        while not self._stopping.is_set():
            try:
                sock = await open_socket(self.options)
            except OSError as exc:
                self.down_reason = describe_error(exc)
            else:
                self.down_reason = await self._serve(sock)
            if self._stopping.is_set():
                return
            delay = self._backoff.next_delay()
            # The first failure at once; while the reader stays away, one line a minute.
            self._throttle.warning(
                _DOWN,
                "reader %s link down: %s; retrying in %.1f s",
                target,
                self.down_reason,
                delay,
                extra={**self._extra, "state": "down"},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _serve(self, sock: socket.socket) -> str:
        """Read until the connection ends; why it ended."""
        if self._stopping.is_set():  # stop() came during the connect: free the slot
            sock.close()
            return "bridge stopping"
        conn = ReaderConnection(sock, self.options.max_object, self.options.keepalive)
        self._conn = conn
        self.counters.connects += 1
        # A busy reader may accept and close at once: the link counts as up only after it
        # survived a moment (or spoke), so status does not flap and no command is written
        # into a connection that is already gone.
        conn.settle = self._loop.call_later(SETTLE, self._link_up)
        self._loop.add_reader(sock.fileno(), self._readable)
        try:
            return await conn.ended
        finally:
            self._close(conn)

    def _close(self, conn: ReaderConnection) -> None:
        conn.close()
        self._conn = None
        was_up = self.is_up
        self._up.clear()
        # A link that carried data, or lasted, was a good one: reconnect quickly. One that
        # the reader closed at once (a busy slot) keeps backing off.
        if conn.received or time.monotonic() - conn.opened_at > STABLE_LINK:
            self._backoff.reset()
        if was_up and not self._stopping.is_set():
            self._sink.link_changed(False, conn.ended.result())

    def _end(self, reason: str) -> None:
        """The current connection is over (``reason``): :meth:`_serve` cleans up."""
        if self._conn is not None:
            self._conn.end(reason)

    def _link_up(self) -> None:
        conn = self._conn
        if conn is None or self.is_up:
            return
        if conn.settle is not None:
            conn.settle.cancel()
        self._up.set()
        self._throttle.reset(_DOWN)  # how many attempts failed meanwhile, first
        log.info(
            "reader %s:%d link up",
            self.options.host,
            self.options.port,
            extra={**self._extra, "state": "up"},
        )
        self._sink.link_changed(True, "connected")

    # -- reading ----------------------------------------------------------------------------

    def _readable(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._end(describe_error(exc))
            return
        if not data:
            self._end(self._closed_reason(conn))
            return
        self._link_up()  # it spoke: up now, whatever SETTLE says
        conn.received += len(data)
        self._dispatch(conn.decoder.feed(data))

    def _closed_reason(self, conn: ReaderConnection) -> str:
        if conn.received == 0 and time.monotonic() - conn.opened_at < QUICK_CLOSE:
            return (
                "the reader closed the connection right after accepting it: "
                "another client probably holds its single connection slot"
            )
        return "the reader closed the connection"

    def _dispatch(self, items: list[Frame | Skipped]) -> None:
        frames = [item for item in items if isinstance(item, Frame)]
        for item in items:
            if isinstance(item, Skipped):
                self.counters.skipped += 1
                self.counters.skipped_bytes += item.size
                self._sink.skipped(item)
        if frames:
            self.counters.frames += len(frames)
            self.counters.last_frame_at = time.monotonic()
            self._sink.frames(frames)

    # -- commands ---------------------------------------------------------------------------

    async def send(self, data: bytes, deadline: float, gap: float = 0.0) -> None:
        """Write ``data`` whole before ``deadline`` (monotonic), at least ``gap`` s after the
        last write; :class:`CommandNotSentError` when that cannot be done - nothing is ever
        written late. One caller at a time (each reader's command worker)."""
        while True:
            remaining = deadline - time.monotonic()
            if not self.is_up:
                if remaining <= 0:
                    raise CommandNotSentError(f"the reader link is down ({self.down_reason})")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._up.wait(), remaining)
                continue
            wait_until = self._last_write + gap
            if wait_until > deadline:
                raise CommandNotSentError("earlier commands kept the reader busy past the deadline")
            if wait_until > time.monotonic():
                await asyncio.sleep(wait_until - time.monotonic())
                continue  # the link may have gone meanwhile
            conn = self._conn
            assert conn is not None  # up means connected
            await conn.write(data, deadline)
            self._last_write = time.monotonic()
            return

    def write_now(self, data: bytes, gap: float = 0.0) -> bool:
        """Write ``data`` whole now, if the link is up, no write waits for room, and ``gap``
        s have passed since the last write; else write nothing and say False (the caller
        takes :meth:`send`'s way). A short write, which a small command into a socket that
        had room does not meet, restarts the link: the rest must never follow late."""
        conn = self._conn
        if conn is None or not self.is_up:
            return False
        if time.monotonic() < self._last_write + gap or not conn.write_now(data):
            return False
        self._last_write = time.monotonic()
        return True
