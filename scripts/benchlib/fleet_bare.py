"""The bare fleet path (``bench.py --fleet-bare``): the least a fleet bridge must do, the limit
to compare the bridge in fleet mode with.

One asyncio loop and one paho client per reader, driven the way paho documents for an outside
event loop (paho.mqtt.python ``examples/loop_asyncio.py``; PAHO.md §16): ``on_socket_open`` /
``on_socket_close`` add and remove the socket's reader (``loop_read``), and the client's
pending bytes are written at once after each batch of publishes (``loop_write``), the socket
joining the loop's writers only when some are left by the next turn - no ``add_writer`` /
``remove_writer`` pair per publish, as the bridge does it too (``bridge/mqtt/driver.py``), or
the bare path would not be the limit. ``loop_misc`` runs for every client from one sweep every
keepalive / 4 seconds (7.5 s), no timer per client.

It connects the clients one after the other at start, in the loop's thread (``connect`` is
blocking, but the broker is on loopback and nothing else runs yet); each reader socket is
opened once its client's CONNACK came. Each CR-LF-separated line is published at QoS 1 to
``{prefix}/{id}/rdr/evt``; a message on ``{prefix}/{id}/rdr/cmd`` goes to the reader as it
is. No spool, no validation, no status, no reconnection: a lost link ends the process with
status 1, which the benchmark reports. The readers come from the bridge's readers file format
(``reader_port`` and ``device_id`` of each ``[[reader]]``; the host is loopback).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import socket
import tomllib
from pathlib import Path
from typing import Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from benchlib.event import PREFIX, SEPARATOR

log = logging.getLogger("fleet-bare")

KEEPALIVE: Final = 30  # the bridge's default BRIDGE_MQTT_KEEPALIVE
SWEEP: Final = KEEPALIVE / 4  # as the bridge's Sweep: a ping due goes out within 7.5 s


class ReaderLink(asyncio.Protocol):
    """One reader socket: split on CR LF, publish each line, write what was published."""

    def __init__(self, link: BareLink) -> None:
        self._link = link
        self._buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        *lines, self._buffer = (self._buffer + data).split(SEPARATOR)
        client, topic = self._link.client, self._link.event_topic
        for line in lines:
            if line:
                client.publish(topic, line, qos=1)
        self._link.write_now()

    def connection_lost(self, exc: Exception | None) -> None:
        self._link.fail(f"reader link lost ({exc or 'closed by the reader'})")


class BareLink:
    """One reader's paho client on the loop, and its reader socket once connected."""

    def __init__(self, device: str, reader_port: int, failed: asyncio.Future[str]) -> None:
        self.device, self.reader_port = device, reader_port
        self.event_topic = f"{PREFIX}/{device}/rdr/evt"
        self.command_topic = f"{PREFIX}/{device}/rdr/cmd"
        self._loop = asyncio.get_running_loop()
        self._failed = failed
        self._fd: int | None = None
        self._writing = self._writer_added = self._writer_check = False
        self.reader: ReaderLink | None = None
        client = self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-fleet-{device}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        client.max_inflight_messages_set(0)  # unlimited, as the bridge sets it
        client.on_socket_open = self._opened
        client.on_socket_close = self._closed
        client.on_socket_register_write = self._want_write
        client.on_socket_unregister_write = self._done_writing
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message

    def connect(self, mqtt_port: int) -> None:
        self.client.connect("127.0.0.1", mqtt_port, keepalive=KEEPALIVE)
        self.write_now()

    def fail(self, why: str) -> None:
        if not self._failed.done():
            self._failed.set_result(f"{self.device}: {why}")

    # -- paho's socket callbacks ----------------------------------------------------------

    def _opened(self, client: paho.Client, userdata: object, sock: object) -> None:
        assert isinstance(sock, socket.socket)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._fd = sock.fileno()
        self._loop.add_reader(self._fd, self._read)

    def _closed(self, client: paho.Client, userdata: object, sock: object) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._fd = None
        self._writing = self._writer_added = False

    def _want_write(self, client: paho.Client, userdata: object, sock: object) -> None:
        self._writing = True
        if not self._writer_check:  # bytes still unwritten on the next turn: then a writer
            self._writer_check = True
            self._loop.call_soon(self._ensure_writer)

    def _ensure_writer(self) -> None:
        self._writer_check = False
        if self._writing and self._fd is not None and not self._writer_added:
            self._writer_added = True
            self._loop.add_writer(self._fd, self.write_now)

    def _done_writing(self, client: paho.Client, userdata: object, sock: object) -> None:
        self._writing = False
        if self._writer_added and self._fd is not None:
            self._writer_added = False
            self._loop.remove_writer(self._fd)

    def _read(self) -> None:
        if self.client.loop_read() not in (MQTTErrorCode.MQTT_ERR_SUCCESS,):
            self.fail("the broker connection was lost")

    def write_now(self) -> None:
        if self._writing and self._fd is not None:
            self.client.loop_write()

    def misc(self) -> None:
        self.client.loop_misc()

    # -- paho's other callbacks -------------------------------------------------------------

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self.fail(f"the broker refused the connection: {reason_code}")
            return
        client.subscribe(self.command_topic, qos=1)
        self._loop.create_task(self._open_reader())

    async def _open_reader(self) -> None:
        try:
            _, self.reader = await self._loop.create_connection(
                lambda: ReaderLink(self), "127.0.0.1", self.reader_port
            )
        except OSError as exc:
            self.fail(f"cannot connect to the reader on port {self.reader_port}: {exc}")

    def _on_disconnect(self, client: paho.Client, *args: object) -> None:
        self.fail("the broker connection was lost")

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        if self.reader is not None and self.reader.transport is not None:
            self.reader.transport.write(message.payload)


def readers_of(path: Path) -> list[tuple[str, int]]:
    """(device_id, reader_port) of every ``[[reader]]`` of a readers file."""
    with path.open("rb") as file:
        tables = tomllib.load(file)["reader"]
    return [(str(table["device_id"]), int(table["reader_port"])) for table in tables]


async def serve(readers: list[tuple[str, int]], mqtt_port: int) -> int:
    """Connect every reader's client, sweep, serve until SIGTERM (0) or a failure (1)."""
    loop = asyncio.get_running_loop()
    failed: asyncio.Future[str] = loop.create_future()

    def stop() -> None:
        if not failed.done():
            failed.set_result("")  # "": asked to stop, not failed

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    links = [BareLink(device, port, failed) for device, port in readers]
    for link in links:
        try:
            link.connect(mqtt_port)
        except OSError as exc:
            log.error("%s: cannot connect to the broker: %s", link.device, exc)
            return 1
    loop.call_later(SWEEP, _sweep, links)
    why = await failed
    if why:
        log.error("%s", why)
    for link in links:
        with contextlib.suppress(Exception):
            link.client.disconnect()
            link.write_now()
    return 1 if why else 0


def _sweep(links: list[BareLink]) -> None:
    for link in links:
        link.misc()
    asyncio.get_running_loop().call_later(SWEEP, _sweep, links)


def run_fleet_bare(readers_file: Path, mqtt_port: int) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 2 sockets per reader
    return asyncio.run(serve(readers_of(readers_file), mqtt_port))
