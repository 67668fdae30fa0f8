"""The examples in ``examples/`` fit the bridge: its topic layout, its command words, and the
entities its Home Assistant discovery creates. No broker needed; Node.js and PyYAML when present.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bridge.commands import SEQUENCE_NAMES, parse_command
from bridge.config import Settings, env_names
from bridge.discovery import Discovery
from bridge.topics import Identity, Topics

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PREFIX = str(Settings.model_fields["topic_prefix"].default)
HA_PREFIX = str(Settings.model_fields["ha_discovery_prefix"].default)
DEMO_ID = "demo"  # BRIDGE_DEVICE_ID in examples/compose.yaml (checked below)


def flow_nodes() -> list[dict[str, Any]]:
    flow = json.loads((EXAMPLES / "node-red-flow.json").read_text())
    assert isinstance(flow, list)
    assert all(isinstance(node, dict) and "id" in node and "type" in node for node in flow)
    return flow


def one_node(nodes: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (node,) = [node for node in nodes if node["type"] == kind]
    return node


def load_yaml(name: str) -> Any:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((EXAMPLES / name).read_text())


# -- Node-RED ------------------------------------------------------------------------------------


def test_node_red_flow_listens_on_every_reader_and_answers_unretained() -> None:
    nodes = flow_nodes()
    assert len({node["id"] for node in nodes}) == len(nodes)
    broker = one_node(nodes, "mqtt-broker")
    events = one_node(nodes, "mqtt in")
    decide = one_node(nodes, "function")
    command = one_node(nodes, "mqtt out")
    debug = one_node(nodes, "debug")

    assert events["topic"] == Topics(PREFIX, "+").event
    assert events["datatype"] == "json"
    assert events["qos"] == "1"
    assert events["wires"] == [[decide["id"]]]
    assert decide["outputs"] == 1
    assert sorted(decide["wires"][0]) == sorted([command["id"], debug["id"]])
    assert command["topic"] == ""  # taken from msg.topic: the reader that sent the event
    assert command["qos"] == "1"
    assert command["retain"] == "false"  # a retained command would run on every reconnection
    assert events["broker"] == command["broker"] == broker["id"]


def run_function(func: str, messages: list[dict[str, object]]) -> list[object]:
    """Run a Node-RED function body on each message, as Node-RED does (the body of a function
    of ``msg``); the result of each, or None."""
    script = (
        "const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "const run = new Function('msg', 'node', input.func);"
        "const node = { warn() {}, error() {}, status() {} };"
        "process.stdout.write(JSON.stringify(input.messages.map((m) => run(m, node) ?? null)));"
    )
    done = subprocess.run(
        ["node", "-e", script],
        input=json.dumps({"func": func, "messages": messages}),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    result = json.loads(done.stdout)
    assert isinstance(result, list)
    return result


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_node_red_function_answers_the_same_reader_with_a_word_the_bridge_accepts(
    tmp_path: Path,
) -> None:
    func = one_node(flow_nodes(), "function")["func"]
    checked = tmp_path / "function.js"
    checked.write_text(
        f"async function body(msg, node, context, flow, global, env) {{\n{func}\n}}\n"
    )
    subprocess.run(["node", "--check", str(checked)], check=True, timeout=30)

    allowed_list = re.search(r"const ALLOWED = (\[[^\]]*\]);", func)
    assert allowed_list, "the allow-list is a const ALLOWED array"
    allowed = json.loads(allowed_list[1])[0]
    lobby = Topics(PREFIX, "lobby")

    def event(tag: str, props: dict[str, str] | None = None, **extra: str) -> dict[str, object]:
        payload = {"Interface": "13.56", "Protocol": "NFC-A", "Template": 1, "TagId": tag}
        message: dict[str, object] = {
            "topic": lobby.event,
            "payload": {**payload, **extra, "Uptime": "1:2.000"},
        }
        if props is not None:  # Node-RED's mqtt in gives MQTT v5 user properties so
            message["userProperties"] = {"seq": "17", "received_at": "…", **props}
        return message

    cases = {
        "allowed read": (event(allowed), "accept"),
        "unknown read": (event("04000000000000"), "deny"),
        "allowed insert": (event(allowed, Move="Insert"), "accept"),
        "insert and remove at once": (event(allowed, Move="Insert,Remove"), "accept"),
        "removal": (event(allowed, Move="Remove"), None),
        "legacy removal": (event(allowed, State="Remove"), None),
        "timely read": (event(allowed, {}), "accept"),
        "read that waited 1.5 s in a burst": (event(allowed, {"age_ms": "1500"}), "accept"),
        # README, Late reads must not open doors: nor may a read stuck long behind a burst.
        "late read after an outage": (event(allowed, {"late": "true", "age_ms": "900"}), None),
        "read that waited 20 s": (event(allowed, {"age_ms": "20000"}), None),
    }
    results = run_function(func, [message for message, _ in cases.values()])
    for (case, (_, word)), result in zip(cases.items(), results, strict=True):
        if word is None:
            assert result is None, case
            continue
        assert isinstance(result, dict), case
        assert result["topic"] == lobby.command, case
        assert result["payload"] == word, case
        assert parse_command(word.encode()).as_dict() == {"Sequence": SEQUENCE_NAMES[word]}
        assert "userProperties" not in result  # the event's seq is not the command's


# -- docker compose --------------------------------------------------------------------------------


def test_compose_runs_broker_simulator_and_bridge_as_device_demo() -> None:
    services = load_yaml("compose.yaml")["services"]
    assert set(services) == {"mosquitto", "simulator", "bridge"}
    assert services["mosquitto"]["image"] == "eclipse-mosquitto:2"
    assert (
        "./mosquitto.conf:/mosquitto/config/mosquitto.conf:ro" in services["mosquitto"]["volumes"]
    )
    config = (EXAMPLES / "mosquitto.conf").read_text().splitlines()
    assert {"listener 1883", "allow_anonymous true"} <= set(config)

    simulator = services["simulator"]
    assert simulator["build"] == ".."
    assert simulator["command"][:5] == ["simulate", "--host", "0.0.0.0", "--port", "4000"]

    bridge = services["bridge"]
    assert bridge["build"] == ".."
    environment = bridge["environment"]
    assert set(environment) <= set(env_names())
    assert environment["BRIDGE_READER_HOST"] == "simulator"
    assert environment["BRIDGE_MQTT_HOST"] == "mosquitto"
    assert environment["BRIDGE_DEVICE_ID"] == DEMO_ID
    assert any(volume.endswith(":/data") for volume in bridge["volumes"])


# -- Home Assistant --------------------------------------------------------------------------------


def slugify(text: str) -> str:
    """homeassistant.util.slugify for ASCII text: lower case, runs of anything else -> ``_``."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def demo_entities() -> dict[str, dict[str, object]]:
    """entity_id -> discovery config, as Home Assistant names them: an entity with a name on a
    device with a name is "<device name> <entity name>", slugified (MQTT entities have
    has_entity_name since 2023.8)."""
    disc = Discovery(HA_PREFIX, Topics(PREFIX, DEMO_ID), Identity("simulator"))
    device_name = str(disc.device()["name"])
    entities = {}
    for topic, config in disc.configs():
        kind = topic.split("/")[1]
        if "unique_id" in config:
            name = f"{device_name} {config['name']}"
            entities[f"{kind}.{slugify(name)}"] = config
    return entities


