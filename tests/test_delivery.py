"""The window of events in flight, acknowledgements and order across reconnections
(bridge.delivery, the outbox's only owner), and the packed user properties every event
carries (bridge.mqtt)."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.delivery import Delivery
from bridge.mqtt.client import UserProperties, iso_time
from bridge.outbox import MemoryOutbox, Pending

FIRST = 1  # the broker connection number the tests publish on


def make_delivery(events: int, window: int = 3) -> Delivery:
    delivery = Delivery(MemoryOutbox(10 * 1024 * 1024, 3600.0), "t/evt", window=window)
    delivery.put([(b'{"n":%d}' % n, 0.0) for n in range(events)])
    return delivery


def publish(delivery: Delivery, connection: int = FIRST) -> list[tuple[int, Pending]]:
    """What a publisher does under the lock: take while the window allows, record each."""
    sent = []
    while (item := delivery.next_event(connection)) is not None:
        mid = item.seq % 65536
        delivery.record(mid, item)
        sent.append((mid, item))
    return sent


def test_window_caps_events_in_flight_until_acknowledged():
    delivery = make_delivery(5, window=3)
    first = publish(delivery)
    assert [item.payload for _, item in first] == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    assert publish(delivery) == []
    delivery.acknowledged(first[0][0])
    second = publish(delivery)
    assert [item.payload for _, item in second] == [b'{"n":3}']
    assert delivery.published == 1
    assert delivery.unacked() == 4


def test_events_in_flight_at_reconnection_hold_new_events_back():
    delivery = make_delivery(2, window=10)
    sent = publish(delivery)  # both in flight when connection 1 drops
    delivery.put([(b'{"n":2}', 0.0), (b'{"n":3}', 0.0)])
    assert publish(delivery, connection=2) == []  # paho re-sends the two first
    delivery.acknowledged(sent[0][0])
    assert publish(delivery, connection=2) == []  # one still in flight
    delivery.acknowledged(sent[1][0])
    after = publish(delivery, connection=2)
    assert [item.payload for _, item in after] == [b'{"n":2}', b'{"n":3}']


def test_no_barrier_when_nothing_was_in_flight():
    delivery = make_delivery(2, window=10)
    assert len(publish(delivery, connection=5)) == 2


def test_refused_event_counted_as_rejected_and_forgotten(caplog):
    delivery = make_delivery(1)
    [(mid, item)] = publish(delivery)
    delivery.acknowledged(mid, "Not authorized")
    assert delivery.unacked() == 0
    assert (delivery.published, delivery.rejected) == (0, 1)
    assert f"broker refused event seq {item.seq} (Not authorized)" in caplog.text
    assert "t/evt" in caplog.text


def test_acknowledgement_of_a_message_that_is_not_an_event_is_ignored():
    delivery = make_delivery(1)
    delivery.record(7, None)  # a status message, say
    delivery.acknowledged(7)
    delivery.acknowledged(999)  # never recorded: stop()'s last status
    assert delivery.in_flight() == 0
    assert (delivery.published, delivery.rejected) == (0, 0)
    assert delivery.unacked() == 1


def test_acknowledgements_in_any_order_all_land_and_free_the_window():
    delivery = make_delivery(300, window=200)
    sent = publish(delivery)
    assert len(sent) == 200
    for mid, _ in reversed(sent[:150]):  # a broker may acknowledge out of order
        delivery.acknowledged(mid)
    more = publish(delivery)
    assert [item.payload for _, item in more] == [b'{"n":%d}' % n for n in range(200, 300)]
    for mid, _ in sent[150:] + more:
        delivery.acknowledged(mid)
    assert delivery.unacked() == 0
    assert delivery.published == 300


pairs = st.lists(st.tuples(st.text(max_size=40), st.text(max_size=300)), min_size=1, max_size=5)


@given(pairs)
def test_user_properties_pack_like_paho(user: list[tuple[str, str]]):
    reference = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    reference.UserProperty = user
    assert UserProperties(user).pack() == reference.pack()  # type: ignore[no-untyped-call]


def test_user_properties_read_back_by_paho():
    user = [("seq", "1764673212345678"), ("received_at", "2026-12-02T11:00:00.123Z")]
    decoded = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    decoded.unpack(UserProperties(user).pack())  # type: ignore[no-untyped-call]
    assert decoded.UserProperty == user  # type: ignore[attr-defined]


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_received_at_formatted_like_datetime(timestamp: float):
    moment = datetime.fromtimestamp(timestamp, UTC)
    expected = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert iso_time(timestamp) == expected


def test_messages_published_on_a_new_connection_do_not_hold_events_back():
    """Meta, status and discovery go out first on each connection; events must not wait for
    their acknowledgements (a broker that stalls then would hold every event)."""
    delivery = make_delivery(2, window=10)
    delivery.sync(2)  # the pump, on connection 2, before it announces
    delivery.record(500, None)  # status, meta ...: not acknowledged yet
    delivery.record(501, None)
    assert len(publish(delivery, connection=2)) == 2


def test_only_events_from_before_a_reconnection_hold_new_ones_back():
    delivery = make_delivery(1, window=10)
    [(mid, _)] = publish(delivery)
    delivery.record(600, None)  # a status message in flight when connection 1 dropped
    delivery.put([(b'{"n":1}', 0.0)])
    assert publish(delivery, connection=2) == []
    delivery.acknowledged(mid)  # the event re-sent by paho: the status may still be out
    assert [item.payload for _, item in publish(delivery, connection=2)] == [b'{"n":1}']
