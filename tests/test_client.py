"""bridge.mqtt.client.Client's short way for PUBACKs, checked against paho's own decoding,
and its buffered reads."""

from __future__ import annotations

import socket

import pytest
from paho.mqtt.client import Client as PahoClient
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bridge.mqtt.client import Client

PUBACK = 0x40
Seen = tuple[int, int, bool, str, bytes]


def _acknowledge(
    client_class: type[PahoClient], protocol: MQTTProtocolVersion, packet: bytes
) -> tuple[list[Seen], int]:
    """Publish one QoS 1 message (held: not connected), feed ``packet`` as the broker's
    PUBACK, return what on_publish saw and how many messages paho still holds."""
    client = client_class(CallbackAPIVersion.VERSION2, protocol=protocol)
    seen: list[Seen] = []

    def on_publish(
        client: PahoClient, userdata: object, mid: int, rc: ReasonCode, props: Properties
    ) -> None:
        seen.append((mid, rc.value, rc.is_failure, rc.getName(), props.pack()))  # type: ignore[no-untyped-call]

    client.on_publish = on_publish
    info = client.publish("a/b", b"x", qos=1)
    assert info.mid == int.from_bytes(packet[:2], "big")
    client._in_packet["command"] = PUBACK
    client._in_packet["packet"] = bytearray(packet)
    client._packet_handle()
    return seen, len(client._out_messages)


@pytest.mark.parametrize(
    ("protocol", "packet"),
    [
        (MQTTProtocolVersion.MQTTv5, b"\x00\x01"),  # success, nothing else: the short way
        (MQTTProtocolVersion.MQTTv311, b"\x00\x01"),  # every 3.1.1 PUBACK: the short way
        (MQTTProtocolVersion.MQTTv5, b"\x00\x01\x00"),  # success spelt out
        (MQTTProtocolVersion.MQTTv5, b"\x00\x01\x10\x00"),  # no matching subscribers
        (MQTTProtocolVersion.MQTTv5, b"\x00\x01\x10"),  # the same, as Mosquitto sends it
        (MQTTProtocolVersion.MQTTv5, b"\x00\x01\x00\x00"),  # success, property length 0
        (MQTTProtocolVersion.MQTTv5, b"\x00\x01\x10\x03\x1f\x00\x00"),  # with a reason string
        (MQTTProtocolVersion.MQTTv5, b"\x00\x01\x87\x00"),  # not authorised (ACL)
        (MQTTProtocolVersion.MQTTv5, b"\x00\x01\x97"),  # quota exceeded, no properties
    ],
)
def test_puback_seen_by_on_publish_as_paho_decodes_it(
    protocol: MQTTProtocolVersion, packet: bytes
) -> None:
    ours = _acknowledge(Client, protocol, packet)
    assert ours == _acknowledge(PahoClient, protocol, packet)
    seen, held = ours
    assert len(seen) == 1
    assert held == 0
    assert seen[0][2] is (packet[2:3] >= b"\x80")  # a refusal stays a refusal


def test_puback_for_an_unknown_packet_id_is_ignored() -> None:
    client = Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    seen: list[int] = []
    client.on_publish = lambda c, u, mid, rc, props: seen.append(mid)
    client.publish("a/b", b"x", qos=1)  # mid 1
    client._in_packet["command"] = PUBACK
    client._in_packet["packet"] = bytearray(b"\x00\x02")
    client._packet_handle()
    assert seen == []
    assert list(client._out_messages) == [1]


class _CountingSocket:
    """The client's end of a socket pair, counting the ``recv()`` calls paho's reads make."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.recvs = 0

    def recv(self, size: int) -> bytes:
        self.recvs += 1
        return self.sock.recv(size)

    def close(self) -> None:
        self.sock.close()


def _pubacks(mids: list[int]) -> bytes:
    return b"".join(bytes([PUBACK, 2]) + mid.to_bytes(2, "big") for mid in mids)


def _read_all(client: Client) -> None:
    """What ``Driver._read_all`` does when the socket is readable."""
    rc = client.loop_read()
    while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and client.input_pending():
        rc = client.loop_read()
    assert rc == MQTTErrorCode.MQTT_ERR_SUCCESS


def _publishing(messages: int) -> tuple[Client, list[int], list[int]]:
    """A client holding ``messages`` QoS 1 messages; the mids, and the list of those acked."""
    client = Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    acked: list[int] = []
    client.on_publish = lambda c, u, mid, rc, props: acked.append(mid)
    return client, [client.publish("a/b", b"x", qos=1).mid for _ in range(messages)], acked


def _socket_pair() -> tuple[socket.socket, socket.socket]:
    """(the client's end, non-blocking as paho's; the broker's end)."""
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    return ours, broker


def test_many_packets_come_from_one_recv_even_split_across_two() -> None:
    client, mids, acked = _publishing(5)
    ours, broker = _socket_pair()
    counting = _CountingSocket(ours)
    client._sock = counting  # type: ignore[assignment]
    pubacks = _pubacks(mids)
    broker.sendall(pubacks[:10])  # two and a half acknowledgements
    _read_all(client)
    assert acked == mids[:2]
    assert counting.recvs == 1  # paho alone: 3 per packet, and one more for EAGAIN
    assert not client.input_pending()
    broker.sendall(pubacks[10:])
    _read_all(client)
    assert acked == mids
    assert counting.recvs == 2
    assert not client._out_messages
    ours.close()
    broker.close()


def test_loop_read_takes_every_buffered_packet_beyond_paho_s_count() -> None:
    """paho reads as many packets as it has messages in flight; the rest of the buffer
    must not wait for the socket's next data (the socket is no longer readable for them)."""
    client, mids, acked = _publishing(1)
    ours, broker = _socket_pair()
    client._sock = ours
    pingresp = b"\xd0\x00"
    broker.sendall(pingresp + _pubacks(mids))  # two packets, one message in flight
    assert client.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert acked == mids
    assert not client.input_pending()
    ours.close()
    broker.close()


def test_bytes_of_a_closed_connection_never_reach_the_next() -> None:
    client, mids, acked = _publishing(1)
    old, old_broker = _socket_pair()
    client._sock = old
    old_broker.sendall(b"\x40\x02\x00\x07\x40\x02")  # what a connection left unread
    assert client._sock_recv(1) == b"\x40"  # one recv() took it all
    assert client.input_pending()
    new, new_broker = _socket_pair()
    client._sock = new  # a reconnection (paho starts a fresh packet)
    client._in_packet["command"] = 0
    assert not client.input_pending()
    new_broker.sendall(_pubacks(mids))
    _read_all(client)
    assert acked == mids
    for sock in (old, old_broker, new, new_broker):
        sock.close()
