"""One TCP connection to the reader, while it lasts: its socket, its decoder, its writes and
the watch on what the reader host has not acknowledged.

:class:`bridge.reader.ReaderLink` decides when to connect, read and write (the link's life,
the command gap, the deadlines); this module only does a write it is asked for, whole or not
at all, and ends the connection when the socket says it is gone. It never reconnects and
never logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import time

from bridge.protocol import StreamDecoder
from bridge.tcp import describe_error, unacknowledged

STALL_CHECK = 1.0
"""Seconds between two looks at written data the reader host has not acknowledged."""


class CommandNotSentError(Exception):
    """A command could not be written before its deadline; ``str()`` says why."""


class ReaderConnection:
    """One connected socket to the reader; ``ended`` resolves with why it ended."""

    def __init__(self, sock: socket.socket, max_object: int, keepalive: float) -> None:
        self.sock = sock
        self.decoder = StreamDecoder(max_object)
        self._loop = asyncio.get_running_loop()
        self.ended: asyncio.Future[str] = self._loop.create_future()
        self.opened_at = time.monotonic()
        self.received = 0
        self.settle: asyncio.TimerHandle | None = None
        self.writable: asyncio.Future[None] | None = None
        self._keepalive = keepalive
        self._stall: asyncio.TimerHandle | None = None

    def end(self, reason: str) -> None:
        """The connection is over (``reason``); a write waiting for room fails."""
        if self.ended.done():
            return
        self.ended.set_result(reason)
        if self.writable is not None and not self.writable.done():
            self.writable.set_exception(ConnectionResetError(errno.ECONNRESET, reason))

    def abort(self, reason: str) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.end(reason)

    def close(self) -> None:
        for timer in (self.settle, self._stall):
            if timer is not None:
                timer.cancel()
        self._loop.remove_reader(self.sock.fileno())
        self._loop.remove_writer(self.sock.fileno())
        self.sock.close()

    # -- writing ----------------------------------------------------------------------------

    def write_now(self, data: bytes) -> bool:
        """Write ``data`` whole now if the socket has room (and no write waits for room);
        else write nothing and say False. A short write, which a small command into a socket
        that had room does not meet, ends the connection: the rest must never follow late."""
        if self.writable is not None:
            return False
        try:
            written = self.sock.send(data)
        except BlockingIOError:
            return False
        except OSError as exc:
            self.abort(describe_error(exc))
            return False
        if written < len(data):
            self.abort("the reader took only part of a command")
            return False
        self._watch_stall()
        return True

    async def write(self, data: bytes, deadline: float) -> None:
        """Write ``data`` whole before ``deadline`` (monotonic), waiting for room;
        :class:`CommandNotSentError` if it cannot (a part written ends the connection)."""
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                await self._wait_writable(len(view) < len(data), deadline)
            except OSError as exc:
                self.abort(describe_error(exc))
                raise CommandNotSentError(
                    f"write to the reader failed: {describe_error(exc)}"
                ) from None
        self._watch_stall()

    async def _wait_writable(self, partial: bool, deadline: float) -> None:
        self.writable = writable = self._loop.create_future()
        self._loop.add_writer(self.sock.fileno(), writable.set_result, None)
        try:
            await asyncio.wait_for(writable, max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            if partial:  # half a command is on the wire; the rest must never follow late
                self.abort("the reader did not take a command before its deadline")
            raise CommandNotSentError(
                "the reader did not take the command before the deadline"
            ) from None
        except ConnectionResetError as exc:
            raise CommandNotSentError(f"the reader link went down ({exc.strerror})") from None
        finally:
            if self.sock.fileno() >= 0:  # not closed meanwhile
                self._loop.remove_writer(self.sock.fileno())
            self.writable = None

    def _watch_stall(self) -> None:
        """Linux sends no keepalive probe while written data is unacknowledged, and
        TCP_USER_TIMEOUT counts from the write: a command written to a reader that had just
        lost power would delay noticing it to nearly twice the keepalive window. So while
        data is in flight, no ACK for longer than the window means the reader is gone."""
        if self._stall is None:
            self._stall = self._loop.call_later(STALL_CHECK, self._check_stall)

    def _check_stall(self) -> None:
        self._stall = None
        if self.ended.done():
            return
        unacked, since_ack = unacknowledged(self.sock)
        if not unacked:
            return  # all acknowledged: nothing to watch until the next write
        if since_ack > self._keepalive:
            error = TimeoutError(errno.ETIMEDOUT, "no acknowledgement from the reader host")
            self.abort(describe_error(error))
            return
        self._watch_stall()
