"""Commands published on MQTT reach the simulated reader in canonical form, one result each.

Against a real Mosquitto and the reader simulator (conftest.py): what the README's Commands section
promises on ``{prefix}/{id}/rdr/cmd`` and ``{prefix}/{id}/bridge/result``. "Nothing reached the
reader" is always proved the same way: a valid sentinel command sent afterwards must be the first
thing the reader gets (TCP keeps order, the bridge sends one command at a time).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import operator
import queue
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.app import Bridge
from bridge.config import load_settings
from bridge.simulator import Simulator
from bridge.topics import Topics
from tests.support import Broker, Subscriber, local_settings, wait_until
from tests.test_outage import Gate

pytestmark = pytest.mark.integration

PREFIX = "springcard/springcore"
READY = {"State": "online,ready"}
OFFLINE = {"State": "offline"}
WAIT = 5.0
"""Seconds allowed for anything that normally takes milliseconds."""


# -- helpers -------------------------------------------------------------------------------


def strict_json(payload: bytes) -> Any:
    """Parse as RFC 8259 JSON: ``NaN``/``Infinity`` (which ``json.loads`` allows) fail."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(payload, parse_constant=refuse)
    except ValueError as exc:
        pytest.fail(f"result is not valid JSON ({exc}): {payload!r}")


def same(got: object, expected: object) -> bool:
    """Equal including key order and JSON types (``true`` is not ``1``)."""
    return json.dumps(got) == json.dumps(expected)


def xor(text: str) -> int:
    return functools.reduce(operator.xor, text.encode("ascii"), 0)


def sccmd(line: str, span: str) -> bytes:
    """``line*CC``; the two checksum spans of docs/reader-protocol.md §3: between ``$`` and ``*``
    exclusive, or both included."""
    checksum = xor(line[1:]) if span == "exclusive" else xor(line + "*")
    return f"{line}*{checksum:02X}".encode()


def bad_checksum(line: str) -> bytes:
    valid = {xor(line[1:]), xor(line + "*")}
    return f"{line}*{next(c for c in range(256) if c not in valid):02X}".encode()


def padded(size: int) -> bytes:
    """``{"Sequence":"60"}`` padded with JSON whitespace to exactly ``size`` bytes."""
    head, tail = b'{"Sequence":"60"', b"}"
    return head + b" " * (size - len(head) - len(tail)) + tail


def reply_props(response_topic: str, correlation: bytes | None = None) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ResponseTopic = response_topic
    if correlation is not None:
        props.CorrelationData = correlation
    return props


