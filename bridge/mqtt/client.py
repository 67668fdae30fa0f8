"""paho's client as the bridge makes it, why a connection failed, and MQTT wire details.

One-shot publishing for the command-line tools lives here too (``publish_once``).
"""

from __future__ import annotations

import functools
import logging
import math
import socket
import ssl
import threading
import time
from typing import Literal

import paho.mqtt.client as paho
from paho.mqtt import __version__ as paho_version
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bridge.options import MqttOptions
from bridge.tls import client_context

log = logging.getLogger(__name__)

CONNACK_HINTS = {
    132: "the broker does not speak MQTT 5: set BRIDGE_MQTT_PROTOCOL=3.1.1",
    133: "the broker refused the client id: set BRIDGE_MQTT_CLIENT_ID",
    134: "wrong user name or password: check BRIDGE_MQTT_USERNAME and "
    "BRIDGE_MQTT_PASSWORD (or BRIDGE_MQTT_PASSWORD_FILE)",
    # Mosquitto answers a wrong password with this one, on 3.1.1 and on 5.
    135: "not authorised: check BRIDGE_MQTT_USERNAME and BRIDGE_MQTT_PASSWORD "
    "(or BRIDGE_MQTT_PASSWORD_FILE), and the broker's ACL",
}


class _NotShortError(Exception):
    """Not a PUBACK the short path takes: paho's own path decodes it."""


_PUBACK_CODES = {
    0x00: ReasonCode(PacketTypes.PUBACK),  # success
    0x10: ReasonCode(PacketTypes.PUBACK, identifier=0x10),  # no matching subscribers
}
"""The PUBACK reason codes the short path takes: both mean delivered to the broker. Mosquitto
answers 0x10 for a message nobody subscribes to - a command result, a ``bridge/live`` copy."""
_PUBACK_NO_PROPERTIES = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]


READ_SIZE = 65536
"""Bytes one ``recv()`` of the broker's socket asks for: every acknowledgement waiting."""


