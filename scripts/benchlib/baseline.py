"""The bare path (``bench.py --baseline``): the least a bridge must do, to compare the bridge with.

Read the reader socket, split on CR LF, publish each line with paho; commands go back to the
reader as they are. No validation, no spool, no user properties.
"""

from __future__ import annotations

import socket

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from benchlib.client import nodelay
from benchlib.event import PREFIX, SEPARATOR


def run_baseline(reader_port: int, mqtt_port: int, device: str, qos: int) -> int:
    """Read the reader socket, split on CR LF, publish each line; commands go back as they are."""
    event_topic = f"{PREFIX}/{device}/rdr/evt"
    command_topic = f"{PREFIX}/{device}/rdr/cmd"
    reader = socket.create_connection(("127.0.0.1", reader_port))
    reader.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_connect(
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        client.subscribe(command_topic, qos=qos)

    def on_message(client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        reader.sendall(message.payload)

    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-{device}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.max_inflight_messages_set(100)
    client.on_socket_open = nodelay
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", mqtt_port)
    client.loop_start()
    buffer = b""
    while data := reader.recv(65536):
        buffer += data
        *lines, buffer = buffer.split(SEPARATOR)
        for line in lines:
            if line:
                client.publish(event_topic, line, qos=qos)
    client.disconnect()
    client.loop_stop()
    return 0
