"""The benchmark's own MQTT clients: the subscriber that times every event, and the command sender.

They are measuring instruments, not systems under test: the raw subscriber parses PUBLISH packets
in bulk because paho's reader costs ~50 us of CPU per message here (see ``bench.py``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from typing import Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from benchlib.errors import BenchError


class Sink(Protocol):
    """Where a subscriber hands what it receives (:class:`benchlib.recorder.Recorder`, or the
    fleet benchmark's recorders): called from the subscriber's thread, ``progress`` set after
    every batch."""

    progress: threading.Event

    def record(self, topic: bytes, payload: bytes, now: int) -> None: ...


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

    def __init__(self, port: int, topic_filter: str, recorder: Sink, name: str = "sub") -> None:
        self._port = port
        self._filter = topic_filter
        self._recorder = recorder
        self._client_id = f"bench-{name}-{os.getpid()}"  # a second subscriber: another name
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
        body = header + _mqtt_string(self._client_id)
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

    def __init__(self, port: int, topic_filter: str, recorder: Sink) -> None:
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
        self.client.on_socket_open = nodelay
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


def nodelay(client: paho.Client, userdata: object, sock: object) -> None:
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
        self.client.on_socket_open = nodelay
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


Subscriber = RawSubscriber | PahoSubscriber
