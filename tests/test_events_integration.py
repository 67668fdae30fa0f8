"""Events from the simulated reader reach a real Mosquitto exactly as sent."""

from __future__ import annotations

import json

import pytest

from bridge.simulator import Simulator

pytestmark = pytest.mark.integration


def test_event_published_compact_unretained_with_metadata(make_bridge, simulator: Simulator, subscribe, device_id):
    sub = subscribe(f"springcard/springcore/{device_id}/#")
    bridge = make_bridge()
    assert simulator.wait_client()
    sub.wait_for(lambda m: m.topic.endswith("/status") and m.json() == {"State": "online,ready"})
    event = simulator.factory.make("nfc")
    simulator.send_raw(json.dumps(event, indent=1).encode() + b"\r\n")
    message = sub.next(topic=bridge.topics.event)
    assert message.payload == json.dumps(event, separators=(",", ":")).encode()
    assert list(json.loads(message.payload)) == list(event)
    assert not message.retain
    assert message.qos == 1
    assert int(message.properties["seq"]) > 0
    assert message.properties["received_at"].endswith("Z")
    assert "late" not in message.properties