class Client(paho.Client):
    """paho's client, reading the socket in large pieces, taking the common PUBACK the short
    way, and closing the socket of a failed TLS handshake."""

    _fast_puback = True
    _in_sock: object = None  # the socket that _in_bytes came from
    _in_bytes = b""  # read from the socket, not yet taken by paho
    _in_pos = 0
    _in_drained = False  # the last recv() took less than asked: the kernel had no more

    def _sock_recv(self, bufsize: int) -> bytes:
        """paho reads a packet a few bytes at a time: its type, each byte of its length,
        then the rest - three ``recv()`` calls for every PUBACK, and one more that fails
        with EAGAIN at the end of each read. Here one ``recv()`` takes all the kernel holds
        and paho's small reads are served from it; after a short one, the end of the data
        is reported without asking the kernel again (the socket stays readable for the loop
        if more has come since: it is level-triggered). The bytes of a closed connection
        never reach the next one's packets; :meth:`loop_read` reads on while any are
        buffered (docs/paho.md §17.2)."""
        if self._in_sock is not self._sock:  # a new connection
            self._in_sock, self._in_bytes, self._in_pos = self._sock, b"", 0
            self._in_drained = False
        pos = self._in_pos
        if pos >= len(self._in_bytes):
            if self._in_drained:
                self._in_drained = False
                raise BlockingIOError
            data = super()._sock_recv(READ_SIZE)
            if not data:
                return data  # the broker closed the connection
            self._in_drained = len(data) < READ_SIZE
            self._in_bytes, pos = data, 0
        end = pos + bufsize
        chunk = self._in_bytes[pos:end]
        if end >= len(self._in_bytes):  # all taken: a thousand idle clients keep nothing
            self._in_bytes, self._in_pos = b"", 0
        else:
            self._in_pos = end
        return chunk

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """paho's, reading on while the buffer holds bytes: paho stops after as many
        packets as it has messages in flight, and what it leaves in the buffer would wait
        for the socket's next data - also in paho's own network thread (``publish_once``)."""
        rc = super().loop_read(max_packets)
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._buffered():
            rc = super().loop_read(max_packets)
        return rc

    def _buffered(self) -> bool:
        return self._in_pos < len(self._in_bytes) and self._in_sock is self._sock

    def input_pending(self) -> bool:
        """Bytes read from the socket that paho has not taken yet (here, or decrypted in
        the SSL object): the socket is not readable for them."""
        if self._buffered():
            return True
        sock = self._sock
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        """paho's, without decoding a PUBACK that carries only the packet id: success with
        no properties (MQTT 5 §3.4.2.1, and every MQTT 3.1.1 PUBACK), what Mosquitto sends
        for nearly every event - or that adds only a reason code of _PUBACK_CODES. paho
        builds a ReasonCode and a Properties object for each (~30 % of the bridge's CPU at
        full load, issue 5 profile); here every such
        acknowledgement shares one of each (``on_publish`` only reads them). Anything else
        - a refusal, properties, PUBCOMP - goes through paho's own code, and so does every
        PUBACK once this path has raised (a paho release that changed what it relies on).
        tests/test_client.py checks both ways agree on the installed paho; they agree on
        2.2 and not on 2.1 (whose own path handles PUBACKs differently), hence the pin to
        paho-mqtt 2.2.x in pyproject.toml."""
        if self._fast_puback:
            try:
                return self._short_puback(cmd)
            except _NotShortError:
                pass
            except Exception:  # a paho release that changed what this relies on
                self._fast_puback = False
                log.warning(
                    "the short PUBACK path failed on paho %s; using paho's own from now on",
                    paho_version,
                    exc_info=True,
                )
        return super()._handle_pubackcomp(cmd)

    def _short_puback(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        # packet id, then (MQTT 5 §3.4.2) an optional reason code and an optional property
        # length: taken here when the code is one of _PUBACK_CODES and there are no properties
        size = len(packet)
        if cmd != "PUBACK" or not 2 <= size <= 4:
            raise _NotShortError
        code = _PUBACK_CODES.get(packet[2] if size > 2 else 0)
        if code is None or (size == 4 and packet[3]):
            raise _NotShortError
        mid = int.from_bytes(packet[:2], "big")
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, code, _PUBACK_NO_PROPERTIES)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _ssl_wrap_socket(self, tcp_sock: socket.socket) -> ssl.SSLSocket:
        """paho 2.2's, but closing the socket when the handshake fails (paho leaves it open,
        leaking one socket per failed attempt until garbage collection)."""
        assert self._ssl_context is not None
        sock = self._ssl_context.wrap_socket(
            tcp_sock, server_hostname=self._host, do_handshake_on_connect=False
        )
        try:
            sock.settimeout(self._connect_timeout)
            sock.do_handshake()
        except BaseException:
            sock.close()
            raise
        return sock