def refused_connection(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def check_accepted(
    payload: bytes | str,
    result: dict[str, Any],
    got: dict[str, object],
    expected: dict[str, object],
    transaction: object = None,
) -> None:
    """The reader got ``expected`` (same keys, order, types) and ``result`` reports it."""
    assert got == expected, f"{payload!r}: the reader got {got}"
    assert same(got, expected), f"{payload!r}: order or types differ: {got}"
    want: dict[str, object] = {"ok": True}
    if transaction is not None:
        want["transaction"] = transaction
    want["sent"] = expected
    assert result == want, f"{payload!r}: result {result}"
    assert same(result["sent"], got), f"{payload!r}: sent is not what the reader got"
    if transaction is not None:
        assert same(result["transaction"], transaction), f"{payload!r}: result {result}"


def check_refused(
    payload: bytes | str, result: dict[str, Any], words: tuple[str, ...], transaction: object
) -> str:
    """``result`` is a refusal, echoing ``transaction``, whose error mentions ``words``."""
    assert result.get("ok") is False, f"{payload!r}: result {result}"
    expected_keys = {"ok", "error"} | ({"transaction"} if transaction is not None else set())
    assert set(result) == expected_keys, f"{payload!r}: result {result}"
    if transaction is not None:
        assert same(result["transaction"], transaction), f"{payload!r}: result {result}"
    error = result["error"]
    assert isinstance(error, str), result
    assert len(error) > 10, result
    for word in words:
        assert word.lower() in error.lower(), f"{payload!r}: error {error!r} lacks {word!r}"
    return error


class Rig:
    """A bridge between the simulator and the broker, with MQTT clients on its topics.

    ``results`` is subscribed to ``bridge/result`` before the bridge starts and is also the
    client that publishes the commands.
    """

    def __init__(self, subscribe: Callable[..., Any], simulator: Simulator, device_id: str):
        self.topics = Topics(PREFIX, device_id)
        self.sim = simulator
        self.results = subscribe(self.topics.result)
        self.status = subscribe(self.topics.status)
        self.bridge: Bridge | None = None

    def start(self, make_bridge: Callable[..., Bridge], **settings: object) -> Rig:
        """Start the bridge; return once it is subscribed to rdr/cmd and the reader link is up
        (the bridge subscribes in on_connect before it publishes its status)."""
        # These tests publish bursts of commands; the rate limit has its own test.
        self.bridge = make_bridge(**{"command_rate": 0, **settings})
        assert self.bridge.topics == self.topics
        self.wait_status(READY)
        return self

    def wait_status(self, state: dict[str, str]) -> None:
        self.status.wait_for(lambda m: m.json() == state, timeout=15)

    def send(
        self, payload: bytes | str, *, retain: bool = False, properties: Properties | None = None
    ) -> None:
        self.results.publish(self.topics.command, payload, retain=retain, properties=properties)

    def result(self, timeout: float = WAIT) -> dict[str, Any]:
        message = self.results.next(timeout, topic=self.topics.result)
        assert message.qos == 1, "results are published with QoS 1"
        assert not message.retain
        value = strict_json(message.payload)
        assert isinstance(value, dict), message.payload
        return value

    def command(self, timeout: float = WAIT, sim: Simulator | None = None) -> dict[str, object]:
        try:
            return (sim or self.sim).commands.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"the reader received no command in {timeout} s")

    def send_all(self, payloads: list[bytes]) -> None:
        """Publish back to back (QoS 1, in order), then wait until the broker has them all."""
        infos = [self.results.client.publish(self.topics.command, p, qos=1) for p in payloads]
        for info in infos:
            info.wait_for_publish(WAIT)

    def accepted(
        self, payload: bytes | str, expected: dict[str, object], transaction: object = None
    ) -> None:
        """Send ``payload``; the reader gets ``expected`` exactly and one ok result says so."""
        self.send(payload)
        check_accepted(payload, self.result(), self.command(), expected, transaction)

    def refused(
        self, payload: bytes | str, words: tuple[str, ...] = (), transaction: object = None
    ) -> str:
        """Send ``payload``; one ok=false result whose error mentions each of ``words``."""
        self.send(payload)
        return check_refused(payload, self.result(), words, transaction)

    def sentinel(self, tag: str = "sentinel", sim: Simulator | None = None) -> None:
        """A wink with a transaction: its result is the next result, and it is the next thing
        the reader receives - so nothing else was sent to the reader before it."""
        self.send(json.dumps({"transaction": tag, "Sequence": "wink"}))
        first = self.command(sim=sim)
        assert first == {"Sequence": "0E"}, f"the reader got {first} before the sentinel wink"
        assert self.result() == {"ok": True, "transaction": tag, "sent": {"Sequence": "0E"}}


@pytest.fixture
def rig(subscribe: Callable[..., Any], simulator: Simulator, device_id: str) -> Rig:
    return Rig(subscribe, simulator, device_id)


def free_simulator_port(simulator: Simulator) -> int:
    """Stop ``simulator`` so that its port refuses connections; return the port.

    Works around a simulator defect: ``Simulator.stop()`` closes its listener
    while the accept thread is blocked in ``accept()``; on Linux that does not wake it, so the
    socket keeps listening and takes one more connection, registered as the client. Either a
    bridge reconnecting during ``stop()`` took that slot, or our own connection takes it here;
    then whoever holds it is dropped.
    """
    port: int = simulator.port
    simulator.stop()
    try:
        probe = socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError:
        pass  # nothing listens any more
    else:
        with probe:
            assert simulator.wait_client(WAIT), "the leftover accept() took no connection"
    simulator.drop_client()
    assert refused_connection(port), f"the stopped simulator still accepts on port {port}"
    return port


# -- §3.1 accepted forms -------------------------------------------------------------------

SEQ_60: dict[str, object] = {"Sequence": "60"}
LEDS_BUZZ: dict[str, object] = {"Leds": "92929292", "Buzzer": "0064"}

