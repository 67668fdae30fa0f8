"""What a reader's MQTT link publishes, and in which order.

On each broker connection, and whenever the reader link changes, status (and meta and
discovery) goes first: an automation that ignores transitions from "unavailable" must see
``online,ready`` before the first card. Then command results, then events as far as the
window allows, each with its user properties, and each timely one again on ``bridge/live``.
Everything runs in the loop's thread; :meth:`Outgoing.pump` is called whenever there may be
something to send (a read, a result, room in the window, a new connection).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes

from bridge.delivery import WINDOW, Delivery
from bridge.mqtt.client import Client, UserProperties, iso_time, new_properties
from bridge.options import BridgeOptions
from bridge.outbox import Pending
from bridge.topics import STATE_OFFLINE, STATE_READY, meta_payload
from bridge.topics import status_payload as status_of

log = logging.getLogger(__name__)

AGE_MARK = 1.0
"""Seconds an event may wait in the bridge before it carries its ``age_ms``."""
RESULTS_KEPT = 1000
"""Results waiting for the broker at most: nobody reads results that old."""


REPLIES_KEPT = 10_000
"""Local answers remembered for events not yet published, at most (their ``local_reply``)."""


@dataclass(frozen=True)
class Result:
    """A command's result, and where else it goes (MQTT v5 request/response)."""

    payload: bytes
    response_topic: str | None = None
    correlation: bytes | None = None

    def encode(self, connected_since: float) -> bytes:
        return self.payload


@dataclass(frozen=True)
class LocalResult:
    """A local answer's result (README, When the broker is down): ``late`` when it is
    published on a later broker connection than the one up when it was made, so it is
    written only then."""

    tag: str | None
    made_at: float  # time.time()
    sent: dict[str, object] | None = None
    error: str | None = None
    response_topic: str | None = None  # never: nobody asked
    correlation: bytes | None = None
    row: int | None = None  # held in the spool (bridge.held_results) until published

    def encode(self, connected_since: float) -> bytes:
        body: dict[str, object] = {
            "ok": self.error is None,
            "local": True,
            "late": self.made_at < connected_since,
            "tag": self.tag,
        }
        if self.error is None:
            body["sent"] = self.sent
        else:
            body["error"] = self.error
        return json.dumps(body, separators=(",", ":")).encode()


class ResultStore(Protocol):
    """Where local results made while the broker is away are kept until they are published
    (``bridge.held_results``: the spool)."""

    def hold(self, result: LocalResult) -> int | None: ...
    def release(self, row: int) -> None: ...


