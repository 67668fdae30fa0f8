"""Events from the simulated reader reach a real Mosquitto exactly as sent."""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from bridge import __version__
from bridge.app import Bridge
from bridge.simulator import SEPARATORS, Simulator
from tests.support import Broker, Subscriber, wait_until

if TYPE_CHECKING:  # conftest is pytest's to import; only its types are needed here
    from tests.support import Received

pytestmark = pytest.mark.integration

MakeBridge = Callable[..., Bridge]
Subscribe = Callable[..., "Subscriber"]
StartOnline = Callable[..., tuple[Bridge, "Subscriber"]]

ONLINE = {"State": "online,ready"}
OFFLINE = {"State": "offline"}
ISO_MS_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


def test_event_published_compact_unretained_with_metadata(
    make_bridge: MakeBridge, simulator: Simulator, subscribe: Subscribe, device_id: str
) -> None:
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


def until(sub: Subscriber, topic: str) -> list[Received]:
    """Every message up to and including the next one on ``topic``."""
    seen = [sub.next()]
    while seen[-1].topic != topic:
        seen.append(sub.next())
    return seen


@pytest.mark.parametrize(
    ("settings", "live"),
    [
        ({}, True),  # Home Assistant discovery is on by default, and reads bridge/live
        ({"ha_discovery": False}, False),
        ({"ha_discovery": False, "live_topic": True}, True),
    ],
)
def test_timely_events_also_go_to_bridge_live_while_it_is_on(
    start_online: StartOnline, simulator: Simulator, settings: dict[str, object], live: bool
) -> None:
    bridge, sub = start_online(**settings)
    first, second = tagged(simulator, 1), tagged(simulator, 2)
    simulator.emit(first)
    seen = until(sub, bridge.topics.event)
    simulator.emit(second)
    # One connection keeps the order: first's live copy, if any, comes before second's event.
    seen += until(sub, bridge.topics.event)
    on_live = [m for m in seen if m.topic == bridge.topics.live]
    if not live:
        assert on_live == []
        return
    assert [m.payload for m in on_live[:1]] == [compact(first)]
    event = next(m for m in seen if m.topic == bridge.topics.event)
    assert on_live[0].properties == event.properties  # the same seq and received_at
    assert on_live[0].qos == 1
    assert not on_live[0].retain


def test_an_event_older_than_the_live_age_limit_stays_off_bridge_live(
    start_online: StartOnline, simulator: Simulator
) -> None:
    bridge, sub = start_online(live_max_age=0.000001)  # no event is ever that fresh
    simulator.emit(tagged(simulator, 1))
    seen = until(sub, bridge.topics.event)
    simulator.emit(tagged(simulator, 2))
    seen += until(sub, bridge.topics.event)
    assert [m for m in seen if m.topic == bridge.topics.live] == []


def test_status_online_comes_before_the_first_event_of_a_new_reader_link(
    start_online: StartOnline, simulator: Simulator
) -> None:
    """Issue 10: an event read in the first 0.5 s of a link overtook the status, and an
    automation that ignores transitions from "unavailable" missed that card."""
    bridge, sub = start_online()
    for round_ in range(5):
        simulator.drop_client()
        sub.wait_for(lambda m: m.topic == bridge.topics.status and m.json() == OFFLINE)
        assert simulator.wait_client()
        event = tagged(simulator, round_)
        simulator.emit(event)  # at once: inside the link's first half second
        seen = until(sub, bridge.topics.event)
        statuses = [m.json() for m in seen if m.topic == bridge.topics.status]
        assert statuses == [ONLINE], (round_, statuses)
        assert seen[-1].payload == compact(event)


BURST = 30_000


