"""One paho client driven by the asyncio loop: its socket, its connection attempts, its pings.

paho documents this mode (paho.mqtt.python ``examples/loop_asyncio.py``; docs/paho.md §19):
``on_socket_open`` / ``on_socket_register_write`` lead to ``loop.add_reader`` /
``add_writer``, which call ``loop_read`` / ``loop_write``; ``loop_misc`` (pings, and noticing
a broker that stopped answering) runs from one sweep every few seconds for every client of
the process (:class:`Sweep`), never from a timer per client. paho's ``connect`` is blocking
(a TCP connect and a TLS handshake, up to its 5 s timeout), so it runs in an executor; while
it runs there, paho calls the socket callbacks from that thread, and they are passed to the
loop with ``call_soon_threadsafe``. There is no paho thread: ``loop_start`` is never called.

The retry delay after a failed attempt or a lost connection is the driver's: paho's own
retries live in ``loop_forever``, which is not run here. Nothing here knows topics or
events: ``MqttLink`` sets the client's callbacks and decides what is published.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import socket
import threading
from collections.abc import Callable

from paho.mqtt.enums import MQTTErrorCode

from bridge.backoff import Backoff
from bridge.loops import Fatal
from bridge.mqtt.client import Client
from bridge.options import MqttOptions

log = logging.getLogger(__name__)

SWEEP_SHARE = 4
"""``loop_misc`` sweeps per keepalive interval (of the shortest, with several clients): a ping
goes out within a quarter of it after it is due - long before the broker's 1.5 x limit -
and a silent broker is noticed within 1.25 x keepalive after the ping. More often would only
wake an idle bridge (each wake-up costs 150-400 us of CPU on a small VM)."""
RETRY = (1.0, 30.0)
"""Retry delays: from [0.5, 1] s, doubling up to 30 s, with jitter (a fleet of bridges that
lost one broker does not come back in step)."""


class Sweep:
    """Calls ``loop_misc`` on every connected client several times per keepalive interval:
    one timer for the whole process, and none while no client is connected."""

    def __init__(self) -> None:
        self._drivers: set[Driver] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._period = float("inf")
        self.on_sweep: list[Callable[[], None]] = []  # more upkeep that rides along

    def add(self, driver: Driver) -> None:
        self._drivers.add(driver)
        self._period = min(self._period, driver.options.keepalive / SWEEP_SHARE)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._period, self._run)

    def discard(self, driver: Driver) -> None:
        self._drivers.discard(driver)

    def _run(self) -> None:
        self._timer = None
        for driver in list(self._drivers):
            driver.misc()
        for upkeep in self.on_sweep:
            upkeep()
        if self._drivers:
            self._timer = asyncio.get_running_loop().call_later(self._period, self._run)


class Driver:
    """Connects ``client`` and keeps it connected, from the running loop."""

    def __init__(self, client: Client, options: MqttOptions, sweep: Sweep, on_fatal: Fatal):
        self.client = client
        self.options = options
        self._sweep = sweep
        self._on_fatal = on_fatal
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        # The context of the session that made us (a fleet's reader's, bridge.logs.DEVICE):
        # what paho calls from the executor carries it back into the loop.
        self._context = contextvars.copy_context()
        self._fd: int | None = None  # the socket registered with the loop
        self._writing = False  # paho has bytes to write
        self._writer_added = False  # the socket is among the loop's writers
        self._writer_check = False  # _ensure_writer is due this turn
        self._attempt: asyncio.Task[None] | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._after_attempt: float | None = None  # a retry asked for while connecting
        self._backoff = Backoff(*RETRY)
        self._stopping = False
        self.opened = False  # a socket opened since the link last looked (MqttLink clears it)
        self.closed = asyncio.Event()  # set while no socket is open
        self.closed.set()
        self.on_connect_error: Callable[[BaseException], None] = lambda error: None
        self.on_broken: Callable[[], None] = lambda: None  # a paho step raised: no session
        client.on_socket_open = self._from_any_thread(self._opened)
        client.on_socket_close = self._from_any_thread(self._closing)
        client.on_socket_register_write = self._from_any_thread(self._want_write)
        client.on_socket_unregister_write = self._from_any_thread(self._done_writing)

    # -- connecting -------------------------------------------------------------------------

    def start(self) -> None:
        """The first attempt, at once (``connect_async`` has set where to); later ones after
        :meth:`retry_after`."""
        self._connect_soon(0.0)

    def retry_after(self, delay: float | None = None) -> None:
        """The connection ended: try again after ``delay`` s, or the next backoff step."""
        self._connect_soon(self._backoff.next_delay() if delay is None else delay)

    def connected(self) -> None:
        """The broker accepted us: the next loss retries quickly again."""
        self._backoff.reset()

    def _connect_soon(self, delay: float) -> None:
        if self._stopping or self._retry is not None:
            return
        if self._attempt is not None:  # lost while the attempt's task finishes: after it
            self._after_attempt = delay
            return
        self._retry = self._loop.call_later(delay, self._attempt_now)

    def _attempt_now(self) -> None:
        self._retry = None
        self._attempt = self._loop.create_task(self._connect(), name="mqtt-connect")

    async def _connect(self) -> None:
        try:
            await self._loop.run_in_executor(None, self.client.reconnect)
        except (OSError, ValueError) as exc:  # refused, unreachable, TLS, a name not resolved
            self.on_connect_error(exc)
            self._after_attempt = self._backoff.next_delay()
        else:
            if not self.closed.is_set():  # it may have been lost already (see below)
                self._sweep.add(self)
        finally:
            # The loop may have read the socket - and lost it - before this task resumed:
            # the retry asked for meanwhile is honoured now.
            self._attempt = None
            delay, self._after_attempt = self._after_attempt, None
            if delay is not None:
                self._connect_soon(delay)

    # -- the socket -----------------------------------------------------------------------

    def _from_any_thread(self, handler: Callable[[socket.socket], None]) -> Callable[..., None]:
        """A paho socket callback run in the loop, whichever thread paho calls it from."""

        def callback(client: object, userdata: object, sock: socket.socket) -> None:
            if threading.get_ident() == self._loop_thread:
                handler(sock)
            else:  # paho's connect, in the executor: back in the loop, in our own context
                self._loop.call_soon_threadsafe(handler, sock, context=self._context)

        return callback

    def _opened(self, sock: socket.socket) -> None:
        # Without TCP_NODELAY, Nagle and delayed ACKs add ~40-90 ms to every small publish.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            log.debug("could not set TCP_NODELAY on the broker socket", exc_info=True)
        self._fd = sock.fileno()
        self.opened = True
        self.closed.clear()
        self._loop.add_reader(self._fd, self._read)
        if self._writing:
            self._ensure_writer()

    def _closing(self, sock: socket.socket) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._fd = None
        self._writing = self._writer_added = False
        self._sweep.discard(self)
        self.closed.set()

    def _want_write(self, sock: socket.socket) -> None:
        """paho has bytes to write. Usually ``write_now`` writes them all before the loop
        turns, so the socket joins the loop's writers only if some are left by then: no
        ``add_writer``/``remove_writer`` pair per publish (docs/paho.md §19)."""
        self._writing = True
        if not self._writer_check:
            self._writer_check = True
            self._loop.call_soon(self._ensure_writer)

    def _ensure_writer(self) -> None:
        self._writer_check = False
        if self._writing and self._fd is not None and not self._writer_added:
            self._writer_added = True
            self._loop.add_writer(self._fd, self._write)

    def _done_writing(self, sock: socket.socket) -> None:
        self._writing = False
        if self._writer_added and self._fd is not None:
            self._writer_added = False
            self._loop.remove_writer(self._fd)

    def _read(self) -> None:
        self._run("loop_read", self._read_all)

    def _read_all(self) -> MQTTErrorCode:
        """paho reads a few packets per call; what it leaves read but not taken - in the
        client's buffer (``Client._sock_recv``) or, with TLS, decrypted in the SSL object -
        makes the socket no more readable for the loop, so read on while any is left
        (paho's own loop checks ``pending()`` the same way)."""
        rc = self.client.loop_read()
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self.client.input_pending():
            rc = self.client.loop_read()
        return rc

    def _write(self) -> None:
        self._run("loop_write", self.client.loop_write)

    def write_now(self) -> None:
        """Write what was just published at once, not on the loop's next turn."""
        if self._writing and self._fd is not None:
            self._write()

    def misc(self) -> None:
        if self._attempt is None:  # paho's connect owns the client while it runs
            self._run("loop_misc", self.client.loop_misc)

    def _run(self, what: str, step: Callable[[], MQTTErrorCode]) -> None:
        """One paho step; an exception from inside paho is fatal for this client (paho
        would be left half way through a packet), and its socket leaves the loop."""
        try:
            step()
        except Exception:
            log.critical("paho's %s raised (mqtt-network)", what, exc_info=True)
            if self._fd is not None:
                self._loop.remove_reader(self._fd)
                self._loop.remove_writer(self._fd)
            self._stopping = True
            self.on_broken()
            self._on_fatal("mqtt-network")

    # -- stopping -------------------------------------------------------------------------

    async def stop(self, timeout: float) -> None:
        """Say goodbye (DISCONNECT) if connected, and close: no retry after this."""
        self._stopping = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._attempt is not None:
            await asyncio.wait([self._attempt], timeout=timeout)
        self.client.disconnect()
        self.write_now()
        try:
            await asyncio.wait_for(self.closed.wait(), timeout)
        except TimeoutError:
            self.abort()

    def abort(self) -> None:
        """Close the socket without a goodbye (the broker's last will then speaks)."""
        self._stopping = True
        sock = self.client.socket()
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
            self._fd = None
        self._sweep.discard(self)
        if isinstance(sock, socket.socket):
            sock.close()
        self.closed.set()
