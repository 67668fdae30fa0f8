"""The subscriber: MQTT v5, QoS 1, a persistent session, counting every copy of every event
into the ledger; it never publishes."""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from soaklib.errors import SoakError
from soaklib.event import COUNTER_FIELD, EVENT_TOPIC
from soaklib.ledger import MAX_COUNTER, Ledger


@dataclass
class SubscriberStats:
    messages: int = 0
    unique: int = 0
    duplicates: int = 0  # copies beyond the first, by counter
    duplicate_seqs: int = 0  # copies beyond the first, by seq
    seq_conflicts: int = 0  # a counter seen with two seqs, or a seq with two counters
    late: int = 0  # unique events whose first copy was marked late
    unparseable: int = 0
    out_of_order: int = 0  # first copies arriving with a counter below the highest seen
    connects: int = 0
    sessions_resumed: int = 0
    disconnects: int = 0
    callback_errors: int = 0


class Subscriber:
    """MQTT v5, QoS 1, persistent session: the broker queues events while it is away."""

    def __init__(self, port: int, ledger: Ledger, client_id: str) -> None:
        self._ledger = ledger
        self.stats = SubscriberStats()
        self._seqs: dict[int, int] = {}
        self._highest = -1
        self.subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.suppress_exceptions = True
        self.client.reconnect_delay_set(0.1, 1)  # type: ignore[arg-type]  # floats work
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 7 * 86400
        self.client.connect_async(
            "127.0.0.1", port, keepalive=10, clean_start=False, properties=properties
        )

    def start(self, timeout: float = 15.0) -> None:
        self.client.loop_start()
        if not self.subscribed.wait(timeout):
            raise SoakError(f"the subscriber did not get subscribed within {timeout} s")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            if reason_code.is_failure:
                return
            self.stats.connects += 1
            self.stats.sessions_resumed += int(flags.session_present)
            # Every time: a broker that lost its state (SIGKILL) lost the subscription too.
            client.subscribe(EVENT_TOPIC, options=SubscribeOptions(qos=1))
        except Exception:
            self.stats.callback_errors += 1

    def _on_disconnect(self, *args: object) -> None:
        self.stats.disconnects += 1

    def _on_subscribe(self, *args: object) -> None:
        self.subscribed.set()

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        try:
            self._record(message)
        except Exception:
            self.stats.callback_errors += 1

    def _record(self, message: paho.MQTTMessage) -> None:
        parsed = self._parse(message)
        if parsed is None:
            self.stats.unparseable += 1
            return
        counter, seq, late = parsed
        ledger = self._ledger
        with ledger.lock:
            ledger.grow(counter + 1)
            self.stats.messages += 1
            self._count_seq(counter, seq)
            self._count_copy(counter, seq, late)

    @staticmethod
    def _parse(message: paho.MQTTMessage) -> tuple[int, int, bool] | None:
        """The event's counter, its ``seq`` and whether it is marked late; None if unusable."""
        props = getattr(message, "properties", None)
        user = dict(getattr(props, "UserProperty", None) or [])
        try:
            counter = json.loads(message.payload)[COUNTER_FIELD]
            seq = int(user["seq"])
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(counter, int) or not 0 <= counter < MAX_COUNTER:
            return None
        return counter, seq, user.get("late") == "true"

    def _count_seq(self, counter: int, seq: int) -> None:
        """Copies by ``seq`` (called under the ledger's lock)."""
        stats = self.stats
        known = self._seqs.get(seq)
        if known is None:
            self._seqs[seq] = counter
        else:
            stats.duplicate_seqs += 1
            if known != counter:
                stats.seq_conflicts += 1

    def _count_copy(self, counter: int, seq: int, late: bool) -> None:
        """Copies by counter, and the first copy's facts (called under the ledger's lock)."""
        ledger, stats = self._ledger, self.stats
        if ledger.received[counter]:
            stats.duplicates += 1
            if ledger.seq[counter] != seq:
                stats.seq_conflicts += 1
        else:
            stats.unique += 1
            ledger.seq[counter] = seq
            if late:
                ledger.late[counter] = 1
                stats.late += 1
            if counter < self._highest:
                stats.out_of_order += 1
            self._highest = max(self._highest, counter)
        ledger.received[counter] = min(ledger.received[counter] + 1, 65535)

    def received_unique(self) -> int:
        with self._ledger.lock:
            return self.stats.unique

    @property
    def highest(self) -> int:
        """The highest counter received so far (read it under the ledger's lock)."""
        return self._highest
