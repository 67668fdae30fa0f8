"""Answers at the edge (README, When the broker is down) against a real Mosquitto and the
reader simulator: which reads the bridge answers itself, with what, when, and how it says so.

"Nothing else reached the reader" is proved as in test_commands_integration: a sentinel wink
published afterwards must be the next thing the reader gets, and its result the next result.
Where a rule is about time ("after BRIDGE_LOCAL_AFTER"), the test waits for that time to pass:
the behaviour is defined by it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.app import Bridge
from bridge.simulator import Simulator
from tests import test_commands_integration, test_outage
from tests.support import Broker, Received, Subscriber, wait_until
from tests.test_commands_integration import Rig
from tests.test_outage import Gate, watch_resubscribe

pytestmark = pytest.mark.integration

# The fixtures of the command and outage tests, used here too.
rig = test_commands_integration.rig
gate = test_outage.gate
gated_bridge = test_outage.gated_bridge

ACCEPT: dict[str, object] = {"Sequence": "60"}
DENY: dict[str, object] = {"Sequence": "61"}
WAIT = 5.0


def read(sim: Simulator, tag: str, move: str | None = "Insert") -> None:
    """A read of ``tag``, as the reader sends it."""
    event: dict[str, object] = {"Interface": "13.56", "Protocol": "NFC-A", "Template": 1}
    event["TagId"] = tag
    if move is not None:
        event["Move"] = move
    event["Uptime"] = "1:2.345"
    sim.emit(event)


def local_result(rig: Rig, tag: str, sent: dict[str, object], late: bool = False) -> None:
    """The next result is the local answer to ``tag``'s read."""
    assert rig.result() == {"ok": True, "local": True, "late": late, "tag": tag, "sent": sent}


def event_of(sub: Subscriber, tag: str) -> Received:
    return sub.wait_for(lambda m: json.loads(m.payload)["TagId"] == tag, timeout=WAIT)


def allow_file(tmp_path: Path, *tags: str) -> Path:
    path = tmp_path / "allowed-tags"
    path.write_text("# who may enter\n" + "".join(f"{tag}\n" for tag in tags))
    path.chmod(0o600)
    return path


def test_local_reply_answers_every_read_and_never_a_remove(
    rig: Rig, make_bridge: Callable[..., Bridge], subscribe: Callable[..., Subscriber]
):
    events = subscribe(rig.topics.event)
    rig.start(make_bridge, local_reply="accept")
    read(rig.sim, "04A1", move="Insert")
    assert rig.command() == ACCEPT
    local_result(rig, "04A1", ACCEPT)
    assert event_of(events, "04A1").properties["local_reply"] == "accept"
    read(rig.sim, "04B2", move=None)  # no Move: insert/remove tracking off
    assert rig.command() == ACCEPT
    local_result(rig, "04B2", ACCEPT)
    read(rig.sim, "04A1", move="Remove")
    assert "local_reply" not in event_of(events, "04A1").properties
    rig.sentinel()  # the Remove got nothing


def test_an_allow_list_always_accepts_listed_tags_and_denies_the_others(
    rig: Rig, make_bridge: Callable[..., Bridge], tmp_path: Path
):
    path = allow_file(tmp_path, "047dae02c84080")
    rig.start(make_bridge, local_allow_file=str(path), local_when="always")
    read(rig.sim, "047DAE02C84080")
    assert rig.command() == ACCEPT
    local_result(rig, "047DAE02C84080", ACCEPT)
    read(rig.sim, "04FFFFFFFFFF")
    assert rig.command() == DENY
    local_result(rig, "04FFFFFFFFFF", DENY)
    rig.sentinel()


class Automation:
    """Home Assistant or Node-RED in miniature: answers each event it sees on ``topic`` with
    ``answer``, at once."""

    def __init__(self, rig: Rig, subscribe: Callable[..., Subscriber], answer: str) -> None:
        self.sub = subscribe(rig.topics.live)
        self.seen = threading.Event()
        rig_client = rig.results.client

        def on_message(*args: Any) -> None:
            rig_client.publish(rig.topics.command, answer, qos=1)
            self.seen.set()

        self.sub.client.on_message = on_message


def test_unanswered_a_read_answered_centrally_in_time_gets_only_that_answer(
    rig: Rig,
    make_bridge: Callable[..., Bridge],
    subscribe: Callable[..., Subscriber],
    tmp_path: Path,
):
    automation = Automation(rig, subscribe, "deny")  # it denies even a listed tag
    rig.start(make_bridge, local_allow_file=str(allow_file(tmp_path, "04A1")), local_after=1.0)
    read_at = time.monotonic()
    read(rig.sim, "04A1")
    assert automation.seen.wait(WAIT)
    assert rig.command() == DENY
    assert rig.result() == {"ok": True, "sent": DENY}
    time.sleep(max(0.0, read_at + 1.5 - time.monotonic()))  # past BRIDGE_LOCAL_AFTER
    rig.sentinel()  # no local accept came, and no local result
    assert rig.bridge is not None
    assert rig.bridge.snapshot().local_answers == {"sent": 0, "expired": 0, "withdrawn": 1}


def test_unanswered_a_read_nobody_answers_gets_the_local_answer_after_the_delay(
    rig: Rig, make_bridge: Callable[..., Bridge], tmp_path: Path
):
    rig.start(make_bridge, local_allow_file=str(allow_file(tmp_path, "04A1")), local_after=1.0)
    for tag, answer in (("04A1", ACCEPT), ("04B2", DENY)):
        read_at = time.monotonic()
        read(rig.sim, tag)
        assert rig.command() == answer
        assert time.monotonic() - read_at >= 1.0, "answered before BRIDGE_LOCAL_AFTER"
        local_result(rig, tag, answer)
    rig.sentinel()