ACCEPTED: list[tuple[bytes, dict[str, object], object]] = [
    # payload, what the reader must get, the transaction the result must echo
    # bare words, any case; a trailing newline as `echo accept | mosquitto_pub -s` sends
    (b"accept", SEQ_60, None),
    (b"wink", {"Sequence": "0E"}, None),
    (b"deny", {"Sequence": "61"}, None),
    (b"ACCEPT", SEQ_60, None),
    (b"Wink", {"Sequence": "0E"}, None),
    (b"accept\n", SEQ_60, None),
    # JSON: names case-insensitive, integer decimal, string hex, words as values
    (b'{"Sequence":"60"}', SEQ_60, None),
    (b'{"sequence":96}', SEQ_60, None),
    (b'{"SEQUENCE":"0e"}', {"Sequence": "0E"}, None),
    (b'{"Sequence":0}', {"Sequence": "00"}, None),
    (b'{"Sequence":255}', {"Sequence": "FF"}, None),
    (b'{"Sequence":"ff"}', {"Sequence": "FF"}, None),
    (b'{"Sequence":"deny"}', {"Sequence": "61"}, None),
    (b'{"Sequence":"WINK"}', {"Sequence": "0E"}, None),
    (b'{ "Sequence" : "60" }\r\n', SEQ_60, None),
    (b'{"Leds":"92929292","Buzzer":100}', LEDS_BUZZ, None),
    (b'{"buzzer":"64","LEDS":"92929292"}', LEDS_BUZZ, None),
    (b'{"Leds":"a1b2c3d4"}', {"Leds": "A1B2C3D4"}, None),
    (b'{"Buzzer":65535}', {"Buzzer": "FFFF"}, None),
    (b'{"Buzzer":0}', {"Buzzer": "0000"}, None),
    (b'{"RgbColor":"ff8000","RgbMode":1}', {"RgbColor": "FF8000", "RgbMode": "01"}, None),
    (b'{"rgbcolor":16744448}', {"RgbColor": "FF8000"}, None),
    (b'{"Relay":true}', {"Relay": True}, None),
    (b'{"Relay":false}', {"Relay": False}, None),
    (b'{"Relay":1}', {"Relay": 1}, None),
    (b'{"Relay":"0a"}', {"Relay": "0A"}, None),
    (b'{"Relay":true,"Sequence":"accept"}', {"Sequence": "60", "Relay": True}, None),
    (b'{"Relays":[true,false,"1",0]}', {"Relays": [True, False, "1", 0]}, None),
    (padded(1024), SEQ_60, None),  # exactly 1 KiB is not over the limit
    # $SCCMD text, with or without either checksum
    (b"$SCCMD;SEQ=60", SEQ_60, None),
    (b"$SCCMD;SEQ=0E", {"Sequence": "0E"}, None),
    (b"$SCCMD;LEDS=92929292;BUZZ=0064", LEDS_BUZZ, None),
    (b"$SCCMD;BUZZ=0064;LEDS=92929292", LEDS_BUZZ, None),
    (sccmd("$SCCMD;SEQ=60", "exclusive"), SEQ_60, None),
    (sccmd("$SCCMD;SEQ=60", "inclusive"), SEQ_60, None),
    (sccmd("$SCCMD;LEDS=92929292;BUZZ=0064", "exclusive"), LEDS_BUZZ, None),
    (sccmd("$SCCMD;LEDS=92929292;BUZZ=0064", "inclusive"), LEDS_BUZZ, None),
    # a transaction, string or number, is echoed and never forwarded
    (b'{"transaction":"door-7","Sequence":"accept"}', SEQ_60, "door-7"),
    (b'{"Leds":"01010101","transaction":42}', {"Leds": "01010101"}, 42),
    (b'{"Transaction":0,"Sequence":"deny"}', {"Sequence": "61"}, 0),
    (b'{"transaction":-1.5,"Relay":false}', {"Relay": False}, -1.5),
]


def test_every_accepted_form_reaches_the_reader_canonically_with_one_ok_result(
    rig: Rig, make_bridge: Callable[..., Bridge], subscribe: Callable[..., Any]
) -> None:
    # Sent as one burst: at the default 50 ms gap the last ones would wait past the default
    # 2 s deadline and be dropped (correctly); this test is about forms, not pacing.
    rig.start(make_bridge, command_gap=0.01, command_timeout=10)
    rig.send_all([payload for payload, _, _ in ACCEPTED])
    results = [rig.result() for _ in ACCEPTED]
    commands = [rig.command() for _ in ACCEPTED]
    for (payload, expected, transaction), result, got in zip(
        ACCEPTED, results, commands, strict=True
    ):
        check_accepted(payload, result, got, expected, transaction)
    # One result each: the next result is the sentinel's, and so is the next command.
    # Results are not retained: a retained one would reach a new subscriber first.
    late = subscribe(rig.topics.result)
    rig.sentinel()
    first = late.next(WAIT, topic=rig.topics.result)
    assert strict_json(first.payload) == {
        "ok": True,
        "transaction": "sentinel",
        "sent": {"Sequence": "0E"},
    }
    assert rig.sim.commands.empty()


