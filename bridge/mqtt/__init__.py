"""Everything MQTT: the only package that imports paho-mqtt.

``link`` holds the bridge's long-lived connection (:class:`MqttLink`); ``client`` builds
paho's client, explains failed connections and packs what paho packs too slowly.
"""

from bridge.mqtt.client import describe_connect_error, new_client, publish_once
from bridge.mqtt.link import IncomingCommand, MqttCounters, MqttLink

__all__ = [
    "IncomingCommand",
    "MqttCounters",
    "MqttLink",
    "describe_connect_error",
    "new_client",
    "publish_once",
]