def test_unanswered_answers_locally_while_the_broker_is_unreachable(
    rig: Rig, gate: Gate, gated_bridge: Callable[..., Bridge], tmp_path: Path
):
    gate.open()
    bridge = rig.start(
        gated_bridge, local_allow_file=str(allow_file(tmp_path, "04A1")), local_after=0.5
    ).bridge
    assert bridge is not None
    gate.close()
    wait_until(lambda: not bridge.mqtt.is_connected, "the bridge to lose the broker")
    read(rig.sim, "04A1")
    assert rig.command() == ACCEPT
    gate.open()
    local_result(rig, "04A1", ACCEPT, late=True)


def test_offline_answers_only_while_the_broker_is_stopped_and_reports_late(
    rig: Rig,
    broker: Broker,
    gate: Gate,
    gated_bridge: Callable[..., Bridge],
    subscribe: Callable[..., Subscriber],
):
    events = subscribe(rig.topics.event)
    gate.open()
    bridge = rig.start(gated_bridge, local_reply="accept", local_when="offline").bridge
    assert bridge is not None
    read(rig.sim, "04A1")
    event_of(events, "04A1")
    rig.sentinel()  # connected: the automation decides, the bridge does not answer
    resubscribed = [watch_resubscribe(sub) for sub in (events, rig.results, rig.status)]
    gate.shut()  # the bridge comes back only once the test's clients are subscribed again
    broker.stop()
    wait_until(lambda: not bridge.mqtt.is_connected, "the bridge to lose the broker")
    read(rig.sim, "04B2")
    assert rig.command() == ACCEPT
    broker.start()
    assert all(done.wait(15) for done in resubscribed), "a test client did not resubscribe"
    gate.open()
    assert bridge.mqtt.wait_connected(20)
    local_result(rig, "04B2", ACCEPT, late=True)
    held = event_of(events, "04B2")
    assert held.properties["late"] == "true"
    assert held.properties["local_reply"] == "accept"
    read(rig.sim, "04C3")
    assert "local_reply" not in event_of(events, "04C3").properties
    rig.sentinel()  # back online: the central automation decides again


def test_an_edited_allow_file_counts_within_5_s_and_a_broken_one_keeps_the_last_good_list(
    rig: Rig,
    make_bridge: Callable[..., Bridge],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.INFO, "bridge.answerer")
    path = allow_file(tmp_path, "04A1")
    rig.start(make_bridge, local_allow_file=str(path), local_when="always")
    read(rig.sim, "04B2")
    assert rig.command() == DENY
    local_result(rig, "04B2", DENY)
    allow_file(tmp_path, "04B2")  # rewritten: now 04B2 may enter
    edited = time.monotonic()
    while True:
        read(rig.sim, "04B2")
        answer = rig.command()
        rig.result()
        if answer == ACCEPT:
            break
        assert time.monotonic() - edited < 5.0, "the edit did not count within 5 s"
    path.write_text("04B2\nnot a tag\n")  # broken, then gone: 04B2 stays allowed
    broken = time.monotonic()
    for _ in range(2):
        time.sleep(max(0.0, broken + 1.2 - time.monotonic()))  # past the next look at the file
        read(rig.sim, "04B2")
        assert rig.command() == ACCEPT
        local_result(rig, "04B2", ACCEPT)
        path.unlink(missing_ok=True)
        broken = time.monotonic()
    warned = [
        r.getMessage() for r in caplog.records if "keeping the last good list" in r.getMessage()
    ]
    assert len(warned) == 2, warned  # one per reason (bad line, then unreadable), said once
    assert all("04B2" not in r.getMessage() for r in caplog.records)


def test_local_answers_are_not_counted_by_the_command_rate_limit(
    rig: Rig, make_bridge: Callable[..., Bridge]
):
    rig.start(make_bridge, local_reply="wink", command_rate=1, command_burst=1, command_gap=0.1)
    for tag in ("04A1", "04B2", "04C3"):
        read(rig.sim, tag)
    for tag in ("04A1", "04B2", "04C3"):
        assert rig.command() == {"Sequence": "0E"}
        local_result(rig, tag, {"Sequence": "0E"})
    rig.accepted("accept", ACCEPT)  # the burst of one is still there
    assert rig.bridge is not None
    snapshot = rig.bridge.snapshot()
    assert snapshot.local_answers == {"sent": 3, "expired": 0, "withdrawn": 0}
    assert snapshot.commands_ok == 1  # commands from MQTT only


def test_local_results_held_through_an_outage_survive_a_restart_of_the_bridge(
    rig: Rig, gate: Gate, gated_bridge: Callable[..., Bridge], tmp_path: Path
):
    spool = str(tmp_path / "spool.db")
    bridge = gated_bridge(local_reply="deny", local_when="offline", spool_path=spool)
    wait_until(lambda: bridge.reader.is_up, "the reader link (no broker: the gate is shut)")
    read(rig.sim, "04A1")
    assert rig.command() == DENY
    bridge.stop(timeout=1.0)  # the broker still away: the result stays in the spool
    assert rig.sim.wait_no_client()
    gate.open()
    rig.start(gated_bridge, local_reply="deny", local_when="offline", spool_path=spool)
    local_result(rig, "04A1", DENY, late=True)
    rig.sentinel()  # once only