# -- §3.2 refused forms ------------------------------------------------------------------------

REFUSED: list[tuple[bytes, tuple[str, ...], object]] = [
    # payload, words the error must contain, the transaction the result must echo
    (b'{"Sequence":', ("JSON",), None),
    (b'{"Sequence":"60",}', ("JSON",), None),
    (b"{'Sequence':'60'}", ("JSON",), None),
    (b'{"Sequence":NaN}', ("NaN",), None),
    (b'["accept"]', ("object",), None),
    (b'"accept"', ("object",), None),
    (b"42", ("object",), None),
    (b'{"Colour":"red"}', ("Colour",), None),
    (b'{"transaction":"t-unknown","Colour":"red"}', ("Colour",), "t-unknown"),
    (b'{"Sequence":"60","Colour":"red"}', ("Colour",), None),
    (b"{}", (), None),
    (b'{"transaction":"only"}', (), "only"),
    (b'{"Sequence":256}', ("Sequence", "256"), None),
    (b'{"Sequence":-1}', ("Sequence",), None),
    (b'{"Sequence":"100"}', ("Sequence",), None),
    (b'{"Sequence":""}', ("Sequence",), None),
    (b'{"Sequence":96.0}', ("Sequence",), None),
    (b'{"Sequence":true}', ("Sequence",), None),
    (b'{"Sequence":"open"}', ("Sequence",), None),
    (b'{"Buzzer":65536}', ("Buzzer", "65536"), None),
    (b'{"transaction":3,"Buzzer":-1}', ("Buzzer",), 3),
    (b'{"Leds":"9292929"}', ("Leds",), None),
    (b'{"Leds":"929292929"}', ("Leds",), None),
    (b'{"Leds":92929292}', ("Leds",), None),
    (b'{"Leds":"9292929G"}', ("Leds",), None),
    (b'{"RgbColor":"1000000"}', ("RgbColor",), None),
    (b'{"RgbMode":256}', ("RgbMode",), None),
    (b'{"Relay":"on"}', ("Relay",), None),
    (b'{"Relay":70000}', ("Relay",), None),
    (b'{"Relays":[]}', ("Relays",), None),
    (b'{"Relays":true}', ("Relays",), None),
    (b'{"Sequence":"60","Leds":"92929292"}', ("Sequence", "Leds"), None),
    (b'{"transaction":7,"Sequence":"60","Leds":"92929292"}', ("Sequence", "Leds"), 7),
    (b'{"Sequence":"accept","Buzzer":100}', ("Sequence", "Buzzer"), None),
    (b'{"RgbColor":"FF0000","Sequence":"60"}', ("Sequence", "RgbColor"), None),
    (b'{"Sequence":"60","sequence":"61"}', ("Sequence",), None),
    (b'{"Sequence":"60"}{"Sequence":"61"}', ("one",), None),
    (b'{"Sequence":"60"}\r\n{"Sequence":"61"}', ("one",), None),
    (b'{"Sequence":"60"} 1', ("one",), None),
    (padded(1025), ("1024",), None),
    (b"accept" + b" " * 1100, ("1024",), None),
    (b'{"Sequence":"\xff"}', ("UTF-8",), None),
    (b"acc\xe9pt", ("UTF-8",), None),
    (b"\xef\xbb", ("UTF-8",), None),
    (b"", ("empty",), None),
    (b"   \r\n", ("empty",), None),
    (b"open", ("open",), None),
    (b"granted", ("granted",), None),
    (b"accept deny", (), None),
    (b"wink!", (), None),
    (b"$SCCMD;SEQ=60;LEDS=92929292", ("Sequence", "Leds"), None),
    (b"$SCCMD;FOO=1", ("FOO",), None),
    (b"$SCCMD;SEQ=100", ("Sequence",), None),
    (b"$SCCMD", (), None),
    (b"$SCRDR;SEQ=60", (), None),
    (bad_checksum("$SCCMD;SEQ=60"), ("checksum",), None),
    (bad_checksum("$SCCMD;LEDS=92929292;BUZZ=0064"), ("checksum",), None),
    (b"$SCCMD;SEQ=60*6", ("checksum",), None),
    (b'{"transaction":{"id":1},"Sequence":"60"}', ("transaction",), None),
    (b'{"transaction":true,"Sequence":"60"}', ("transaction",), None),
]


