"""Everything MQTT: the only package that imports paho-mqtt.

``link`` holds one reader's long-lived connection (:class:`MqttLink`), ``driver`` drives its
paho client from the event loop, ``outgoing`` decides what is published in which order,
``incoming`` reads commands; ``client`` builds paho's client, explains failed connections and
packs what paho packs too slowly; ``watch`` says why a connection failed.
"""

from bridge.mqtt.client import describe_connect_error, new_client, publish_once
from bridge.mqtt.driver import Sweep
from bridge.mqtt.incoming import CommandSink, IncomingCommand
from bridge.mqtt.link import MqttLink
from bridge.mqtt.outgoing import LocalResult, Result

__all__ = [
    "CommandSink",
    "IncomingCommand",
    "LocalResult",
    "MqttLink",
    "Result",
    "Sweep",
    "describe_connect_error",
    "new_client",
    "publish_once",
]
