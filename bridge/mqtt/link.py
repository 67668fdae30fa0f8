"""The bridge's MQTT link for one reader: its session, what it publishes, the command topic.

Everything here runs in the event loop's thread, paho's callbacks included (``Driver`` calls
``loop_read`` / ``loop_write`` from the loop), so nothing is locked. What still shapes it
(docs/paho.md):

* paho's own queue is RAM-only and dumps its whole backlog at once on reconnect (#377,
  #492): events wait in the bridge's outbox and only a window of them goes to paho, and only
  while connected (``bridge.delivery``); the window follows the broker's Receive Maximum;
* a message is delivered only when ``on_publish`` says so;
* paho re-sends unacknowledged QoS 1 messages itself after reconnecting, right after
  ``on_connect`` returns, so new events wait until those are acknowledged (order kept);
* an exception inside paho's reading ends this client (``Driver``); one inside our own
  callbacks is logged and the message dropped, as before.

The session starts clean every time: a broker must not keep commands for the bridge while it
is away and deliver them late (a late "accept" opens a door). Publishing - the order of
status, results and events, the live copies - is :class:`bridge.mqtt.outgoing.Outgoing`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge.delivery import Delivery
from bridge.loops import Fatal
from bridge.mqtt.client import Client, new_client, new_properties
from bridge.mqtt.driver import Driver, Sweep
from bridge.mqtt.incoming import CommandSink, incoming_command
from bridge.mqtt.outgoing import LocalResult, Outgoing, Result
from bridge.mqtt.watch import ConnectionWatch
from bridge.options import BridgeOptions
from bridge.topics import STATE_DEAD, STATE_OFFLINE, status_payload
from bridge.upkeep import SpoolUpkeep

log = logging.getLogger(__name__)

SETTLE_CHECK = 0.5
"""Seconds between two looks at what is still pending while stopping."""


class MqttLink:
    """Publishes events, status, meta and results; hands commands to ``commands``."""

    def __init__(
        self,
        options: BridgeOptions,
        commands: CommandSink,
        delivery: Delivery,
        *,
        sweep: Sweep,
        on_fatal: Fatal,
    ) -> None:
        self.options = options.mqtt
        self.topics = options.topics
        self._commands = commands
        self._delivery = delivery
        self._discovery = options.discovery
        self._loop = asyncio.get_running_loop()
        self._watch = ConnectionWatch(self.options, self.topics.device_id)
        self.client = self._make_client()
        self.driver = Driver(self.client, self.options, sweep, on_fatal)
        self.driver.on_connect_error = self._watch.connect_failed
        self.driver.on_broken = self._broken
        self.outgoing = Outgoing(self.client, delivery, options)
        self.outgoing.written = self.driver.write_now
        self.on_connection: list[Callable[[bool], None]] = []  # told of each change
        self.connects = 0
        self._upkeep = SpoolUpkeep(delivery)
        self._settled = asyncio.Event()  # an acknowledgement came (stop() waits on it)
        self._stopping = False
        sweep.on_sweep.append(self.upkeep)

    def _make_client(self) -> Client:
        client = new_client(self.options)
        # Delivery keeps the window; paho's own limit would only add a scan of every message
        # in flight after each PUBACK, and paho ignores it on reconnection anyway (#492).
        client.max_inflight_messages_set(0)
        client.will_set(self.topics.status, status_payload(STATE_DEAD), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    @property
    def is_v5(self) -> bool:
        return self.options.protocol == "5"

    @property
    def is_connected(self) -> bool:
        return self.outgoing.connected

    @property
    def takeovers(self) -> int:
        return self._watch.takeovers

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        properties = None
        if self.is_v5:
            properties = new_properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 0  # clean: no commands kept for us while away
        self.client.connect_async(
            self.options.host,
            self.options.port,
            keepalive=self.options.keepalive,
            clean_start=True if self.is_v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self.driver.start()

    async def stop(self, drain_timeout: float = 3.0) -> None:
        """Deliver what is pending (up to ``drain_timeout`` s), publish ``offline``, say
        goodbye, close the outbox."""
        deadline = time.monotonic() + drain_timeout
        await self._wait_until(self._drained, deadline)
        self._stopping = True
        if self.outgoing.connected:
            self.outgoing.publish_status(STATE_OFFLINE)
            await self._wait_until(
                lambda: not self._delivery.in_flight(), max(deadline, time.monotonic() + 0.5)
            )
        await self.driver.stop(max(0.5, deadline - time.monotonic()))
        await self._upkeep.close()
        left = self._delivery.unacked()
        self._delivery.close()
        if left:
            log.warning("stopping with %d event(s) not delivered to the broker", left)

    def abort(self) -> None:
        """After a fatal error: close the outbox and the socket, without a goodbye - the
        process is about to exit, and the broker's last will speaks."""
        self._stopping = True
        self._delivery.close()
        self.driver.abort()

    def _drained(self) -> bool:
        busy = self._delivery.unacked() or self._delivery.in_flight() or self.outgoing.results
        return not (self.outgoing.connected and busy)

    async def _wait_until(self, done: Callable[[], bool], deadline: float) -> None:
        while not done() and (remaining := deadline - time.monotonic()) > 0:
            self._settled.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), min(remaining, SETTLE_CHECK))

    # -- what the session hands over -----------------------------------------------------

    def publish_events(self, events: list[tuple[bytes, float]]) -> None:
        """The events of one read: queued, published as far as the window allows, and made
        durable with the rest of this loop turn's (one commit per turn)."""
        self._delivery.put(events)
        self.outgoing.pump()
        self._upkeep.written()

    def publish_result(self, result: Result | LocalResult) -> None:
        self.outgoing.add_result(result)

    def set_reader_up(self, up: bool) -> None:
        self.outgoing.set_reader_up(up)

    def upkeep(self) -> None:
        """From the sweep, every few seconds while connected: old events out (age bound)."""
        if self._delivery.unacked():
            self._delivery.flush()

    # -- paho callbacks (in the loop): record, publish, never raise ------------------------

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
                self._watch.refused(reason_code)
                return
            self._subscribe()
            # MQTT 5 3.3.4: no more QoS 1 messages in flight than the broker's Receive
            # Maximum (Mosquitto's max_inflight_messages); paho itself ignores it.
            receive_maximum = getattr(properties, "ReceiveMaximum", None)
            self.connects += 1
            self.driver.connected()
            self._watch.connected()
            self._delivery.flush()  # what grew too old while the broker was away goes now
            self.outgoing.connection_up(receive_maximum)
            self.outgoing.pump_soon(self._loop)  # after paho's re-sends: see Delivery.sync
            self._tell(True)
        except Exception:
            log.exception("on_connect failed")

    def _subscribe(self) -> None:
        # retainHandling 2: a retained command is never replayed at subscription time;
        # retainAsPublished: one that arrives live keeps its retain flag, so the command
        # worker can refuse it (a v5 broker clears the flag otherwise, MQTT 5 3.3.1.3);
        # noLocal: a result whose response topic is rdr/cmd does not come back as a command.
        if self.is_v5:
            options = SubscribeOptions(
                qos=self.options.qos, noLocal=True, retainAsPublished=True, retainHandling=2
            )
            self.client.subscribe(self.topics.command, options=options)
        else:
            self.client.subscribe(self.topics.command, qos=self.options.qos)
        if self._discovery is not None:
            self.client.subscribe(self._discovery.birth_topic, qos=1)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            was_connected = self.outgoing.connected
            lasted = self.outgoing.connection_down()
            opened, self.driver.opened = self.driver.opened, False
            self._settled.set()
            if was_connected:
                self._tell(False)
            if self._stopping or not (was_connected or opened):
                return  # paho says it twice after a keepalive timeout (docs/paho.md §9)
            delay = self._watch.disconnected(
                reason_code, was_connected, lasted, flags.is_disconnect_packet_from_server
            )
            self.driver.retry_after(delay or None)
        except Exception:
            log.exception("on_disconnect failed")

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        try:
            if self._discovery is not None and message.topic == self._discovery.birth_topic:
                if message.payload.strip() == b"online":  # Home Assistant restarted
                    # again after a short random delay: a fleet must not answer in one instant
                    delay = random.uniform(1.0, 5.0)  # noqa: S311
                    self._loop.call_later(delay, self.outgoing.rediscover)
            elif message.topic == self.topics.command:
                self._commands.submit(incoming_command(message, self.is_v5))
        except Exception:
            log.exception("on_message failed")

    def _on_publish(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        try:
            refusal = str(reason_code) if reason_code.is_failure else None
            if self._delivery.acknowledged(mid, refusal):
                self._upkeep.acknowledged()
            self._settled.set()
            self.outgoing.pump_soon(self._loop)  # room in the window: the next ones, once
        except Exception:
            log.exception("on_publish failed")

    def _broken(self) -> None:
        """paho raised inside its own reading or writing: this session is over."""
        if self.outgoing.connected:
            self.outgoing.connection_down()
            self._tell(False)

    def _tell(self, connected: bool) -> None:
        for listener in self.on_connection:
            listener(connected)