@pytest.mark.slow
def test_a_burst_faster_than_the_broker_loses_nothing_while_it_is_connected(
    start_online: StartOnline, simulator: Simulator, subscribe: Subscribe
) -> None:
    """Issue 10: with the broker up, a 30,000-event burst at full speed lost 25,463 events
    to a count bound; the spool absorbs it now and drains it at the broker's pace."""
    bridge, _ = start_online()
    sub = subscribe(bridge.topics.event)
    blob = b"".join(
        compact({"Interface": "13.56", "TagId": f"04{n:012X}", "Uptime": "1:1.000"}) + b"\r\n"
        for n in range(BURST)
    )
    simulator.send_raw(blob)  # one write: as fast as a socket goes
    received = sub.take(BURST, bridge.topics.event, timeout=180)
    tags = [json.loads(m.payload)["TagId"] for m in received]
    assert tags == [f"04{n:012X}" for n in range(BURST)]  # every one, once, in order
    seqs = [int(m.properties["seq"]) for m in received]
    assert seqs == list(range(seqs[0], seqs[0] + BURST))
    assert not any("late" in m.properties for m in received)  # the broker never left
    # Those that queued behind the burst for over a second say how long they waited.
    assert all(int(m.properties.get("age_ms", 1000)) >= 1000 for m in received)
    assert bridge.mqtt.dropped == {"size": 0, "age": 0}


# -- helpers ---------------------------------------------------------------------------------


