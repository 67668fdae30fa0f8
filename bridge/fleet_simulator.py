"""Many simulated SpringCore readers in one process on one asyncio event loop, to try or benchmark
a fleet; it must not start a thread or a task per reader, nor wake a reader that has nothing to do.

On the wire a reader is what ``bridge.simulator.Simulator`` is (docs/reader-protocol.md §1): one
port, one client at a time (a second one is closed at once, or held unread with ``busy="hang"``),
READER EVENTs and no greeting, commands logged with their meaning and never answered. Ports:
``first_port`` P gives P … P+N-1; 0 gives each reader any free port (then not consecutive).

Timing: a reader sends ``rate`` events/s at ``started_at + phase + k / rate``, its phase drawn in
``[0, 1 / rate)`` (real readers are not synchronised): one ``loop.call_at`` handle in asyncio's
timer heap, rescheduled as it fires, none at all with ``rate`` 0. A tick the loop ran too late
for is skipped, not made up in a burst (as ``Simulator.run_timer`` does).

Counter: as the benchmark's reader double (``scripts/benchlib/event.py``), an event carries its
number in ``TagId``: ``"%014X"`` for NFC (``TagData`` is ``"00"`` + that id), the same number in
the last 12 hex digits of a BLE address or a UHF EPC (``"E280"`` + 20 digits); see
:func:`counter_of`. Each reader counts from 0 and numbers only the events it wrote (``sent``, so
a gap downstream is a loss downstream); a tick with no client is dropped, as a reader drops it,
and counted in ``missed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import resource
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, cast

from bridge.protocol import Frame, StreamDecoder
from bridge.simulator import Busy, describe_command, describe_listen_error
from bridge.tag import EventFactory

log = logging.getLogger(__name__)

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
COUNTER_DIGITS: Final = 12  # the counter is in the last 12 hex digits of TagId


class PortUnavailableError(Exception):
    """A reader of the fleet cannot listen on its port; the message names it and the fix."""

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        super().__init__(f"cannot listen on {host}:{port}: {describe_listen_error(cause)}")


def tag_id_for(profile: str, number: int) -> str:
    """The ``TagId`` of event ``number`` of a reader, in the shape of ``profile``'s ids."""
    if profile == "ble":
        return f"{number:012X}"  # a 6-byte address
    if profile == "uhf":
        return f"E280{number:020X}"  # a 96-bit EPC
    return f"{number:014X}"  # a 7-byte NFC-A UID, as scripts/benchlib/event.py numbers events


def counter_of(event: Mapping[str, object]) -> int:
    """The per-reader number that a fleet event carries in its ``TagId``."""
    return int(str(event["TagId"])[-COUNTER_DIGITS:], 16)