def entity_ids(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["entity_id"]] if isinstance(node.get("entity_id"), str) else []
        return found + [one for value in node.values() for one in entity_ids(value)]
    if isinstance(node, list):
        return [one for value in node for one in entity_ids(value)]
    return []


def test_home_assistant_automation_presses_the_buttons_discovery_creates() -> None:
    (automation,) = load_yaml("home-assistant-automation.yaml")
    entities = demo_entities()
    referenced = entity_ids(automation)
    unknown = set(referenced) - set(entities)
    assert not unknown, f"no such entity from discovery: {unknown}"

    (trigger,) = automation["trigger"]
    assert entities[trigger["entity_id"]]["event_types"] == ["read", "removed"]
    (choose,) = automation["action"]
    (allowed,) = choose["choose"]
    (accept,) = allowed["sequence"]
    (deny,) = choose["default"]
    for step, word in ((accept, "accept"), (deny, "deny")):
        assert step["service"] == "button.press"
        assert entities[step["target"]["entity_id"]]["payload_press"] == word

    text = (EXAMPLES / "home-assistant-automation.yaml").read_text()
    unique_ids = {str(config["unique_id"]) for config in entities.values()}
    object_ids = {entity_id.split(".", 1)[1] for entity_id in entities}
    named = set(re.findall(r"springcore_demo_[a-z_]+", text)) - {automation["id"]}
    assert named <= unique_ids | object_ids, named - unique_ids - object_ids
    assert {str(entities[one]["unique_id"]) for one in referenced} <= named


def test_home_assistant_automation_decides_on_reads_only() -> None:
    (automation,) = load_yaml("home-assistant-automation.yaml")
    allowed_tags = automation["variables"]["allowed_tags"]
    (condition,) = automation["condition"]
    (branch,) = automation["action"][0]["choose"]
    (allow_list,) = branch["conditions"]
    jinja = ImmutableSandboxedEnvironment()

    def holds(template: str, from_state: str | None, event_type: str, tag: str) -> bool:
        def state(value: str) -> SimpleNamespace:
            return SimpleNamespace(
                state=value, attributes={"event_type": event_type, "tag_id": tag}
            )

        trigger = SimpleNamespace(
            from_state=None if from_state is None else state(from_state),
            to_state=state("2026-01-01T00:00:00.000+00:00"),
        )
        rendered = jinja.from_string(template).render(trigger=trigger, allowed_tags=allowed_tags)
        return rendered.strip() == "True"

    known = allowed_tags[0]
    earlier = "2025-12-31T23:59:00.000+00:00"
    assert holds(condition["value_template"], earlier, "read", known)
    assert holds(condition["value_template"], "unknown", "read", known)  # the first read ever
    assert not holds(condition["value_template"], earlier, "removed", known)
    assert not holds(condition["value_template"], "unavailable", "read", known)
    assert not holds(condition["value_template"], None, "read", known)
    assert holds(allow_list["value_template"], earlier, "read", known)
    assert holds(allow_list["value_template"], earlier, "read", known.lower())
    assert not holds(allow_list["value_template"], earlier, "read", "04000000000000")


def test_documented_entity_ids_are_the_ones_discovery_creates() -> None:
    """The README's Home Assistant section names the demo device's entity ids."""
    entities = demo_entities()
    readme = (EXAMPLES.parent / "README.md").read_text()
    named = set(re.findall(r"\b[a-z_]+\.springcore_demo_[a-z_]+", readme))
    assert named, "the README names the demo entities"
    assert named <= set(entities), named - set(entities)