def test_refused_forms_get_one_error_result_each_and_never_reach_the_reader(
    rig: Rig, make_bridge: Callable[..., Bridge]
) -> None:
    rig.start(make_bridge)
    rig.send_all([payload for payload, _, _ in REFUSED])
    results = [rig.result() for _ in REFUSED]
    for (payload, words, transaction), result in zip(REFUSED, results, strict=True):
        check_refused(payload, result, words, transaction)
    rig.sentinel()  # nothing reached the reader, and no result came beyond one each
    assert rig.sim.commands.empty()


# -- one result per message --------------------------------------------------------------------

MIXED: list[tuple[bytes, dict[str, object] | None, object]] = [
    # payload, what the reader gets (None: refused), transaction
    (b'{"transaction":1,"Sequence":"accept"}', SEQ_60, 1),
    (b'{"transaction":2,"Colour":1}', None, 2),
    (b"wink", {"Sequence": "0E"}, None),
    (b'{"transaction":"4","Leds":"11111111"}', {"Leds": "11111111"}, "4"),
    (b"nope", None, None),
    (b"$SCCMD;SEQ=61", {"Sequence": "61"}, None),
    (b'{"transaction":7}', None, 7),
    (b'{"transaction":8,"Buzzer":100}', {"Buzzer": "0064"}, 8),
    (b"\xff\xfe", None, None),
    (b'{"transaction":10,"Sequence":"60","Leds":"92929292"}', None, 10),
    (b'{"transaction":11,"Relay":true}', {"Relay": True}, 11),
    (bad_checksum("$SCCMD;SEQ=60"), None, None),
    (b'{"transaction":13,"Sequence":"deny"}', {"Sequence": "61"}, 13),
    (b"[1,2]", None, None),
]


def test_n_mixed_messages_get_exactly_n_results_in_order(
    rig: Rig, make_bridge: Callable[..., Bridge]
) -> None:
    rig.start(make_bridge)
    for payload, _, _ in MIXED:  # one at a time: each is acknowledged by the broker
        rig.send(payload)
    results = [rig.result() for _ in MIXED]
    for (payload, forwarded, transaction), result in zip(MIXED, results, strict=True):
        if forwarded is None:
            check_refused(payload, result, (), transaction)
        else:
            assert result["ok"] is True, (payload, result)
            assert same(result["sent"], forwarded), (payload, result)
            assert result.get("transaction") == transaction, (payload, result)
            assert ("transaction" in result) == (transaction is not None), (payload, result)
    for payload, forwarded, _ in MIXED:
        if forwarded is not None:
            got = rig.command()
            assert same(got, forwarded), (payload, got)
    rig.sentinel()  # the next result is the sentinel's: nothing extra after the Nth
    assert rig.sim.commands.empty()


# -- §3.3 MQTT v5 response topic and correlation data ---------------------------------------


def test_result_also_goes_to_the_v5_response_topic_with_the_correlation_data(
    rig: Rig, make_bridge: Callable[..., Bridge], subscribe: Callable[..., Any], device_id: str
) -> None:
    reply_topic = f"test/replies/{device_id}"
    replies = subscribe(reply_topic)
    rig.start(make_bridge)

    rig.send(b"accept", properties=reply_props(reply_topic, b"\x00corr-1\xff"))
    expected = {"ok": True, "sent": SEQ_60}
    assert rig.result() == expected
    reply = replies.next(WAIT, topic=reply_topic)
    assert strict_json(reply.payload) == expected
    assert reply.correlation == b"\x00corr-1\xff"
    assert reply.qos == 1
    assert rig.command() == SEQ_60

    rig.send(b'{"transaction":"t9","Colour":"red"}', properties=reply_props(reply_topic, b"c-2"))
    refusal = rig.result()
    check_refused("Colour", refusal, ("Colour",), "t9")
    reply = replies.next(WAIT, topic=reply_topic)
    assert strict_json(reply.payload) == refusal
    assert reply.correlation == b"c-2"

    # a response topic without correlation data: the reply comes without it
    rig.send(b"deny", properties=reply_props(reply_topic))
    assert rig.result() == {"ok": True, "sent": {"Sequence": "61"}}
    reply = replies.next(WAIT, topic=reply_topic)
    assert strict_json(reply.payload) == {"ok": True, "sent": {"Sequence": "61"}}
    assert reply.correlation is None
    assert rig.command() == {"Sequence": "61"}

    # no response topic, no reply: the next reply is for the next command that asks for one
    rig.send(b"wink")
    assert rig.result() == {"ok": True, "sent": {"Sequence": "0E"}}
    rig.send(b"accept", properties=reply_props(reply_topic, b"last"))
    assert rig.result() == expected
    reply = replies.next(WAIT, topic=reply_topic)
    assert reply.correlation == b"last"
    assert strict_json(reply.payload) == expected