class _Link(asyncio.Protocol):
    """One TCP connection to a reader's port: the client it serves, or one it turned away."""

    transport: asyncio.Transport

    def __init__(self, reader: SimulatedReader) -> None:
        self._reader = reader
        self.decoder = StreamDecoder()  # one per connection (bridge.protocol)
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP server's transports are asyncio.Transport, and already TCP_NODELAY (asyncio
        # sets it on every TCP socket): each event goes out at once, as a reader's does.
        self.transport = cast(asyncio.Transport, transport)
        self._reader.accept(self)

    def data_received(self, data: bytes) -> None:
        self._reader.receive(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._reader.lose(self)
        self.closed.set_result(None)


class SimulatedReader:
    """One reader of the fleet: its port, its one client, its ticks and its counters."""

    def __init__(self, fleet: FleetSimulator, index: int, port: int, phase: float) -> None:
        self.index, self.port, self.phase = index, port, phase
        self.sent = 0  # events written to a client, so also the next event's counter
        self.missed = 0  # ticks without a client: dropped, as a reader drops them
        self.commands = 0  # READER COMMANDs received (complete JSON objects)
        self.accepted = 0  # clients served
        self.turned_away = 0  # clients that came while one was served
        self._fleet = fleet
        self._factory = EventFactory(fleet.rng)  # its own boot counter and Uptime
        self._client: _Link | None = None
        self._links: set[_Link] = set()  # every open connection, served or turned away
        self._server: asyncio.Server | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._ticks = 0

    @property
    def name(self) -> str:  # for the log: "reader 3 (port 4003)"
        return f"reader {self.index} (port {self.port})"

    @property
    def has_client(self) -> bool:
        return self._client is not None

    @property
    def next_due(self) -> float | None:
        """When (``loop.time()``) its next tick fires; None when it has no timer."""
        return None if self._timer is None else self._timer.when()

    def emit(self) -> bool:
        """Send one event to the client (True); without one, count it missed (False)."""
        client = self._client
        fleet = self._fleet
        if client is None or client.transport.is_closing():
            self.missed += 1
            fleet.notify_change()
            return False
        profile = fleet.rng.choice(fleet.profiles)
        event = self._factory.make(profile, tag_id=tag_id_for(profile, self.sent))
        client.transport.write(json.dumps(event, separators=(",", ":")).encode() + fleet.separator)
        self.sent += 1
        fleet.notify_change()
        return True

    async def listen(self, host: str) -> None:
        try:
            sock = socket.create_server((host, self.port), reuse_port=False)  # as Simulator binds
        except OSError as exc:
            raise PortUnavailableError(host, self.port, exc) from None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Link(self), sock=sock)
        self.port = sock.getsockname()[1]

    def schedule(self, loop: asyncio.AbstractEventLoop, started_at: float) -> None:
        if self._fleet.period is not None:
            self._timer = loop.call_at(started_at + self.phase, self._tick)

    def close(self) -> list[Awaitable[None]]:
        """Cancel its timer, stop listening, close every connection; what to await."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waits: list[Awaitable[None]] = [link.closed for link in self._links]
        for link in self._links:
            link.transport.close()
        if self._server is not None:
            self._server.close()
            waits.append(self._server.wait_closed())
            self._server = None
        return waits

    def _tick(self) -> None:
        self.emit()
        fleet, loop = self._fleet, asyncio.get_running_loop()
        period = cast(float, fleet.period)  # only scheduled when there is one
        base = fleet.started_at + self.phase
        self._ticks = max(self._ticks + 1, math.ceil((loop.time() - base) / period))
        self._timer = loop.call_at(base + self._ticks * period, self._tick)

    def accept(self, link: _Link) -> None:
        self._links.add(link)
        peer = link.transport.get_extra_info("peername")
        if self._client is None:
            self._client = link
            self.accepted += 1
            log.info("%s: client %s:%d connected", self.name, *peer[:2])
        else:
            self.turned_away += 1
            log.info(
                "%s: second client %s:%d turned away (%s)", self.name, *peer[:2], self._fleet.busy
            )
            if self._fleet.busy == "hang":
                link.transport.pause_reading()  # held open, never read, until stop()
            else:
                link.transport.close()
        self._fleet.notify_change()

    def receive(self, link: _Link, data: bytes) -> None:
        if link is not self._client:
            return  # a client turned away is not listened to
        for item in link.decoder.feed(data):
            if isinstance(item, Frame):
                self.commands += 1
                meaning = describe_command(item.fields)
                log.info("%s: command %s -> %s", self.name, item.payload.decode(), meaning)
            else:
                log.warning(
                    "%s: unreadable command bytes: %s (%r)", self.name, item.reason, item.sample
                )
        self._fleet.notify_change()

    def lose(self, link: _Link) -> None:
        self._links.discard(link)
        if link is self._client:
            self._client = None
            log.info("%s: client disconnected", self.name)
        self._fleet.notify_change()


class FleetSimulator:
    """``readers`` readers on ``host`` from ``first_port`` (0: any free ports), each drawing
    its events from ``profiles`` (``bridge.tag.PROFILES``); ``seed`` fixes phases and data."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        first_port: int = 0,
        readers: int = 1,
        rate: float = 1.0,
        *,
        profiles: tuple[str, ...] = ("nfc",),
        separator: bytes = b"\r\n",
        busy: Busy = "close",
        seed: int | None = None,
    ) -> None:
        _check(first_port, readers, rate)
        self.host, self.profiles, self.separator, self.busy = host, profiles, separator, busy
        self.rng = random.Random(seed)  # noqa: S311 - test data
        self.period = 1.0 / rate if rate > 0 else None
        self.started_at = 0.0  # loop.time() of start(): the origin of every reader's ticks
        self._changed: asyncio.Event | None = None
        self.readers = [
            SimulatedReader(self, index, first_port + index if first_port else 0, self._phase())
            for index in range(readers)
        ]

    @property
    def ports(self) -> list[int]:
        """Each reader's port, in reader order (the bound ones once started)."""
        return [reader.port for reader in self.readers]

    async def start(self) -> None:
        """Listen on every port, then start the ticks; :class:`PortUnavailableError` (with
        nothing left listening) if a port cannot be had."""
        raise_open_file_limit(2 * len(self.readers) + 64)  # a listener and a client each
        try:
            for reader in self.readers:
                await reader.listen(self.host)
        except BaseException:
            await self.stop()
            raise
        loop = asyncio.get_running_loop()
        self.started_at = loop.time()
        for reader in self.readers:
            reader.schedule(loop, self.started_at)
        rate = "no events" if self.period is None else f"{1 / self.period:g} events/s each"
        log.info(
            "%d simulated readers listening on %s, ports %s (%s)",
            *(len(self.readers), self.host, describe_ports(self.ports), rate),
        )

    async def stop(self) -> None:
        """Stop every timer, listener and connection; return once all are closed."""
        waits = [wait for reader in self.readers for wait in reader.close()]
        await asyncio.gather(*waits)

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        """Return once ``condition()`` holds, checked after each change (a connection, a
        command, an event sent); TimeoutError after ``timeout`` s."""
        async with asyncio.timeout(timeout):
            while not condition():
                if self._changed is None:
                    self._changed = asyncio.Event()
                await self._changed.wait()

    def notify_change(self) -> None:
        """Wake :meth:`wait_until`; costs nothing when no one waits."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _phase(self) -> float:
        return 0.0 if self.period is None else self.rng.uniform(0.0, self.period)


def _check(first_port: int, readers: int, rate: float) -> None:
    if readers < 1:
        raise ValueError(f"readers must be 1 or more, got {readers}")
    if not (math.isfinite(rate) and rate >= 0):
        raise ValueError(f"rate must be 0 (no events) or more events per second, got {rate}")
    last = first_port + readers - 1
    if first_port < 0 or (first_port and last > 65535):
        raise ValueError(f"ports {first_port}-{last} are not all between 1 and 65535")


def describe_ports(ports: list[int]) -> str:
    """``4000-4999`` when consecutive, else every port: ``4000, 4002``."""
    if len(ports) > 1 and ports == list(range(ports[0], ports[0] + len(ports))):
        return f"{ports[0]}-{ports[-1]}"
    return ", ".join(map(str, ports))


def raise_open_file_limit(needed: int) -> None:
    """Raise the soft limit on open files towards ``needed`` (no further than the hard limit);
    if that is not enough, binding says "Too many open files" for the port it failed on."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def run_until_signal(fleet: FleetSimulator) -> int:
    """``simulate --readers N``: start ``fleet``, serve until SIGTERM or SIGINT, stop it: 0.
    :class:`PortUnavailableError` if it cannot start."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: signal.Signals) -> None:
        log.info("received %s, stopping", signum.name)
        stop.set()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    await fleet.start()
    await stop.wait()
    await fleet.stop()
    log.info("stopped")
    return 0