class UserProperties(Properties):
    """MQTT v5 PUBLISH properties with only User Property pairs, packed once.

    paho's own ``Properties`` took ~70 us per event to build and pack (issue 5 profile),
    more than the rest of the bridge's per-event work; this takes ~7 us. paho calls only
    ``pack()`` on it (again when it re-sends after a reconnection) and ``str()`` for its
    debug log (paho 2.2, ``Client._send_publish``)."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:  # not paho's: nothing else set
        self.pairs = pairs
        body = b"".join(b"\x26" + _utf8_pair(name) + _utf8_pair(value) for name, value in pairs)
        self._packed = _varint(len(body)) + body

    def __setattr__(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)  # paho's checks need what __init__ skipped

    def pack(self) -> bytes:
        return self._packed

    def __str__(self) -> str:
        return f"[UserProperty : {self.pairs}]"


def _utf8_pair(text: str) -> bytes:
    """An MQTT UTF-8 string: two bytes of length, then the bytes (MQTT 5 §1.5.4)."""
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def _varint(value: int) -> bytes:
    """An MQTT variable byte integer (MQTT 5 §1.5.5)."""
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def new_properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho leaves it untyped


def is_topic_name(topic: str) -> bool:
    """A topic a PUBLISH may go to: no wildcards, no NUL, not empty, not too long."""
    return 0 < len(topic.encode()) <= 65535 and not any(c in topic for c in "+#\x00")


def iso_time(timestamp: float) -> str:
    """``2026-12-02T11:00:00.123Z``: what ``datetime.fromtimestamp(timestamp, UTC)
    .isoformat(timespec="milliseconds")`` gives, in a quarter of the time (once per event)."""
    fraction, whole = math.modf(timestamp)
    micros = round(fraction * 1_000_000)  # datetime's own rounding
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    return f"{iso_second(int(whole))}.{micros // 1000:03d}Z"


@functools.lru_cache(maxsize=4)
def iso_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def describe_connect_error(exc: BaseException | None, tls: bool = False) -> str:
    """Why a TCP or TLS connection attempt failed, naming the setting to look at."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH
            return (
                f"the broker's TLS certificate does not match ({exc.verify_message}): "
                "set BRIDGE_MQTT_HOST to a name the certificate lists"
            )
        return (
            f"the broker's TLS certificate is not trusted ({exc.verify_message}): "
            "set BRIDGE_MQTT_CA_FILE to the CA certificate that signed it"
        )
    closed = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError)
    if tls and isinstance(exc, closed):
        return (
            "the broker closed the connection during the TLS handshake: is BRIDGE_MQTT_PORT "
            "a TLS port? (or turn BRIDGE_MQTT_TLS off for a plain one)"
        )
    if isinstance(exc, ssl.SSLError):
        return (
            f"TLS handshake failed ({exc.reason}): check that BRIDGE_MQTT_PORT is a TLS port, "
            "and BRIDGE_MQTT_CERT_FILE / BRIDGE_MQTT_KEY_FILE if it wants a client certificate"
        )
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: is the broker running and BRIDGE_MQTT_PORT right?"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror}): check BRIDGE_MQTT_HOST"
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}"
    return "unknown error"


def new_client(options: MqttOptions, client_id: str | None = None) -> Client:
    """A paho client with the protocol, credentials and TLS of ``options`` (no callbacks)."""
    v5 = options.protocol == "5"
    client = Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or options.client_id,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        clean_session=None if v5 else True,
    )
    client.suppress_exceptions = True
    if options.username is not None:
        password = options.password.get_secret_value() if options.password else None
        client.username_pw_set(options.username, password)
    if options.tls:
        # The context the settings check built too (bridge.tls): a bad file is a ConfigError
        # naming its variable, and an encrypted key never makes OpenSSL prompt on a terminal.
        client.tls_set_context(client_context(options))
        if options.tls_insecure:
            client.tls_insecure_set(True)
            log.warning("BRIDGE_MQTT_TLS_INSECURE is on: the broker's certificate is NOT checked")
    return client


def publish_once(
    options: MqttOptions, messages: list[tuple[str, bytes]], timeout: float = 10.0
) -> str | None:
    """Connect once, publish ``messages`` retained at QoS 1, wait for every acknowledgement.

    For one-shot tools (``ha-remove``, ``check``): returns ``None`` on success, else why it
    failed. Uses its own client id, so it never evicts a running bridge.
    """
    client = new_client(options, f"{options.client_id}-tool")
    connected = threading.Event()
    acked: set[int] = set()
    refused: list[str] = []

    def on_connect(*args: object) -> None:
        reason = args[3]
        if isinstance(reason, ReasonCode) and reason.is_failure:
            refused.append(CONNACK_HINTS.get(reason.value, str(reason)))
        connected.set()

    client.on_connect = on_connect
    client.on_publish = lambda _c, _u, mid, *rest: acked.add(mid)
    try:
        client.connect(options.host, options.port, keepalive=30)
    except OSError as exc:
        return describe_connect_error(exc, options.tls)
    client.loop_start()
    try:
        if not connected.wait(timeout):
            return f"no answer from the broker within {timeout:g} s"
        if refused:
            return refused[0]
        mids = [client.publish(t, p, qos=1, retain=True).mid for t, p in messages]
        deadline = time.monotonic() + timeout
        while not acked.issuperset(mids):
            if time.monotonic() > deadline:
                return f"the broker did not acknowledge within {timeout:g} s"
            time.sleep(0.01)
        return None
    finally:
        client.disconnect()
        client.loop_stop()