def test_wildcard_response_topic_neither_breaks_nor_stalls_the_result_path(
    rig: Rig, make_bridge: Callable[..., Bridge], caplog: pytest.LogCaptureFixture
) -> None:
    """A response topic with a wildcard is invalid (MQTT v5 3.3.2.3.5) but Mosquitto passes
    it on. It is client input: the command is still handled, its result still goes to
    bridge/result, and publishing goes on at once, without an error in the bridge's log."""
    rig.start(make_bridge)
    rig.send(b"accept", properties=reply_props("test/replies/+/bad", b"x"))
    rig.send(b"deny")
    assert rig.result() == {"ok": True, "sent": SEQ_60}
    first_at = time.monotonic()
    assert rig.result() == {"ok": True, "sent": {"Sequence": "61"}}
    delay = time.monotonic() - first_at
    assert rig.command() == SEQ_60
    assert rig.command() == {"Sequence": "61"}
    errors = [
        f"{r.name}: {r.getMessage()} ({r.exc_info[1]!r})" if r.exc_info else r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR
    ]
    if delay >= 0.4:
        errors.append(f"publishing stalled: the next result came {delay:.2f} s after the first")
    assert not errors


# -- §3.2 never late ---------------------------------------------------------------------------


def test_command_is_dropped_while_the_reader_is_down_and_never_sent_late(
    rig: Rig, make_bridge: Callable[..., Bridge]
) -> None:
    rig.start(make_bridge, command_timeout=0.5)
    assert rig.bridge is not None
    port = free_simulator_port(rig.sim)
    # The link is down for good once an offline status is seen while the bridge says so
    # (the link may have bounced through the simulator's leftover listener first).
    rig.wait_status(OFFLINE)
    while rig.bridge.reader.is_up:
        rig.wait_status(OFFLINE)

    sent_at = time.monotonic()
    rig.send(b'{"transaction":"door","Sequence":"accept"}')
    result = rig.result(timeout=3)
    elapsed = time.monotonic() - sent_at
    assert result["ok"] is False, result
    assert result["transaction"] == "door"
    error = result["error"].lower()
    assert "down" in error, error
    assert "dropped" in error, error
    assert elapsed < 1.5, f"the refusal took {elapsed:.2f} s with command_timeout=0.5"

    with Simulator(port=port) as reader:
        assert reader.wait_client(timeout=15), "the bridge did not reconnect"
        rig.wait_status(READY)
        rig.sentinel(sim=reader)  # the expired accept is not what the reader gets first
        assert reader.commands.empty()


def test_command_waits_out_a_short_reader_outage_within_its_deadline(
    rig: Rig, make_bridge: Callable[..., Bridge]
) -> None:
    """The counterpart of never late: a command that can still reach the reader in time is
    sent (the bridge reconnects within a second; the deadline is 5 s)."""
    rig.start(make_bridge, command_timeout=5)
    rig.sim.drop_client()
    rig.wait_status(OFFLINE)
    rig.send(b'{"transaction":"soon","Sequence":"accept"}')
    assert rig.sim.wait_client(WAIT), "the bridge did not reconnect"
    check_accepted("accept during outage", rig.result(), rig.command(), SEQ_60, "soon")
    rig.sentinel()


# -- retained commands -----------------------------------------------------------------------


def test_retained_commands_with_mqtt_v5(
    rig: Rig, make_bridge: Callable[..., Bridge], caplog: pytest.LogCaptureFixture
) -> None:
    rig.send(b"accept", retain=True)
    try:
        # subscribed with retainHandling 2: the retained accept is not delivered at all
        rig.start(make_bridge)
        rig.sentinel("after-start")  # no result before the sentinel's, nothing at the reader

        # A retained publish while the bridge is subscribed reaches it live; subscribed with
        # Retain As Published, it keeps its flag (MQTT v5 3.3.1.3) and is refused - twice
        # for the same command published twice, with one log line.
        for _ in range(2):
            rig.send(b'{"transaction":"live","Sequence":"deny"}', retain=True)
            check_refused(b"deny (retained)", rig.result(), ("retain",), "live")
        rig.sentinel("after-live")  # neither deny reached the reader
    finally:
        rig.send(b"", retain=True)
    # Clearing it is an empty retained publish, which reaches the bridge live too.
    check_refused(b"", rig.result(), ("empty",), None)
    rig.sentinel()
    assert rig.sim.commands.empty()
    logged = [r for r in caplog.records if "retained command refused" in r.getMessage()]
    assert len(logged) == 1, [r.getMessage() for r in logged]
    assert logged[0].levelno == logging.WARNING


