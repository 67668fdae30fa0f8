"""bridge.mqtt.client.Client's short way for PUBACKs, checked against paho's own decoding."""

from __future__ import annotations

import pytest
from paho.mqtt.client import Client as PahoClient
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
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
