"""Home Assistant MQTT discovery: one retained config per component (docs/home-assistant.md).

No I/O happens here: this module only builds topics and payloads. Per-component discovery
topics work with every Home Assistant release since 2023; every config shares one ``device``
block (only the keys 2024.3 accepts) and an ``origin`` block, and takes availability from the
bridge's ``status`` topic.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from bridge import __version__
from bridge.topics import STATE_DEAD, STATE_READY, Identity, Topics

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")

# Event fields, read defensively: older firmware says State instead of Move
# (docs/reader-protocol.md §2).
_MOVE = "value_json.get('Move', value_json.get('State', ''))"
_TAG_ID = "value_json.get('TagId', value_json.get('TagUid', ''))"  # TagUid: older firmware
TAG_TEMPLATE = f"{{{{ '' if {_MOVE} == 'Remove' else {_TAG_ID} }}}}"
"""The tag scanner fires on a read or an Insert; an empty rendering (a Remove) is ignored."""
EVENT_TEMPLATE = (
    f"{{% set move = {_MOVE} %}}"
    "{{ {'event_type': 'removed' if move == 'Remove' else 'read', "
    f"'tag_id': {_TAG_ID}, 'protocol': value_json.Protocol, "
    "'interface': value_json.Interface} | to_json }}"
)
TRIGGER_TEMPLATE = f"{{{{ 'removed' if {_MOVE} == 'Remove' else 'read' }}}}"
AVAILABILITY = f"{{{{ 'online' if value_json.State == '{STATE_READY}' else 'offline' }}}}"
LINK_AVAILABILITY = f"{{{{ 'offline' if value_json.State == '{STATE_DEAD}' else 'online' }}}}"
ORIGIN = {"name": "springcore-bridge", "sw_version": __version__}
LINK_STATE = f"{{{{ 'ON' if value_json.State == '{STATE_READY}' else 'OFF' }}}}"


def node_id(device_id: str) -> str:
    """The device id made safe for a discovery topic (an IP address has dots)."""
    return _UNSAFE.sub("_", device_id).strip("_") or "reader"


@dataclass(frozen=True)
class Discovery:
    """The discovery configs of one reader."""

    prefix: str
    topics: Topics
    identity: Identity

    @property
    def node(self) -> str:
        return node_id(self.topics.device_id)

    @property
    def birth_topic(self) -> str:
        """Home Assistant publishes ``online`` here when it starts."""
        return f"{self.prefix}/status"

    def device(self) -> dict[str, object]:
        device: dict[str, object] = {
            "identifiers": [f"springcore_{self.node}"],
            "manufacturer": "SpringCard",
            "model": self.identity.product_name or "SpringCore reader",
            "name": f"SpringCore {self.topics.device_id}",
            "sw_version": __version__,
        }
        if self.identity.serial_number:
            device["serial_number"] = self.identity.serial_number
        if self.identity.location:
            device["suggested_area"] = self.identity.location
        return device

    def _topic(self, component: str, object_id: str) -> str:
        return f"{self.prefix}/{component}/{self.node}/{object_id}/config"

    def _entity(self, object_id: str, name: str, **config: object) -> dict[str, object]:
        return {
            "name": name,
            "unique_id": f"springcore_{self.node}_{object_id}",
            "availability": [{"topic": self.topics.status, "value_template": AVAILABILITY}],
            "device": self.device(),
            "origin": ORIGIN,
            **config,
        }

    def configs(self) -> list[tuple[str, dict[str, object]]]:
        """(topic, config) for every component, in a stable order.

        What stands for "a person at the door now" - the tag scanner, the device triggers
        and the event entity, which automations answer with accept or deny - reads
        ``bridge/live``: an event delivered late, after a broker outage, must not open a
        door, and Home Assistant cannot see the ``late`` user property. Only the last-tag
        sensor, a record, reads ``rdr/evt`` with every event (docs/home-assistant.md §6)."""
        event_topic = self.topics.live
        result: list[tuple[str, dict[str, object]]] = [
            # tag and device_automation drop unknown keys (availability, origin, ...).
            (
                self._topic("tag", "tag"),
                {
                    "topic": event_topic,
                    "value_template": TAG_TEMPLATE,
                    "device": self.device(),
                    "origin": ORIGIN,  # read by discovery itself, for its log, then dropped
                },
            ),
        ]
        for kind in ("read", "removed"):
            result.append(
                (
                    self._topic("device_automation", f"tag_{kind}"),
                    {
                        "automation_type": "trigger",
                        "type": f"tag_{kind}",
                        "subtype": "card",
                        "topic": event_topic,
                        "value_template": TRIGGER_TEMPLATE,
                        "payload": kind,
                        "device": self.device(),
                        "origin": ORIGIN,
                    },
                )
            )
        result.append(
            (
                self._topic("event", "tag"),
                self._entity(
                    "tag_event",
                    "Tag",
                    state_topic=event_topic,
                    event_types=["read", "removed"],
                    value_template=EVENT_TEMPLATE,
                    icon="mdi:card-account-details",
                ),
            )
        )
        for word, name, extra in (
            ("accept", "Accept", {}),
            ("deny", "Deny", {}),
            ("wink", "Wink", {"device_class": "identify", "entity_category": "config"}),
        ):
            result.append(
                (
                    self._topic("button", word),
                    self._entity(
                        word,
                        name,
                        command_topic=self.topics.command,
                        payload_press=word,
                        qos=1,
                        **extra,
                    ),
                )
            )
        link = self._entity(
            "reader_link",
            "Reader link",
            state_topic=self.topics.status,
            value_template=LINK_STATE,
            payload_on="ON",
            payload_off="OFF",
            device_class="connectivity",
            entity_category="diagnostic",
        )
        # Available unless the bridge is gone, so it can show "off" while the reader is down.
        link["availability"] = [{"topic": self.topics.status, "value_template": LINK_AVAILABILITY}]
        result.append((self._topic("binary_sensor", "reader_link"), link))
        result.append(
            (
                self._topic("sensor", "last_tag"),
                self._entity(
                    "last_tag",
                    "Last tag",
                    state_topic=self.topics.event,
                    value_template=f"{{{{ {_TAG_ID} }}}}",
                    icon="mdi:card-account-details-outline",
                    enabled_by_default=False,  # card ids are personal data
                ),
            )
        )
        return result

    def messages(self) -> list[tuple[str, bytes]]:
        """Retained payloads announcing every component."""
        return [
            (topic, json.dumps(config, separators=(",", ":")).encode())
            for topic, config in self.configs()
        ]

    def removals(self) -> list[tuple[str, bytes]]:
        """Empty retained payloads: Home Assistant removes the entities, then the device."""
        return [(topic, b"") for topic, _ in self.configs()]
