"""Home Assistant MQTT discovery: every config against what Home Assistant accepts, every template
rendered the way Home Assistant renders it, and the retained life cycle on a real broker.

The key sets below come from Home Assistant's MQTT documentation and its discovery schemas, as
of 2024.3 (the newest release on Python 3.11; docs/home-assistant.md):

* https://www.home-assistant.io/integrations/tag.mqtt/ (tag scanner)
* https://www.home-assistant.io/integrations/event.mqtt/ (event entity, 2023.8+)
* https://www.home-assistant.io/integrations/device_trigger.mqtt/ (device_automation)
* https://www.home-assistant.io/integrations/button.mqtt/
* https://www.home-assistant.io/integrations/binary_sensor.mqtt/
* https://www.home-assistant.io/integrations/sensor.mqtt/
* https://www.home-assistant.io/integrations/mqtt/ (discovery topic, device and origin blocks,
  availability list form); the topic pattern is ``TOPIC_MATCHER`` of
  homeassistant/components/mqtt/discovery.py, the device keys ``MQTT_ENTITY_DEVICE_INFO_SCHEMA``
  and the origin keys ``MQTT_ORIGIN_INFO_SCHEMA`` of the same package.

Entity and trigger schemas drop keys they do not know (``extra=vol.REMOVE_EXTRA``): such a key
is not an error in Home Assistant's log, it just does nothing, so the tests hold every config to
the documented keys. The ``device`` block is validated strictly: an unknown key there makes
Home Assistant reject the whole config.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bridge import __version__
from bridge.app import Bridge
from bridge.commands import SEQUENCE_NAMES, parse_command
from bridge.discovery import Discovery, node_id
from bridge.simulator import EventFactory, Simulator
from bridge.topics import STATE_DEAD, STATE_OFFLINE, STATE_READY, Identity, Topics, status_payload
from tests.support import bridge_command, bridge_env, free_port

if TYPE_CHECKING:  # conftest is pytest's to import; only its types are needed here
    from tests.support import Broker, Received, Subscriber

MakeBridge = Callable[..., Bridge]
Subscribe = Callable[..., "Subscriber"]
Config = dict[str, object]

PREFIX = "springcard/springcore"
HA_PREFIX = "homeassistant"
ONLINE = {"State": STATE_READY}

# -- what Home Assistant accepts, per component -----------------------------------------------

# The brief's pattern, stricter than TOPIC_MATCHER (which makes node_id optional).
TOPIC = re.compile(
    r"^homeassistant/(?P<component>[a-z_]+)/(?P<node>[A-Za-z0-9_-]+)/(?P<object>[A-Za-z0-9_-]+)/config$"
)

DEVICE_KEYS = {
    "identifiers",
    "connections",
    "manufacturer",
    "model",
    "name",
    "hw_version",
    "serial_number",
    "sw_version",
    "via_device",
    "suggested_area",
    "configuration_url",
}
"""MQTT_ENTITY_DEVICE_INFO_SCHEMA in 2024.3: a plain vol.Schema, so any other key is refused."""
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
AVAILABILITY_ITEM_KEYS = {"topic", "payload_available", "payload_not_available", "value_template"}

# MQTT_BASE_SCHEMA (qos, encoding) + MQTT_AVAILABILITY_SCHEMA + MQTT_ENTITY_COMMON_SCHEMA + name.
_ENTITY = {
    "qos",
    "encoding",
    "availability",
    "availability_mode",
    "availability_template",
    "availability_topic",
    "payload_available",
    "payload_not_available",
    "device",
    "origin",
    "enabled_by_default",
    "entity_category",
    "icon",
    "json_attributes_topic",
    "json_attributes_template",
    "object_id",
    "unique_id",
    "name",
}
# origin is read by discovery.py for every component, before the component's own schema.
ALLOWED: dict[str, set[str]] = {
    "tag": {"topic", "value_template", "device", "qos", "encoding", "origin"},
    "device_automation": {
        "automation_type",
        "payload",
        "qos",
        "encoding",
        "topic",
        "type",
        "subtype",
        "device",
        "value_template",
        "origin",
    },
    "event": _ENTITY | {"state_topic", "value_template", "event_types", "device_class"},
    "button": _ENTITY
    | {"command_topic", "command_template", "device_class", "payload_press", "retain"},
    "binary_sensor": _ENTITY
    | {
        "state_topic",
        "value_template",
        "device_class",
        "expire_after",
        "force_update",
        "off_delay",
        "payload_on",
        "payload_off",
    },
    "sensor": _ENTITY
    | {
        "state_topic",
        "value_template",
        "device_class",
        "expire_after",
        "force_update",
        "last_reset_value_template",
        "state_class",
        "unit_of_measurement",
        "suggested_display_precision",
    },
}
REQUIRED: dict[str, set[str]] = {
    "tag": {"topic", "device"},
    "device_automation": {"automation_type", "topic", "type", "subtype", "device"},
    "event": {"state_topic", "event_types"},
    "button": {"command_topic"},
    "binary_sensor": {"state_topic"},
    "sensor": {"state_topic"},
}
ENTITIES = {"event", "button", "binary_sensor", "sensor"}
ENTITY_CATEGORIES = {"config", "diagnostic"}
BUTTON_CLASSES = {"identify", "restart", "update"}
ICON = re.compile(r"^[a-z]+:[a-z0-9-]+$")  # cv.icon: "prefix:name"


def discovery(
    device_id: str = "lobby",
    prefix: str = HA_PREFIX,
    **identity: str,
) -> Discovery:
    return Discovery(prefix, Topics(PREFIX, device_id), Identity("192.168.1.50", **identity))


def component(topic: str) -> str:
    match = TOPIC.match(topic)
    assert match, topic
    return match["component"]


def configs_of(disc: Discovery, kind: str) -> list[Config]:
    return [config for topic, config in disc.configs() if component(topic) == kind]


def only(disc: Discovery, kind: str) -> Config:
    (config,) = configs_of(disc, kind)
    return config


def as_dict(value: object) -> dict[str, object]:
    assert isinstance(value, dict), value
    return value


def as_str(value: object) -> str:
    assert isinstance(value, str), value
    return value


def as_list(value: object) -> list[object]:
    assert isinstance(value, list), value
    return value


# -- topics ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "device_id", ["lobby", "192.168.1.50", "Door_2-east", "lecteur-entrée", "reader:4000"]
)
def test_every_topic_is_one_component_under_a_legal_node_id(device_id: str) -> None:
    disc = discovery(device_id)
    topics = [topic for topic, _ in disc.configs()]
    assert len(topics) == len(set(topics)), "one config per topic"
    nodes = set()
    for topic in topics:
        match = TOPIC.match(topic)
        assert match, f"Home Assistant ignores an illegal discovery topic: {topic}"
        assert match["component"] in ALLOWED
        nodes.add(match["node"])
    assert nodes == {node_id(device_id)}
    assert {component(topic) for topic in topics} == set(ALLOWED)


def test_an_ip_address_as_device_id_is_sanitised() -> None:
    disc = discovery("192.168.1.50")
    assert disc.node == "192_168_1_50"
    assert all("/192_168_1_50/" in topic for topic, _ in disc.configs())
    # The entities still read and write the bridge's own topics, dots and all.
    assert only(disc, "event")["state_topic"] == "springcard/springcore/192.168.1.50/bridge/live"


def test_discovery_prefix_and_birth_topic_follow_the_setting() -> None:
    disc = discovery(prefix="ha/test")
    assert disc.birth_topic == "ha/test/status"
    assert all(topic.startswith("ha/test/") for topic, _ in disc.configs())
    assert discovery().birth_topic == "homeassistant/status"


# -- keys, per component -----------------------------------------------------------------------


def test_every_config_has_the_required_keys_and_only_keys_home_assistant_reads() -> None:
    disc = discovery(
        serial_number="5C0A1F2E", product_name="SpringCard Puck Blue", location="Lobby"
    )
    for topic, config in disc.configs():
        kind = component(topic)
        assert REQUIRED[kind] <= set(config), (topic, REQUIRED[kind] - set(config))
        unknown = set(config) - ALLOWED[kind]
        assert not unknown, f"{topic}: Home Assistant's {kind} schema drops {unknown}"
        assert "availability" not in config or "availability_topic" not in config
        if "entity_category" in config:
            assert config["entity_category"] in ENTITY_CATEGORIES
        if "icon" in config:
            assert ICON.match(as_str(config["icon"]))
        if "qos" in config:
            assert config["qos"] in (0, 1, 2)


def test_entities_carry_a_name_a_unique_id_and_the_origin() -> None:
    disc = discovery()
    unique_ids = []
    for topic, config in disc.configs():
        if component(topic) not in ENTITIES:
            continue
        assert isinstance(config["name"], str)
        assert config["name"]
        unique_ids.append(as_str(config["unique_id"]))
        origin = as_dict(config["origin"])
        assert set(origin) <= ORIGIN_KEYS
        assert origin["name"] == "springcore-bridge"
        assert origin["sw_version"] == __version__
    assert len(unique_ids) == len(ENTITIES) + 2  # three buttons
    assert len(set(unique_ids)) == len(unique_ids), "Home Assistant refuses a second unique_id"
    assert all(node_id("lobby") in unique_id for unique_id in unique_ids)


def test_every_config_shares_one_device_block() -> None:
    disc = discovery()
    devices = [as_dict(config["device"]) for _, config in disc.configs()]
    assert all(device == devices[0] for device in devices)
    device = devices[0]
    assert set(device) <= DEVICE_KEYS, set(device) - DEVICE_KEYS
    assert device["manufacturer"] == "SpringCard"
    assert device["sw_version"] == __version__
    identifiers = device["identifiers"]
    assert isinstance(identifiers, list)
    assert identifiers
    assert all(isinstance(one, str) and node_id("lobby") in one for one in identifiers)
    assert "serial_number" not in device
    assert "suggested_area" not in device


def test_device_block_names_what_is_configured() -> None:
    device = discovery(
        serial_number="5C0A1F2E", product_name="SpringCard Puck Blue", location="Lobby, door 2"
    ).device()
    assert set(device) <= DEVICE_KEYS
    assert device["serial_number"] == "5C0A1F2E"
    assert device["model"] == "SpringCard Puck Blue"
    assert device["suggested_area"] == "Lobby, door 2"


def test_identifiers_and_unique_ids_depend_on_the_device_id_only() -> None:
    """Editing the serial, product or location must not make Home Assistant see a new device."""
    plain = discovery("lobby")
    described = discovery("lobby", serial_number="5C0A1F2E", location="Hall", product_name="X")
    other = discovery("garage")
    assert plain.device()["identifiers"] == described.device()["identifiers"]
    assert plain.device()["identifiers"] != other.device()["identifiers"]

    def unique_ids(disc: Discovery) -> list[object]:
        return [config.get("unique_id") for _, config in disc.configs()]

    assert unique_ids(plain) == unique_ids(described)
    assert set(unique_ids(plain)).isdisjoint(set(unique_ids(other)) - {None})


def test_entities_take_availability_from_the_status_topic_in_list_form() -> None:
    disc = discovery()
    status = disc.topics.status
    for topic, config in disc.configs():
        if component(topic) not in ENTITIES:
            continue
        availability = config["availability"]
        assert isinstance(availability, list), topic
        assert len(availability) == 1, topic
        item = as_dict(availability[0])
        assert set(item) <= AVAILABILITY_ITEM_KEYS
        assert item["topic"] == status
        assert isinstance(item["value_template"], str)


def test_each_component_reads_and_writes_the_bridge_topics() -> None:
    disc = discovery()
    topics = disc.topics
    # What an automation answers at the door reads only timely events (README, Late reads).
    assert only(disc, "tag")["topic"] == topics.live
    assert only(disc, "event")["state_topic"] == topics.live
    assert all(c["topic"] == topics.live for c in configs_of(disc, "device_automation"))
    # The last-tag sensor is a record: every event, late ones included.
    assert only(disc, "sensor")["state_topic"] == topics.event
    assert only(disc, "binary_sensor")["state_topic"] == topics.status
    assert all(c["command_topic"] == topics.command for c in configs_of(disc, "button"))


def test_event_entity_declares_read_and_removed() -> None:
    event_types = only(discovery(), "event")["event_types"]
    assert isinstance(event_types, list)
    assert all(isinstance(kind, str) for kind in event_types)
    assert {"read", "removed"} <= set(event_types)


def test_triggers_are_unique_per_type_and_subtype() -> None:
    triggers = configs_of(discovery(), "device_automation")
    assert all(trigger["automation_type"] == "trigger" for trigger in triggers)
    pairs = [(trigger["type"], trigger["subtype"]) for trigger in triggers]
    assert len(set(pairs)) == len(pairs) >= 2
    assert all(isinstance(trigger["payload"], str) for trigger in triggers)


def test_buttons_press_accept_deny_and_wink_in_a_form_the_bridge_accepts() -> None:
    buttons = {as_str(b["payload_press"]): b for b in configs_of(discovery(), "button")}
    assert set(buttons) == {"accept", "deny", "wink"}
    for word, button in buttons.items():
        command = parse_command(word.encode())
        assert command.as_dict() == {"Sequence": SEQUENCE_NAMES[word]}
        assert button.get("retain", False) is False, "a retained command runs on every reconnect"
        assert button.get("device_class", None) in BUTTON_CLASSES | {None}
    assert buttons["wink"]["device_class"] == "identify"


def test_reader_link_is_a_diagnostic_connectivity_sensor() -> None:
    link = only(discovery(), "binary_sensor")
    assert link["device_class"] == "connectivity"
    assert link["entity_category"] == "diagnostic"


def test_last_tag_sensor_is_disabled_by_default() -> None:
    """Card ids are personal data: the user opts in."""
    assert only(discovery(), "sensor")["enabled_by_default"] is False


def test_messages_are_the_configs_as_json_and_removals_are_empty() -> None:
    disc = discovery()
    configs = disc.configs()
    messages = disc.messages()
    assert [topic for topic, _ in messages] == [topic for topic, _ in configs]
    assert [json.loads(payload) for _, payload in messages] == [config for _, config in configs]
    assert disc.removals() == [(topic, b"") for topic, _ in configs]


# -- templates, rendered as Home Assistant renders them -----------------------------------------


def _to_json(value: object, ensure_ascii: bool = False, sort_keys: bool = False) -> str:
    """Home Assistant's ``to_json`` filter: orjson with no fallback for other types, so an
    undefined value (a missing field) is an error, not ``null`` (helpers/template.py)."""
    return json.dumps(value, ensure_ascii=ensure_ascii, sort_keys=sort_keys, separators=(",", ":"))


_HA_JINJA = ImmutableSandboxedEnvironment()  # Home Assistant's TemplateEnvironment is one
_HA_JINJA.filters["to_json"] = _to_json


def render(template: object, payload: bytes) -> str:
    """``render_with_possible_json_value``: ``value`` is the payload, ``value_json`` the payload
    parsed when it is JSON; the result is stripped."""
    value = payload.decode()
    variables: dict[str, object] = {"value": value}
    with contextlib.suppress(ValueError):  # not JSON: value_json is undefined
        variables["value_json"] = json.loads(value)
    return _HA_JINJA.from_string(as_str(template)).render(**variables).strip()


def _events() -> list[tuple[str, dict[str, object], str]]:
    """(case, event, what Home Assistant should see: read or removed), in the reader's shapes."""
    factory = EventFactory(random.Random(7))
    legacy = {key: value for key, value in factory.make("nfc", "Remove").items() if key != "Move"}
    return [
        ("NFC read", factory.make("nfc"), "read"),
        ("BLE read", factory.make("ble"), "read"),
        ("UHF read", factory.make("uhf"), "read"),
        ("Insert", factory.make("nfc", "Insert"), "read"),
        ("Remove", factory.make("nfc", "Remove"), "removed"),
        ("Insert,Remove", factory.make("uhf", "Insert,Remove"), "read"),
        ("legacy State Insert", {**legacy, "State": "Insert"}, "read"),
        ("legacy State Remove", {**legacy, "State": "Remove"}, "removed"),
    ]