def test_retained_command_is_refused_then_commands_work_with_mqtt_311(
    rig: Rig, make_bridge: Callable[..., Bridge]
) -> None:
    rig.send(b"accept", retain=True)
    try:
        rig.start(make_bridge, mqtt_protocol="3.1.1")  # 3.1.1 delivers it with retain=1
        assert rig.bridge is not None
        assert not rig.bridge.mqtt.is_v5
        check_refused(b"accept (retained)", rig.result(), ("retain",), None)
        rig.sentinel("after-start")  # the retained accept never reached the reader
    finally:
        rig.send(b"", retain=True)
    check_refused(b"", rig.result(), ("empty",), None)

    # end to end with 3.1.1
    rig.accepted(b'{"transaction":"v311","Sequence":"accept"}', SEQ_60, "v311")
    rig.accepted(b"$SCCMD;LEDS=92929292;BUZZ=0064", LEDS_BUZZ)
    rig.accepted(b"wink", {"Sequence": "0E"})
    rig.refused(b'{"transaction":9,"Colour":"red"}', ("Colour",), 9)
    rig.refused(b"open", ("open",))
    rig.sentinel()


@pytest.mark.slow
def test_retained_command_replayed_at_each_reconnection_is_refused_and_logged_once(
    broker: Broker,
    simulator: Simulator,
    device_id: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """MQTT 3.1.1 replays a retained message at every subscription: after each reconnection
    the bridge refuses it again, with a result each time but one log line in all."""
    topics = Topics(PREFIX, device_id)
    watcher = Subscriber(broker.port, topics.result)
    gate = Gate(broker)  # cut, the bridge's connection ends; the broker and watcher stay
    gate.open()
    bridge: Bridge | None = None
    try:
        watcher.publish(topics.command, b'{"transaction":"stale","Sequence":"accept"}', retain=True)
        settings = load_settings(
            env_file=None,
            **local_settings(
                simulator.port,
                gate.port,
                device_id,
                mqtt_protocol="3.1.1",
                spool_path=str(tmp_path / "spool.db"),
            ),
        )
        bridge = Bridge(settings)
        bridge.start()
        for round_ in range(3):
            result = strict_json(watcher.next(20, topic=topics.result).payload)
            assert isinstance(result, dict)
            check_refused(b"accept (retained)", result, ("retain",), "stale")
            gate.close()
            wait_until(lambda: not bridge.mqtt.is_connected, f"disconnection {round_}")
            gate.open()
        assert simulator.commands.empty()
    finally:
        if bridge is not None:
            bridge.stop(timeout=1.0)
        watcher.publish(topics.command, b"", retain=True)
        watcher.close()
        gate.close()
    logged = [r for r in caplog.records if "retained command refused" in r.getMessage()]
    assert len(logged) == 1, [r.getMessage() for r in logged]


def test_retained_command_refusal_echoes_its_transaction_with_mqtt_311(
    rig: Rig, make_bridge: Callable[..., Bridge]
) -> None:
    """README, Commands: the result carries ``transaction`` whenever the command carried one."""
    rig.send(b'{"transaction":"r-1","Sequence":"accept"}', retain=True)
    try:
        rig.start(make_bridge, mqtt_protocol="3.1.1")
        result = rig.result()
        assert result["ok"] is False, result
        assert "retain" in result["error"].lower(), result
        assert result.get("transaction") == "r-1", result
        rig.sentinel()
    finally:
        rig.send(b"", retain=True)


# -- configuration -----------------------------------------------------------------------------


def test_command_fields_allow_list_refuses_other_fields_naming_them(
    rig: Rig, make_bridge: Callable[..., Bridge]
) -> None:
    rig.start(make_bridge, command_fields="Sequence,Leds")
    rig.refused(b'{"Relay":true}', ("Relay",))
    rig.refused(b'{"transaction":"t1","sequence":"60","relay":1}', ("Relay",), "t1")
    rig.refused(b'{"Buzzer":100}', ("Buzzer",))
    rig.refused(b"$SCCMD;LEDS=92929292;BUZZ=0064", ("Buzzer",))
    rig.refused(b'{"Relays":[true]}', ("Relays",))
    rig.accepted(b"accept", SEQ_60)  # the first command the reader ever gets
    rig.accepted(b'{"Leds":"01010101"}', {"Leds": "01010101"})
    rig.accepted(b"$SCCMD;SEQ=61", {"Sequence": "61"})
    rig.sentinel()


def test_consecutive_commands_reach_the_reader_at_least_command_gap_apart(
    rig: Rig, make_bridge: Callable[..., Bridge]
) -> None:
    gap = 0.2
    rig.start(make_bridge, command_gap=gap)
    arrivals: list[tuple[float, dict[str, object]]] = []

    def drain() -> None:
        while len(arrivals) < 3:
            try:
                command = rig.sim.commands.get(timeout=WAIT)
            except queue.Empty:
                return
            arrivals.append((time.monotonic(), command))

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    rig.send_all([b"accept", b"deny", b"wink"])
    results = [rig.result() for _ in range(3)]
    drainer.join(WAIT)
    assert [r["ok"] for r in results] == [True, True, True], results
    assert [c for _, c in arrivals] == [SEQ_60, {"Sequence": "61"}, {"Sequence": "0E"}]
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(arrivals)]
    # 10 ms of slack for the draining thread waking up late on the first of a pair
    assert all(g >= gap - 0.01 for g in gaps), gaps
    assert all(g < gap + 0.5 for g in gaps), gaps


