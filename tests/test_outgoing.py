"""The order of what one reader's MQTT link publishes (bridge.mqtt.outgoing), with
a client double that records each publish. The broker side
of the same rules is tested against Mosquitto in test_local_integration and test_outage."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, cast

from paho.mqtt.enums import MQTTErrorCode

from bridge.config import load_settings
from bridge.delivery import Delivery
from bridge.mqtt.client import Client
from bridge.mqtt.outgoing import LocalResult, Outgoing, Result
from bridge.outbox import MemoryOutbox
from bridge.topics import Topics

ACCEPT: dict[str, object] = {"Sequence": "60"}


@dataclass
class Info:
    mid: int
    rc: MQTTErrorCode = MQTTErrorCode.MQTT_ERR_SUCCESS


@dataclass
class RecordingClient:
    """paho's ``publish`` as the link uses it: what went, in order."""

    sent: list[tuple[str, bytes]] = field(default_factory=list)

    def publish(self, topic: str, payload: bytes, qos: int = 0, **kwargs: Any) -> Info:
        self.sent.append((topic, payload))
        return Info(len(self.sent))

    def topics(self) -> list[str]:
        return [topic for topic, _ in self.sent]


def connected_outgoing() -> tuple[Outgoing, RecordingClient, Delivery, Topics]:
    """A v5 link's publishing side, connected, its status and meta already out."""
    options = load_settings(
        env_file=None, reader_host="10.0.0.9", device_id="door", ha_discovery=False
    ).bridge_options()
    client = RecordingClient()
    delivery = Delivery(MemoryOutbox(1 << 20, 3600.0), options.topics.event)
    outgoing = Outgoing(cast(Client, client), delivery, options)
    outgoing.connection_up(None)
    outgoing.pump()
    client.sent.clear()
    return outgoing, client, delivery, options.topics


def test_a_local_answers_result_follows_its_event_in_the_same_turn():
    """The event of a read goes to paho first, the result of its local answer right after:
    nothing of the answer is before the event on the broker connection. Waiting before the
    result (2 ms, so that it reaches the broker after the event has passed) cost a quarter
    more CPU per read and did not make the event measurably sooner (README, When the broker
    is down)."""

    outgoing, client, delivery, topics = connected_outgoing()
    delivery.put([(b'{"TagId":"04A1"}', time.time())])
    outgoing.pump()
    outgoing.add_result(LocalResult("04A1", time.time(), ACCEPT))
    assert client.topics() == [topics.event, topics.result]
    assert b'"local":true' in client.sent[-1][1]
    assert b'"late":false' in client.sent[-1][1]


def test_a_local_result_made_while_the_broker_is_away_goes_first_on_its_return():
    """Held through an outage, a local result is published on reconnection after the status
    and before the held events, marked late."""

    outgoing, client, delivery, topics = connected_outgoing()
    outgoing.connection_down()
    delivery.put([(b'{"TagId":"04A1"}', time.time())])
    outgoing.add_result(LocalResult("04A1", time.time() - 1.0, ACCEPT))  # made before
    assert client.sent == []
    outgoing.connection_up(None)
    outgoing.pump()
    assert client.topics() == [topics.meta, topics.status, topics.result, topics.event]
    assert b'"late":true' in client.sent[2][1]


def test_results_go_in_the_order_they_were_made():
    outgoing, client, _, _ = connected_outgoing()
    outgoing.add_result(LocalResult("04A1", time.time(), ACCEPT))
    outgoing.add_result(Result(b'{"ok":true,"transaction":7}'))
    payloads = [payload for _, payload in client.sent]
    assert len(payloads) == 2
    assert b'"local":true' in payloads[0]
    assert b'"transaction":7' in payloads[1]