def compact(event: dict[str, object]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def tagged(simulator: Simulator, number: int, profile: str = "nfc") -> dict[str, object]:
    """A realistic event with a recognisable TagId."""
    tag = f"04{number:012X}" if profile == "nfc" else f"E280{number:020X}"
    return simulator.factory.make(profile, tag_id=tag)


@pytest.fixture
def start_online(
    make_bridge: MakeBridge, simulator: Simulator, subscribe: Subscribe, device_id: str
) -> StartOnline:
    """Start a bridge, wait until its reader link and broker session are up; give a subscriber
    on its topics that has seen ``online,ready``."""

    def start(**settings: object) -> tuple[Bridge, Subscriber]:
        base = f"springcard/springcore/{device_id}"
        sub = subscribe(f"{base}/#")
        bridge = make_bridge(**settings)
        topics = bridge.topics  # the README's topic layout, checked once for the names
        assert (topics.event, topics.status, topics.meta) == (
            f"{base}/rdr/evt",
            f"{base}/status",
            f"{base}/meta",
        )
        assert simulator.wait_client()
        sub.wait_for(lambda m: m.topic == bridge.topics.status and m.json() == ONLINE)
        return bridge, sub

    return start


def events(sub: Subscriber, bridge: Bridge, count: int) -> list[Received]:
    return sub.take(count, topic=bridge.topics.event)


def retained(subscribe: Subscribe, bridge: Bridge) -> dict[str, Received]:
    """What a client subscribing now gets from the broker's retained store, by topic.

    Mosquitto sends retained messages right after SUBACK, so everything before a marker
    published afterwards by the same client is the retained set: no waiting on silence.
    """
    fresh = subscribe(f"{bridge.topics.base}/#")
    marker = f"{bridge.topics.base}/test/marker"
    fresh.publish(marker, b"marker")
    found: dict[str, Received] = {}
    while (message := fresh.next()).topic != marker:
        found[message.topic] = message
    return found


# -- framing ---------------------------------------------------------------------------------


def test_every_separator_gives_events_in_order_with_metadata(
    start_online: StartOnline, simulator: Simulator, subscribe: Subscribe
) -> None:
    bridge, sub = start_online()
    sent: list[dict[str, object]] = []
    for name, separator in SEPARATORS.items():  # crlf, lf, nul, space, none
        simulator.separator = separator
        for _ in range(3):
            sent.append(tagged(simulator, len(sent)))
            simulator.emit(sent[-1])
        # Several spaces, several NULs, CR LF runs: any amount of separator is one gap.
        simulator.send_raw(separator * 3 if name != "none" else b"")
    simulator.send_raw(b"\r\n \x00\n\n  \x00\x00\r\n")
    last = tagged(simulator, len(sent))
    simulator.send_raw(compact(last))  # nothing after it: the closing brace ends it
    sent.append(last)

    received = events(sub, bridge, len(sent))
    assert [m.payload for m in received] == [compact(event) for event in sent]
    assert not any(m.retain for m in received)
    assert {m.qos for m in received} == {1}
    seqs = [int(m.properties["seq"]) for m in received]
    assert all(a < b for a, b in itertools.pairwise(seqs)), seqs
    now = datetime.now(UTC)
    for m in received:
        stamp = m.properties["received_at"]
        assert ISO_MS_UTC.fullmatch(stamp), stamp
        moment = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert now - timedelta(seconds=30) < moment <= now + timedelta(seconds=1)
        assert "late" not in m.properties
    stamps = [m.properties["received_at"] for m in received]
    assert stamps == sorted(stamps)
    assert bridge.reader.counters.skipped == 0

    kept = retained(subscribe, bridge)
    assert bridge.topics.event not in kept  # card events are never retained
    assert kept[bridge.topics.status].json() == ONLINE


def test_objects_split_across_sends_or_sharing_one_are_each_published(
    start_online: StartOnline, simulator: Simulator, subscribe: Subscribe
) -> None:
    bridge, sub = start_online()
    expected: list[bytes] = []

    one_byte = compact(tagged(simulator, 1))
    for index in range(len(one_byte)):  # one byte per send
        simulator.send_raw(one_byte[index : index + 1])
    simulator.send_raw(b"\r\n")
    expected.append(one_byte)

    split = compact(tagged(simulator, 2, "uhf"))
    for point in range(1, len(split), 9):  # two sends, split at many points
        simulator.send_raw(split[:point])
        simulator.send_raw(split[point:] + b"\n")
        expected.append(split)

    glued = [tagged(simulator, number) for number in range(10, 16)]
    simulator.send_raw(
        compact(glued[0])
        + compact(glued[1])
        + b"\r\n"
        + compact(glued[2])
        + b"\x00"
        + compact(glued[3])
        + b"  "
        + compact(glued[4])
        + b"\n"
        + compact(glued[5])[:20]  # the last one is finished by the next send
    )
    simulator.send_raw(compact(glued[5])[20:] + b"\r\n")
    expected += [compact(event) for event in glued]

    large = dict(tagged(simulator, 3), TagData="A5" * 10_000)  # 20 KB of template output
    simulator.emit(large)  # one send (TCP splits it as it likes)
    data = compact(large) + b"\r\n"
    for start in range(0, len(data), 1000):  # and again in 1000-byte sends
        simulator.send_raw(data[start : start + 1000])
    expected += [compact(large), compact(large)]

    received = events(sub, bridge, len(expected))
    assert [m.payload for m in received] == expected
    assert len(received[-1].payload) > 20_000
    assert bridge.reader.counters.skipped == 0
    assert simulator.accepted == 1


def test_reader_formatting_dropped_but_keys_values_and_order_kept(
    start_online: StartOnline, simulator: Simulator, subscribe: Subscribe
) -> None:
    bridge, sub = start_online()
    # Unusual key order, spaces and line breaks between tokens, spaces inside strings, escapes,
    # raw UTF-8, number spellings json.dumps would change: all but the formatting must survive.
    raw = (
        '{ "Uptime" : "699:16.850" ,\r\n'
        '  "TagId":"047DAE02C84080",\t"Interface" : "13.56",\n'
        '  "Protocol":"NFC-A", "Template" : 1 , "RSSI": -57, "Ratio": 1.50, "Big": 1E3,\n'
        '  "TagData" : "Caf\u00e9 \\u00e9 \\"quoted\\" \\\\ a  b\\n" ,'
        ' "Flags": [ true , false , null ] , "Empty" : { } }\r\n'
    ).encode()
    simulator.send_raw(raw)
    expected = (
        b'{"Uptime":"699:16.850","TagId":"047DAE02C84080","Interface":"13.56",'
        b'"Protocol":"NFC-A","Template":1,"RSSI":-57,"Ratio":1.50,"Big":1E3,'
        b'"TagData":"Caf\xc3\xa9 \\u00e9 \\"quoted\\" \\\\ a  b\\n",'
        b'"Flags":[true,false,null],"Empty":{}}'
    )
    message = sub.next(topic=bridge.topics.event)
    assert message.payload == expected
    assert list(json.loads(message.payload)) == list(json.loads(raw))
    assert json.loads(message.payload) == json.loads(raw)


# -- garbage ---------------------------------------------------------------------------------

GARBAGE = {
    "non-JSON bytes": b"hello, this is not JSON \x01\x02\xfe\r\n",
    "legacy $SCRDR line": b"$SCRDR;T=13.56;P=NFC-A;ID=047DAE02C84080*5C\r\n",
    "object that never closes": b'{"Interface":"13.56","Protocol":"NFC-A","TagId":"04\r\n',
    "invalid UTF-8 in a string": b'{"Interface":"13.56","TagId":"04\xff\xfe\xc3(","Template":1}\n',
    "JSON that is not an object": b'["13.56","NFC-A"] "TagId" 42 null\r\n',
    "nested deeper than json parses": b'{"TagData":' + b"[" * 3000 + b"]" * 3000 + b"}\r\n",
}


def test_garbage_is_skipped_counted_logged_and_the_link_kept(
    start_online: StartOnline,
    simulator: Simulator,
    subscribe: Subscribe,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    bridge, sub = start_online()
    for number, (kind, garbage) in enumerate(GARBAGE.items()):
        skipped_before = bridge.reader.counters.skipped
        simulator.send_raw(garbage)
        event = tagged(simulator, number)
        simulator.emit(event)
        message = sub.next(topic=bridge.topics.event)
        assert message.payload == compact(event), kind
        assert bridge.reader.counters.skipped > skipped_before, kind
    # Logged once, then throttled: the rest go into a summary a minute later (their count is
    # in /metrics meanwhile), so a reader that streams garbage cannot flood the log.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("skipped "), warnings
    assert "b'" not in warnings[0]  # the sample is text with escapes, not a bytes repr
    assert bridge.reader.is_up
    assert simulator.accepted == 1
    assert bridge.reader.counters.connects == 1


CUTS = {
    "inside a string": b'{"Interface":"13.56","TagId":"047D',
    "after a string": b'{"Interface":"13.56","TagId":"047DAE02C84080"',
    "after a number": b'{"Interface":"13.56","Template":1',
    "after a key": b'{"Interface":"13.56","TagId"',
    "after a comma": b'{"Interface":"13.56","Template":1,',
    "after a colon": b'{"Interface":"13.56","TagId":',
    "after the opening brace": b"{",
}


def test_event_right_after_an_object_cut_short_is_published(
    start_online: StartOnline, simulator: Simulator, subscribe: Subscribe
) -> None:
    """Wherever an event is cut, the complete event glued after it gets through.

    Each cut is followed by CR LF, then the event that must survive, then a sentinel event
    that always gets through and marks the end of the case.
    """
    bridge, sub = start_online()
    lost: list[str] = []
    for number, (where, cut) in enumerate(CUTS.items()):
        survivor = tagged(simulator, 100 + number)
        sentinel = tagged(simulator, 200 + number, "uhf")
        simulator.send_raw(cut + b"\r\n" + compact(survivor) + b"\r\n")
        simulator.send_raw(compact(sentinel) + b"\r\n")
        got: list[bytes] = []
        while (payload := sub.next(topic=bridge.topics.event).payload) != compact(sentinel):
            got.append(payload)
        if got != [compact(survivor)]:
            lost.append(where)
    assert simulator.accepted == 1
    assert not lost, f"the event after an object cut {lost} was lost"


# -- the reader link drops -------------------------------------------------------------------


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_dropped_reader_goes_offline_reconnects_and_publishes_again(
    start_online: StartOnline,
    simulator: Simulator,
    subscribe: Subscribe,
    caplog: pytest.LogCaptureFixture,
    reset: bool,
) -> None:
    caplog.set_level(logging.WARNING)
    bridge, sub = start_online()
    before = tagged(simulator, 1)
    simulator.emit(before)
    assert sub.next(topic=bridge.topics.event).payload == compact(before)

    simulator.drop_client(reset=reset)
    # The start may have announced "online" twice (broker connect, then reader up): skip those.
    down = sub.wait_for(lambda m: m.topic == bridge.topics.status and m.json() != ONLINE, 5)
    assert down.json() == OFFLINE
    assert simulator.wait_client(5)  # the first retry comes after at most 0.5 s
    assert sub.next(topic=bridge.topics.status).json() == ONLINE
    assert simulator.accepted == 2
    after = tagged(simulator, 2)
    simulator.emit(after)
    assert sub.next(topic=bridge.topics.event).payload == compact(after)

    kept = retained(subscribe, bridge)
    assert kept[bridge.topics.status].retain
    assert kept[bridge.topics.status].json() == ONLINE
    why = "connection reset by the reader" if reset else "the reader closed the connection"
    downs = [r.getMessage() for r in caplog.records if "link down" in r.getMessage()]
    assert len(downs) == 1, downs
    assert why in downs[0]
    assert "another client" not in downs[0]  # it had sent data: not a busy slot


# -- status and meta -------------------------------------------------------------------------


def test_meta_and_status_are_retained_and_describe_the_reader(
    start_online: StartOnline, subscribe: Subscribe
) -> None:
    bridge, _ = start_online(
        reader_serial="5C0A1F2E",
        reader_product="SpringCard Puck Blue",
        reader_location="Lobby, door 2",
    )
    kept = retained(subscribe, bridge)
    meta = kept[bridge.topics.meta]
    status = kept[bridge.topics.status]
    assert meta.retain
    assert status.retain
    assert status.json() == ONLINE
    fields = meta.json()
    assert isinstance(fields, dict)
    assert fields["VendorName"] == "SpringCard"
    assert fields["Protocol"] == "RDR/JSON"
    assert fields["IpAddress"] == "127.0.0.1"
    assert fields["SerialNumber"] == "5C0A1F2E"
    assert fields["ProductName"] == "SpringCard Puck Blue"
    assert fields["Location"] == "Lobby, door 2"
    assert __version__ in fields.values()  # the bridge's own version, in a field of its choice
    assert bridge.topics.event not in kept


def test_meta_leaves_out_what_is_not_configured(
    start_online: StartOnline, subscribe: Subscribe
) -> None:
    bridge, _ = start_online()
    fields = retained(subscribe, bridge)[bridge.topics.meta].json()
    assert isinstance(fields, dict)
    assert fields["VendorName"] == "SpringCard"
    assert not {"SerialNumber", "ProductName", "Location"} & set(fields)


def test_burst_through_a_broker_with_default_flow_control(
    make_bridge: MakeBridge, simulator: Simulator, tmp_path: Path
):
    """With Mosquitto's default flow control (max_inflight_messages 20, announced as its
    Receive Maximum, which caps the bridge's window), a burst arrives whole, in order, and
    the broker neither refuses nor complains (Mosquitto 2.0 enforces the quota for QoS 2
    only, but logs a client that exceeds it)."""
    workdir = tmp_path / "default-broker"
    workdir.mkdir()
    strict = Broker(workdir, max_inflight=20).start()
    sub: Subscriber | None = None
    try:
        bridge = make_bridge(mqtt_port=strict.port)
        sub = Subscriber(strict.port, bridge.topics.event)
        assert simulator.wait_client()
        assert bridge.mqtt.wait_connected(10)
        count = 2000
        for index in range(count):
            simulator.emit(simulator.factory.make("nfc", tag_id=f"04{index:012X}"))
        received = sub.take(count, bridge.topics.event, timeout=60)
        tags = [json.loads(message.payload)["TagId"] for message in received]
        assert tags == [f"04{index:012X}" for index in range(count)]
        wait_until(lambda: bridge.mqtt.backlog == 0, "every acknowledgement")
        assert bridge.mqtt.counters.rejected == 0
        assert "quota" not in strict.log.read_text()
    finally:
        if sub is not None:
            sub.close()
        strict.stop()