class Outgoing:
    """The publishing side of one link: what is due, and the order it goes in."""

    def __init__(self, client: Client, delivery: Delivery, options: BridgeOptions) -> None:
        self._client = client
        self._delivery = delivery
        self._topics = options.topics
        self._identity = options.identity
        self._discovery = options.discovery
        self._live_max_age = options.live_max_age
        self._v5 = options.mqtt.protocol == "5"
        self.qos = options.mqtt.qos
        self.connected = False
        self.connected_since = 0.0  # time.time(): events read before it were held ("late")
        self.connection = 0  # connections so far (Delivery's barrier after each reconnection)
        self.reader_up = False
        self.results: deque[Result | LocalResult] = deque(maxlen=RESULTS_KEPT)
        self.replies: dict[int, str] = {}  # seq -> the local answer to its event
        self.held: ResultStore | None = None  # local results kept while the broker is away
        self._last_seq = 0  # the highest event seq handed to paho
        self.written: Callable[[], None] = lambda: None  # write what was published, now
        self._announce = False  # meta, status and discovery are due (a new connection)
        self._status_due = False  # status is due (the reader link changed)
        self._pump_due = False

    # -- what changes -----------------------------------------------------------------------

    def connection_up(self, receive_maximum: int | None) -> None:
        """From paho's on_connect: publishing resumes on the loop's next turn (never from
        inside paho's own read)."""
        self.connected = True
        self.connected_since = time.time()
        self.connection += 1
        self._announce = True
        self._delivery.window = min(WINDOW, receive_maximum or WINDOW)

    def connection_down(self) -> float:
        """Seconds the connection lasted."""
        self.connected = False
        return time.time() - self.connected_since

    def set_reader_up(self, up: bool) -> None:
        if up != self.reader_up:
            self.reader_up = up
            self._status_due = True
            self.pump()

    def add_result(self, result: Result | LocalResult) -> None:
        if isinstance(result, LocalResult) and not self.connected and self.held is not None:
            result = replace(result, row=self.held.hold(result))
        if len(self.results) == self.results.maxlen:  # the oldest goes: nobody reads it
            self._release(self.results[0])
        self.results.append(result)
        self.pump()

    def _release(self, result: Result | LocalResult) -> None:
        if isinstance(result, LocalResult) and result.row is not None and self.held is not None:
            self.held.release(result.row)

    def note_reply(self, seq: int, word: str) -> None:
        """Event ``seq`` was answered locally with ``word``: its ``local_reply`` user property,
        if it is not published yet (with ``unanswered`` it usually is)."""
        if seq <= self._last_seq or not self._v5:
            return
        if len(self.replies) >= REPLIES_KEPT:  # their events were dropped (the byte bound)
            del self.replies[next(iter(self.replies))]
        self.replies[seq] = word

    # -- publishing ------------------------------------------------------------------------

    def pump(self) -> None:
        """Publish what is due, in order, while connected and the window allows; then
        write it out at once."""
        if not self.connected:
            return
        self._delivery.sync(self.connection)  # before meta and status: see Delivery.sync
        if self._announce or self._status_due:
            self._announce_now()
        while self.results:
            self._publish_result(self.results.popleft())
        while (item := self._delivery.next_event(self.connection)) is not None:
            if not self._publish_event(item):
                break
        self.written()

    def pump_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        """:meth:`pump` on the loop's next turn, once however often asked in this one."""
        if not self._pump_due:
            self._pump_due = True
            loop.call_soon(self._pump_now)

    def _pump_now(self) -> None:
        self._pump_due = False
        self.pump()

    def _announce_now(self) -> None:
        with_meta, self._announce, self._status_due = self._announce, False, False
        retained: list[tuple[str, bytes]] = []
        if with_meta:
            retained.append((self._topics.meta, meta_payload(self._identity)))
        state = STATE_READY if self.reader_up else STATE_OFFLINE
        retained.append((self._topics.status, status_of(state)))
        if with_meta and self._discovery is not None:
            retained += self._discovery.messages()
        self._publish_retained(retained)

    def rediscover(self) -> None:
        """Home Assistant restarted: its discovery configs again."""
        if self.connected and self._discovery is not None:
            log.info("Home Assistant is online: announcing discovery again")
            self._publish_retained(self._discovery.messages())
            self.written()

    def publish_status(self, state: str) -> None:
        self._publish_retained([(self._topics.status, status_of(state))])
        self.written()

    def _publish_retained(self, messages: list[tuple[str, bytes]]) -> None:
        for topic, payload in messages:
            info = self._client.publish(topic, payload, qos=1, retain=True)
            self._delivery.record(info.mid, None)

    def _publish_result(self, result: Result | LocalResult) -> None:
        payload = result.encode(self.connected_since)
        info = self._client.publish(self._topics.result, payload, qos=1)
        self._delivery.record(info.mid, None)
        if result.response_topic and self._v5:
            properties = new_properties(PacketTypes.PUBLISH)
            if result.correlation is not None:
                properties.CorrelationData = result.correlation
            info = self._client.publish(
                result.response_topic, payload, qos=1, properties=properties
            )
            self._delivery.record(info.mid, None)
        self._release(result)

    def _publish_event(self, item: Pending) -> bool:
        """Hand one event to paho; False if it had to be put back (QoS 0, not connected).

        ``late``: read before this broker connection (it waited through an outage);
        ``age_ms``: on a late event, and on any that waited more than AGE_MARK s in the
        bridge (a burst the broker takes slower than the reader sends it)."""
        age = time.time() - item.received_at
        item.late = item.received_at < self.connected_since
        properties = None
        if self._v5:
            user = [("seq", str(item.seq)), ("received_at", iso_time(item.received_at))]
            if item.late:
                user.append(("late", "true"))
            if item.late or age > AGE_MARK:
                user.append(("age_ms", str(max(0, int(age * 1000)))))
            if self.replies and (reply := self.replies.pop(item.seq, None)):
                user.append(("local_reply", reply))
            properties = UserProperties(user)
        self._last_seq = item.seq  # events go out in seq order
        topics, qos = self._topics, self.qos
        info = self._client.publish(topics.event, item.payload, qos, properties=properties)
        if qos == 0 and info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._delivery.give_back(item)  # paho does not keep QoS 0: back in front
            return False
        self._delivery.record(info.mid, item)
        if self._live_max_age is not None and not item.late and age <= self._live_max_age:
            live = self._client.publish(topics.live, item.payload, qos, properties=properties)
            if live.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or qos > 0:
                self._delivery.record(live.mid, None)
        return True