def test_crlf_command_delimiter_is_still_decoded_by_the_reader(
    rig: Rig, make_bridge: Callable[..., Bridge]
) -> None:
    rig.start(make_bridge, command_delimiter="crlf")
    rig.accepted(b"accept", SEQ_60)
    rig.accepted(b'{"transaction":5,"Leds":"92929292","Buzzer":100}', LEDS_BUZZ, 5)
    rig.sentinel()


@pytest.mark.parametrize(("delimiter", "separator"), [("none", b""), ("crlf", b"\r\n")])
def test_wire_bytes_are_compact_objects_with_the_configured_delimiter(
    rig: Rig, make_bridge: Callable[..., Bridge], delimiter: str, separator: bytes
) -> None:
    rig.start(make_bridge, command_delimiter=delimiter)
    # Swap the simulator for a plain socket on its port. The bridge's reconnection takes
    # the stopped simulator's leftover accept() (see free_simulator_port), so the port is
    # free once stop() returns; dropping that connection sends the bridge to our socket.
    port = rig.sim.port
    rig.sim.stop()
    with socket.create_server(("127.0.0.1", port)) as listener:
        rig.sim.drop_client()
        listener.settimeout(15)
        conn, _ = listener.accept()
        with conn:
            rig.send_all([b"accept", b'{ "Buzzer" : 100 , "leds" : "92929292" }'])
            assert rig.result() == {"ok": True, "sent": SEQ_60}
            assert rig.result() == {"ok": True, "sent": LEDS_BUZZ}
            expected = b'{"Sequence":"60"}' + separator
            expected += b'{"Leds":"92929292","Buzzer":"0064"}' + separator
            data = b""
            conn.settimeout(WAIT)
            while len(data) < len(expected):
                chunk = conn.recv(4096)
                assert chunk, f"the bridge closed the link after {data!r}"
                data += chunk
            conn.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                data += conn.recv(4096)  # both results are out: everything was written
            assert data == expected


# -- results are JSON ----------------------------------------------------------------------------


def test_result_is_valid_json_for_a_numeric_transaction_that_overflows(
    rig: Rig, make_bridge: Callable[..., Bridge]
) -> None:
    """``1e400`` is valid JSON that Python reads as infinity. The result must still be JSON
    (RFC 8259 has no ``Infinity``), whether the command is refused or echoed."""
    rig.start(make_bridge)
    rig.send(b'{"transaction":1e400,"Sequence":"accept"}')
    rig.result()  # strict_json fails the test on Infinity


def test_rate_limit_refuses_commands_beyond_the_burst_with_a_clear_result(
    rig: Rig, make_bridge: Callable[..., Bridge]
) -> None:
    rig.start(make_bridge, command_rate=1, command_burst=3, command_gap=0)
    for number in range(5):
        rig.results.publish(rig.topics.command, f'{{"Sequence":"wink","transaction":{number}}}')
    results = [rig.results.next(topic=rig.topics.result).json() for _ in range(5)]
    assert [r["ok"] for r in results] == [True, True, True, False, False], results
    assert all("rate limit" in r["error"] for r in results[3:]), results
    assert [r["transaction"] for r in results] == list(range(5))
    received = [rig.sim.commands.get(timeout=5) for _ in range(3)]
    assert received == [{"Sequence": "0E"}] * 3
    assert rig.sim.commands.empty()