EVENTS = _events()
EVENT_IDS = [case for case, _, _ in EVENTS]


def payload_of(event: dict[str, object]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


@pytest.mark.parametrize(("case", "event", "kind"), EVENTS, ids=EVENT_IDS)
def test_tag_scanner_fires_on_reads_and_inserts_only(
    case: str, event: dict[str, object], kind: str
) -> None:
    rendered = render(only(discovery(), "tag")["value_template"], payload_of(event))
    # Home Assistant ignores an empty rendering: no tag_scanned event for a removal.
    assert rendered == (event["TagId"] if kind == "read" else ""), case


@pytest.mark.parametrize(("case", "event", "kind"), EVENTS, ids=EVENT_IDS)
def test_event_entity_gets_its_type_and_the_card_attributes(
    case: str, event: dict[str, object], kind: str
) -> None:
    config = only(discovery(), "event")
    data = json.loads(render(config["value_template"], payload_of(event)))
    assert isinstance(data, dict), case
    assert data.pop("event_type") == kind
    assert kind in as_list(config["event_types"])
    assert data == {
        "tag_id": event["TagId"],
        "protocol": event["Protocol"],
        "interface": event["Interface"],
    }


@pytest.mark.parametrize(("case", "event", "kind"), EVENTS, ids=EVENT_IDS)
def test_exactly_the_matching_device_trigger_fires(
    case: str, event: dict[str, object], kind: str
) -> None:
    fired = [
        trigger["type"]
        for trigger in configs_of(discovery(), "device_automation")
        # mqtt/trigger.py: fires when the rendering equals the configured payload
        if render(trigger["value_template"], payload_of(event)) == trigger["payload"]
    ]
    assert fired == [f"tag_{kind}"], case


@pytest.mark.parametrize(("case", "event", "kind"), EVENTS, ids=EVENT_IDS)
def test_last_tag_sensor_shows_the_tag_id(case: str, event: dict[str, object], kind: str) -> None:
    rendered = render(only(discovery(), "sensor")["value_template"], payload_of(event))
    assert rendered == event["TagId"], case


def test_templates_read_the_legacy_taguid_field() -> None:
    """docs/reader-protocol.md §2: older firmware may say ``TagUid`` instead of ``TagId``; the
    bridge forwards it unchanged, so the templates must read it or such a reader never scans a
    tag."""
    event: dict[str, object] = {
        "Interface": "13.56",
        "Protocol": "NFC-A",
        "TagUid": "047DAE02C84080",
        "Uptime": "1:2",
    }
    disc = discovery()
    assert render(only(disc, "tag")["value_template"], payload_of(event)) == "047DAE02C84080"
    data = json.loads(render(only(disc, "event")["value_template"], payload_of(event)))
    assert data["tag_id"] == "047DAE02C84080"


STATUSES = [
    (STATE_READY, "ON", "online", "online"),
    (STATE_OFFLINE, "OFF", "offline", "online"),  # reader link down: the link shows "off"
    (STATE_DEAD, "OFF", "offline", "offline"),  # the bridge is gone: nothing is known
]


@pytest.mark.parametrize(("state", "link", "available", "link_available"), STATUSES)
def test_status_drives_availability_and_the_link_sensor(
    state: str, link: str, available: str, link_available: str
) -> None:
    disc = discovery()
    payload = status_payload(state)
    link_config = only(disc, "binary_sensor")
    rendered = render(link_config["value_template"], payload)
    assert rendered == link
    assert rendered in (link_config["payload_on"], link_config["payload_off"])
    for topic, config in disc.configs():
        if component(topic) not in ENTITIES:
            continue
        item = as_dict(as_list(config["availability"])[0])
        # compared with payload_available / payload_not_available, "online" / "offline" by default
        assert item.get("payload_available", "online") == "online"
        assert item.get("payload_not_available", "offline") == "offline"
        expected = link_available if component(topic) == "binary_sensor" else available
        assert render(item["value_template"], payload) == expected, (topic, state)


# -- on a real broker --------------------------------------------------------------------------


def retained_under(subscribe: Subscribe, prefix: str) -> dict[str, Received]:
    """What a client subscribing now gets from the broker's retained store under ``prefix``.

    Mosquitto sends retained messages right after SUBACK, so everything before a marker
    published afterwards by the same client is the retained set.
    """
    fresh = subscribe(f"{prefix}/#")
    marker = f"{prefix}/test/marker"
    fresh.publish(marker, b"marker")
    found: dict[str, Received] = {}
    while (message := fresh.next()).topic != marker:
        found[message.topic] = message
    return found


def expected_configs(bridge: Bridge) -> dict[str, Config]:
    """What the bridge's settings (test defaults: no serial, product or location) announce."""
    return dict(Discovery(HA_PREFIX, bridge.topics, Identity("127.0.0.1")).configs())


def take_configs(sub: Subscriber, count: int, timeout: float) -> dict[str, Received]:
    deadline = time.monotonic() + timeout
    found: dict[str, Received] = {}
    while len(found) < count:
        message = sub.next(max(0.1, deadline - time.monotonic()))
        if message.topic.endswith("/config"):
            found[message.topic] = message
    return found


@pytest.fixture
def online(
    make_bridge: MakeBridge, simulator: Simulator, subscribe: Subscribe, device_id: str
) -> Callable[..., tuple[Bridge, Subscriber]]:
    """Start a bridge; return it and a subscriber on ``homeassistant/#`` that has seen every
    config arrive, once the reader link is up."""

    def start(**settings: object) -> tuple[Bridge, Subscriber]:
        status = subscribe(f"{PREFIX}/{device_id}/status")
        ha = subscribe(f"{HA_PREFIX}/#")
        bridge = make_bridge(**settings)
        assert simulator.wait_client()
        status.wait_for(lambda m: m.json() == ONLINE)
        if settings.get("ha_discovery", True):
            take_configs(ha, len(expected_configs(bridge)), 10)
        return bridge, ha

    return start


Online = Callable[..., tuple[Bridge, "Subscriber"]]


@pytest.mark.integration
def test_configs_are_published_retained_once_the_bridge_connects(
    online: Online, subscribe: Subscribe
) -> None:
    bridge, _ = online()  # HA discovery is on by default
    expected = expected_configs(bridge)
    kept = retained_under(subscribe, HA_PREFIX)
    assert set(kept) == set(expected)
    for topic, message in kept.items():
        assert message.retain, topic
        assert message.qos == 1, topic
        assert message.json() == expected[topic]


@pytest.mark.integration
def test_card_events_are_never_retained(
    online: Online, simulator: Simulator, subscribe: Subscribe
) -> None:
    bridge, _ = online()
    events = subscribe(bridge.topics.event)
    simulator.emit(profile="nfc", move="Insert")
    assert not events.next().retain
    assert bridge.topics.event not in retained_under(subscribe, bridge.topics.base)


@pytest.mark.integration
def test_home_assistant_birth_makes_the_bridge_announce_again(online: Online) -> None:
    bridge, ha = online()
    expected = expected_configs(bridge)
    sent = time.monotonic()
    ha.publish(f"{HA_PREFIX}/status", b"online")  # as Home Assistant does: not retained
    again = take_configs(ha, len(expected), timeout=6.5)
    waited = time.monotonic() - sent
    assert {topic: message.json() for topic, message in again.items()} == expected
    # after a random delay, so that a fleet of bridges does not answer in the same instant
    assert 0.9 <= waited <= 6.5


@pytest.mark.integration
def test_no_config_when_discovery_is_off(online: Online, subscribe: Subscribe) -> None:
    online(ha_discovery=False)
    assert not any(t.endswith("/config") for t in retained_under(subscribe, HA_PREFIX))


def run_ha_remove(tmp_path: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        bridge_command("ha-remove", *args),
        env=bridge_env(**settings),
        cwd=tmp_path,  # no .env of anyone's
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.integration
def test_ha_remove_clears_every_retained_config(
    online: Online,
    subscribe: Subscribe,
    broker: Broker,
    device_id: str,
    tmp_path: Path,
) -> None:
    bridge, ha = online()
    expected = expected_configs(bridge)
    # The bridge keeps running: it announces again only on its next broker connection or
    # Home Assistant's next birth message (hence the README's BRIDGE_HA_DISCOVERY=false).
    done = run_ha_remove(
        tmp_path,
        mqtt_host="127.0.0.1",
        mqtt_port=str(broker.port),
        device_id=device_id,
        reader_host="127.0.0.1",
    )
    assert done.returncode == 0, done.stderr
    assert f"removed {len(expected)}" in done.stdout
    cleared = take_configs(ha, len(expected), timeout=5)
    assert set(cleared) == set(expected)
    assert all(message.payload == b"" for message in cleared.values())
    assert not any(t.endswith("/config") for t in retained_under(subscribe, HA_PREFIX))


@pytest.mark.integration
@pytest.mark.parametrize("everything", [True, False], ids=["all", "configs-only"])
def test_ha_remove_all_also_clears_meta_and_status(
    online: Online,
    subscribe: Subscribe,
    broker: Broker,
    tmp_path: Path,
    everything: bool,
) -> None:
    """Decommissioning a reader: with --all nothing of it stays retained on the broker."""
    bridge, _ = online()
    bridge.stop(timeout=1.0)  # the reader is gone: its bridge said offline and stopped
    topics = bridge.topics
    assert set(retained_under(subscribe, topics.base)) == {topics.meta, topics.status}
    assert set(retained_under(subscribe, HA_PREFIX)) == set(expected_configs(bridge))
    done = run_ha_remove(
        tmp_path,
        *(["--all"] if everything else []),
        mqtt_host="127.0.0.1",
        mqtt_port=str(broker.port),
        device_id=topics.device_id,
    )
    assert done.returncode == 0, done.stderr
    assert retained_under(subscribe, HA_PREFIX) == {}
    left = retained_under(subscribe, topics.base)
    if everything:
        assert left == {}
        assert f"cleared the retained meta and status of {topics.base}" in done.stdout
    else:
        assert set(left) == {topics.meta, topics.status}  # without --all: untouched


@pytest.mark.integration
def test_ha_remove_needs_only_the_broker_and_the_device_id(
    broker: Broker, device_id: str, tmp_path: Path
) -> None:
    """Removing the entries of a reader that is gone must not ask for the reader's address."""
    done = run_ha_remove(
        tmp_path, mqtt_host="127.0.0.1", mqtt_port=str(broker.port), device_id=device_id
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.integration
def test_ha_remove_says_why_when_the_broker_is_unreachable(tmp_path: Path) -> None:
    done = run_ha_remove(
        tmp_path,
        mqtt_host="127.0.0.1",
        mqtt_port=str(free_port()),  # nothing listens there
        device_id="lobby",
        reader_host="127.0.0.1",
    )
    assert done.returncode == 1
    assert "could not remove the discovery entries" in done.stderr
    assert "connection refused" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.integration
def test_pressing_a_button_plays_its_sequence_on_the_reader(
    online: Online, simulator: Simulator
) -> None:
    bridge, ha = online()
    for button in configs_of(Discovery(HA_PREFIX, bridge.topics, Identity("")), "button"):
        word = as_str(button["payload_press"])
        # what Home Assistant does on button.press: publish payload_press, not retained
        ha.publish(as_str(button["command_topic"]), word)
        assert simulator.commands.get(timeout=5) == {"Sequence": SEQUENCE_NAMES[word]}


@pytest.mark.integration
@pytest.mark.parametrize(("device_id", "warned"), [("door.1", True), ("door-1_A", False)])
def test_start_warns_when_home_assistant_sees_another_device_id(
    make_bridge: MakeBridge, caplog: pytest.LogCaptureFixture, device_id: str, warned: bool
) -> None:
    caplog.set_level(logging.WARNING, logger="bridge.app")
    make_bridge(device_id=device_id)
    warnings = [
        r.getMessage() for r in caplog.records if "appears in Home Assistant" in r.getMessage()
    ]
    assert len(warnings) == int(warned)
    if warned:
        assert f"{device_id!r} appears in Home Assistant as {node_id(device_id)!r}" in warnings[0]
