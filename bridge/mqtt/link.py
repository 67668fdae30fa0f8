"""The bridge's MQTT link: connection, publishing, the command topic; sole owner of its client.

paho facts this module is built around (docs/paho.md):

* paho's own queue is RAM-only, refuses message 65,536 and dumps its whole backlog at once
  on reconnect (#377, #492), so events wait in the bridge's bounded outbox and only a window
  of them is handed to paho, and only while connected (``bridge.delivery``);
* a message is delivered only when ``on_publish`` says so;
* ``on_publish`` runs with paho's message lock held, and ``publish()`` takes that lock, so the
  lock held around ``publish()`` (``Delivery.lock``) is never taken in a callback (#226,
  #346); callbacks only record state under ``_cond``, which is never held around publish();
* an exception in a callback kills paho's thread (#365): every callback body is guarded;
* paho re-sends unacknowledged QoS 1 messages itself after reconnecting, right *after*
  ``on_connect`` returns, so new events wait until those are acknowledged (order kept).

Events are published by the reader thread right after each read (no thread hand-over on the
way to the broker); the pump thread publishes the rest: what waited for the window or for
the broker, status, meta, discovery and command results.

Why the connection failed or keeps dropping is worked out and logged by ``watch.py``. The rest
stays in this one module although it is longer than the others: the two locks and which
thread may take which (above) are the module's whole difficulty, and they are easier to
check in one place.

The session starts clean every time: a broker must not keep commands for the bridge while it
is away and deliver them late (a late "accept" opens a door).
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge import logs
from bridge.delivery import WINDOW, Delivery
from bridge.discovery import Discovery
from bridge.loops import watched_thread
from bridge.mqtt.client import (
    Client,
    UserProperties,
    is_topic_name,
    iso_time,
    new_client,
    new_properties,
)
from bridge.mqtt.watch import ConnectionWatch
from bridge.options import MqttOptions
from bridge.outbox import Outbox, Pending
from bridge.topics import (
    STATE_DEAD,
    STATE_OFFLINE,
    STATE_READY,
    Identity,
    Topics,
    meta_payload,
    status_payload,
)

log = logging.getLogger(__name__)

FLUSH = 0.5
"""Seconds between two deletions of acknowledged events from the spool."""
ACK_BATCH = 50
"""Acknowledgements that wake the pump when events wait for room in the window."""
STRAGGLER = 0.005
"""Seconds the pump waits for a batch of acknowledgements before it looks anyway."""
WRITE_WAIT = 0.005
"""Seconds a read's commit waits for paho's thread to write the events out first."""
RECONNECT_MAX = 30
AGE_MARK = 1.0
"""Seconds an event may wait in the bridge before it carries its ``age_ms``."""


@dataclass(frozen=True)
class IncomingCommand:
    payload: bytes
    received: float  # time.monotonic()
    retained: bool = False
    response_topic: str | None = None
    correlation: bytes | None = None


@dataclass
class MqttCounters:
    published: int = 0
    rejected: int = 0
    connects: int = 0
    takeovers: int = 0


_Message = tuple[str, bytes, Properties | None]
_Job = _Message | bool | None
"""Besides events: True = meta, status (and discovery), False = status, None = discovery."""


@dataclass
class _Shared:
    """State shared by callbacks and the pump, always under ``MqttLink._cond``."""

    connected: bool = False
    connected_since: float = 0.0  # time.time(): events read before it were held ("late")
    announce: bool = False  # meta, status and discovery are due (a new connection)
    status_due: bool = False  # status is due (the reader link changed)
    rediscover_at: float | None = None  # time.monotonic() to announce discovery again
    connection: int = 0  # connections so far (Delivery's barrier after each reconnection)
    reader_up: bool = False
    results: deque[_Message] = field(default_factory=deque)
    backlog: bool = False  # events wait in the outbox for room in the window
    watched: bool = False  # stop() waits for acknowledgements


class MqttLink:
    """Publishes events, status, meta and results; hands command payloads to ``on_command``."""

    def __init__(
        self,
        options: MqttOptions,
        topics: Topics,
        identity: Identity,
        on_command: Callable[[IncomingCommand], None],
        *,
        outbox: Outbox,
        discovery: Discovery | None = None,
        live_max_age: float | None = None,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        self.options = options
        self._live_max_age = live_max_age
        self._on_fatal = on_fatal or (lambda name: None)
        self._discovery = discovery
        self.topics = topics
        self._identity = identity
        self._on_command = on_command
        self._delivery = Delivery(outbox, topics.event)
        self._cond = threading.Condition()  # never held around publish(): callbacks take it
        self._state = _Shared()
        self._stopping = False
        self._socket_opened = False  # since the last on_disconnect (paho's thread only)
        self._ack_batch = ACK_BATCH  # acknowledgements that wake the pump (see on_connect)
        self._connects = 0
        self._watch = ConnectionWatch(options, topics.device_id)
        self._client = self._make_client()
        self._pump = watched_thread(
            "mqtt-pump", self._pump_loop, self._on_fatal, lambda: self._stopping
        )

    @property
    def is_v5(self) -> bool:
        return self.options.protocol == "5"

    # -- construction --------------------------------------------------------------------

    def _make_client(self) -> Client:
        client = new_client(self.options)
        # Delivery keeps the window (WINDOW events in flight); paho's own limit would only
        # add a scan of every message in flight after each PUBACK (Client._update_inflight,
        # ~10 % of the CPU at full load), and paho ignores it on reconnection anyway (#492).
        client.max_inflight_messages_set(0)
        self._set_reconnect_delay(client)
        client.will_set(self.topics.status, status_payload(STATE_DEAD), qos=1, retain=True)
        client.on_socket_open = self._on_socket_open
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_loop_exit = self._on_loop_exit
        return client

    @staticmethod
    def _set_reconnect_delay(client: paho.Client, fixed: float | None = None) -> None:
        # paho doubles the delay from its minimum; a random minimum spreads a fleet of bridges.
        low = fixed or random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not cryptography
        client.reconnect_delay_set(low, fixed or RECONNECT_MAX)  # type: ignore[arg-type]

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        properties = None
        if self.is_v5:
            properties = new_properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 0  # clean: no commands kept for us while away
        self._client.connect_async(
            self.options.host,
            self.options.port,
            keepalive=self.options.keepalive,
            clean_start=True if self.is_v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self._client.loop_start()
        self._pump.start()

    def stop(self, drain_timeout: float = 3.0) -> None:
        """Deliver what is pending (up to ``drain_timeout`` s), publish ``offline``, disconnect.

        A second call does nothing."""
        deadline = time.monotonic() + drain_timeout
        with self._cond:
            if self._stopping:
                return
        self._wait_settled(lambda: not self._has_backlog(), deadline)
        with self._cond:
            connected = self._state.connected
            self._stopping = True
            self._cond.notify_all()
        self._pump.join(timeout=max(0.1, deadline - time.monotonic()))
        if connected:
            with self._delivery.lock:
                info = self._client.publish(
                    self.topics.status, status_payload(STATE_OFFLINE), qos=1, retain=True
                )
                self._delivery.record(info.mid, None)
            self._wait_settled(
                lambda: self._delivery.in_flight() == 0,
                max(deadline, time.monotonic() + 0.5),
            )
        self._client.disconnect()
        self._client.loop_stop()
        with self._delivery.lock:
            left = self._delivery.unacked()
            self._delivery.outbox.close()
        if left:
            log.warning("stopping with %d event(s) not delivered to the broker", left)

    def abort(self, timeout: float) -> None:
        """After a fatal error: close the outbox (if its lock comes within ``timeout``) and
        nothing else - the process is about to exit, and the broker's last will speaks."""
        self._stopping = True
        if self._delivery.lock.acquire(timeout=timeout):
            try:
                self._delivery.outbox.close()
            finally:
                self._delivery.lock.release()

    def _wait_settled(self, done: Callable[[], bool], deadline: float) -> None:
        """Wait until ``done()`` (called under the delivery lock, acknowledgements applied)."""
        while True:
            with self._delivery.lock:
                self._delivery.settle()
                if done():
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with self._cond:  # woken by each acknowledgement (see _on_publish)
                self._state.watched = True
                self._cond.wait(min(remaining, FLUSH))

    def _has_backlog(self) -> bool:
        """Under the delivery lock: connected, and something is not yet acknowledged."""
        state = self._state
        busy = self._delivery.outbox.unacked() or self._delivery.in_flight() or state.results
        return state.connected and bool(busy)

    def dead_loops(self) -> list[str]:
        """The link's threads that stopped although the link was not stopped: the pump, and
        paho's network thread (``mqtt-network``), which reconnects by itself while it runs."""
        if self._stopping or not self._pump.ident:  # stopped, or not started yet
            return []
        dead = [] if self._pump.is_alive() else ["mqtt-pump"]
        return dead if self._client.is_looping else [*dead, "mqtt-network"]

    def _on_loop_exit(self, error: Exception | None) -> None:
        """paho's network thread is ending (its last act): fine when we stop, else fatal."""
        if self._stopping:
            return
        with self._cond:
            self._state.connected = False
            self._cond.notify_all()
        if error is None:
            log.critical("paho's network thread (mqtt-network) ended although nothing stopped it")
        else:
            log.critical("paho's network thread (mqtt-network) died", exc_info=error)
        self._on_fatal("mqtt-network")

    def wait_connected(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._state.connected, timeout=timeout)

    @property
    def is_connected(self) -> bool:
        with self._cond:
            return self._state.connected

    @property
    def counters(self) -> MqttCounters:
        with self._delivery.lock:
            self._delivery.settle()
            published, rejected = self._delivery.published, self._delivery.rejected
        return MqttCounters(published, rejected, self._connects, self._watch.takeovers)

    @property
    def backlog(self) -> int:
        """Events not yet acknowledged by the broker."""
        with self._delivery.lock:
            return self._delivery.unacked()

    @property
    def dropped(self) -> dict[str, int]:
        """Events dropped, per reason: ``size`` (the outbox's byte bound), ``age``."""
        with self._delivery.lock:
            return dict(self._delivery.outbox.dropped)

    @property
    def held_bytes(self) -> int:
        """Bytes the outbox holds (its bound is BRIDGE_SPOOL_MAX_MB or _MEMORY_MAX_MB)."""
        with self._delivery.lock:
            return self._delivery.outbox.held_bytes()

    # -- what the application hands over ---------------------------------------------------

    def publish_events(self, events: list[tuple[bytes, float]]) -> None:
        """Queue the events of one read (payload, ``time.time()`` when read), publish what
        the window allows right here, in the caller's thread (the pump takes over only when
        the window is full or the broker is away), then make them durable in one commit.

        The commit waits (up to WRITE_WAIT) until paho's thread has written what was
        published: SQLite releases and retakes the GIL at every step, and right after
        publish() that delayed paho's write by ~170 us at 200 events/s (~50 us without a
        commit). A crash in between loses nothing more than a crash before the commit
        would (outbox.py)."""
        delivery = self._delivery
        with delivery.lock:
            delivery.outbox.put_many(events)
            self._client.wrote.clear()
            published = self._publish_ready()
            if delivery.outbox.queued():
                self._note_backlog()
        if published:
            self._client.wrote.wait(WRITE_WAIT)
        with delivery.lock:
            delivery.outbox.commit()

    def publish_result(self, payload: bytes, command: IncomingCommand) -> None:
        with self._cond:
            self._state.results.append((self.topics.result, payload, None))
            if command.response_topic and self.is_v5:
                properties = new_properties(PacketTypes.PUBLISH)
                if command.correlation is not None:
                    properties.CorrelationData = command.correlation
                self._state.results.append((command.response_topic, payload, properties))
            while len(self._state.results) > 1000:  # nobody reads results that old
                self._state.results.popleft()
            self._cond.notify_all()

    def set_reader_up(self, up: bool) -> None:
        with self._cond:
            if self._state.reader_up != up:
                self._state.reader_up = up
                self._state.status_due = True
                self._cond.notify_all()

    # -- publishing: under the delivery lock, from the reader thread or the pump ----------

    def _publish_ready(self) -> int:
        """Publish queued events while connected and the window has room; how many.

        Status (and meta, on a new broker connection) that is due goes first, whichever
        thread gets here first: an automation that ignores transitions from "unavailable"
        must see ``online,ready`` before the first card of a new link."""
        delivery = self._delivery
        state = self._state  # plain reads: a stale value only delays an event to the pump
        if state.connected and (state.announce or state.status_due):
            delivery.sync(state.connection)
            with self._cond:
                due = self._take_announcement()
            if due is not None:
                self._announce(with_meta=due)
        published = 0
        while state.connected:
            item = delivery.next_event(state.connection)
            if item is None or not self._publish_pending(item):
                break
            published += 1
        return published

    def _note_backlog(self) -> None:
        """Under the delivery lock. Events wait: the pump publishes them as acknowledgements
        free the window. Only the change wakes it: while the flag stays set, the pump wakes
        per ACK_BATCH acknowledgements anyway (a wake-up per read cost ~5 % at full load)."""
        if self._state.backlog:  # cleared only under the delivery lock too (the pump)
            return
        with self._cond:
            self._state.backlog = True
            self._cond.notify_all()

    def _pump_loop(self) -> None:
        flushed = time.monotonic()
        while True:
            with self._cond:
                self._wait_for_work()
                if self._stopping:
                    return
                jobs = self._take_jobs()
            # No catch-all here: a bug that raises ends the pump, which is fatal
            # (bridge.loops): the process exits and restarts rather than pile up events.
            flush = time.monotonic() - flushed >= FLUSH
            with self._delivery.lock:
                if flush:
                    self._delivery.settle()
                    self._delivery.outbox.flush()  # acknowledged rows out, in batches
                    flushed = time.monotonic()
                self._delivery.sync(self._state.connection)  # before meta, status: see there
                for job in jobs:
                    self._run_job(job)
                self._publish_ready()
                with self._cond:  # under the delivery lock, like _note_backlog()
                    self._state.backlog = self._delivery.outbox.queued() > 0
            if flush:
                self._delivery.outbox.checkpoint()  # the disk flush, outside the lock
                logs.flush_throttles()  # the per-minute summaries of repeated warnings

    def _wait_for_work(self) -> None:
        """Under ``_cond``. Events that wait for room in the window go out in batches as
        acknowledgements come - one wake-up per ACK_BATCH of them, not one per PUBACK, or
        after STRAGGLER s for the last few; anything else as soon as it is due."""
        state = self._state
        if state.connected and state.backlog:
            self._cond.wait_for(
                lambda: self._stopping or self._has_work() or self._acks_batched(),
                timeout=STRAGGLER,
            )
        else:
            self._cond.wait_for(
                lambda: self._stopping or self._has_work() or (state.connected and state.backlog),
                timeout=FLUSH,
            )

    def _acks_batched(self) -> bool:
        return self._delivery.waiting_acks() >= self._ack_batch

    def _has_work(self) -> bool:
        state = self._state
        if not state.connected:
            return False
        due = state.rediscover_at is not None and time.monotonic() >= state.rediscover_at
        return state.announce or state.status_due or due or bool(state.results)

    def _take_jobs(self) -> list[_Job]:
        """Under ``_cond``: what to publish besides events. True = meta, status (and
        discovery), False = status, None = discovery again, else a message."""
        state = self._state
        jobs: list[_Job] = []
        if state.rediscover_at is not None and time.monotonic() >= state.rediscover_at:
            state.rediscover_at = None
            jobs.append(None)
        due = self._take_announcement()
        if due is not None:
            jobs.append(due)
        jobs.extend(state.results)
        state.results.clear()
        return jobs

    def _take_announcement(self) -> bool | None:
        """Under ``_cond``: True when meta, status and discovery are due (a new broker
        connection), False when only status is (the reader link changed), else None."""
        state = self._state
        if not (state.announce or state.status_due):
            return None
        due = state.announce
        state.announce = state.status_due = False
        return due

    def _run_job(self, job: _Job) -> None:
        if job is None:
            self._rediscover()
        elif isinstance(job, bool):
            self._announce(with_meta=job)
        else:
            topic, payload, properties = job
            info = self._client.publish(topic, payload, qos=1, properties=properties)
            self._delivery.record(info.mid, None)

    def _announce(self, with_meta: bool) -> None:
        retained: list[tuple[str, bytes]] = []
        if with_meta:
            retained.append((self.topics.meta, meta_payload(self._identity)))
        up = self._state.reader_up
        retained.append((self.topics.status, status_payload(STATE_READY if up else STATE_OFFLINE)))
        if with_meta and self._discovery is not None:
            retained += self._discovery.messages()
        self._publish_retained(retained)

    def _rediscover(self) -> None:
        assert self._discovery is not None
        log.info("Home Assistant is online: announcing discovery again")
        self._publish_retained(self._discovery.messages())

    def _publish_retained(self, messages: list[tuple[str, bytes]]) -> None:
        for topic, payload in messages:
            info = self._client.publish(topic, payload, qos=1, retain=True)
            self._delivery.record(info.mid, None)

    def _publish_pending(self, item: Pending) -> bool:
        """Hand one event to paho; False if it had to be put back (QoS 0, not connected).

        ``late``: read before this broker connection (it waited through an outage);
        ``age_ms``: on a late event, and on any that waited more than AGE_MARK s in the
        bridge (a burst the broker takes slower than the reader sends it).
        A timely event also goes to ``bridge/live`` when that topic is on."""
        age = time.time() - item.received_at
        item.late = item.received_at < self._state.connected_since
        properties = None
        if self.is_v5:
            user = [("seq", str(item.seq)), ("received_at", iso_time(item.received_at))]
            if item.late:
                user.append(("late", "true"))
            if item.late or age > AGE_MARK:
                user.append(("age_ms", str(max(0, int(age * 1000)))))
            properties = UserProperties(user)
        qos = self.options.qos
        info = self._client.publish(self.topics.event, item.payload, qos=qos, properties=properties)
        if qos == 0 and info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._delivery.outbox.give_back(item)  # paho does not keep QoS 0: back in front
            return False
        self._delivery.record(info.mid, item)
        if self._live_max_age is not None and not item.late and age <= self._live_max_age:
            live = self._client.publish(self.topics.live, item.payload, qos, properties=properties)
            if live.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or qos > 0:
                self._delivery.record(live.mid, None)
        return True

    # -- paho callbacks: record, notify, never block, never raise -------------------------

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
            # retainHandling 2: a retained command is never replayed at subscription time;
            # retainAsPublished: one that arrives live keeps its retain flag, so the command
            # worker can refuse it (a v5 broker clears the flag otherwise, MQTT 5 3.3.1.3);
            # noLocal: a result whose response topic is rdr/cmd does not come back as a command.
            options = SubscribeOptions(
                qos=self.options.qos, noLocal=True, retainAsPublished=True, retainHandling=2
            )
            if self.is_v5:
                client.subscribe(self.topics.command, options=options)
            else:
                client.subscribe(self.topics.command, qos=self.options.qos)
            if self._discovery is not None:
                client.subscribe(self._discovery.birth_topic, qos=1)
            with self._cond:
                state = self._state
                state.connected = True
                state.connected_since = time.time()
                state.announce = True
                state.connection += 1  # Delivery holds new events until paho's re-sends land
                state.backlog = True  # the outbox may hold events from before
                self._connects += 1
                self._cond.notify_all()
            # MQTT 5 3.3.4: no more QoS 1 messages in flight than the broker's Receive
            # Maximum (Mosquitto's max_inflight_messages); paho itself ignores it.
            receive_maximum = getattr(properties, "ReceiveMaximum", None)
            window = self._delivery.window = min(WINDOW, receive_maximum or WINDOW)
            self._ack_batch = max(1, min(ACK_BATCH, window // 2))  # a smaller window: sooner
            self._set_reconnect_delay(client)  # back to normal after a takeover's long wait
            self._watch.connected()
        except Exception:
            log.exception("on_connect failed")

    def _on_socket_open(self, client: paho.Client, userdata: object, sock: object) -> None:
        self._socket_opened = True  # a connection attempt got as far as TCP (and TLS)
        # Without TCP_NODELAY, Nagle and delayed ACKs add ~40-90 ms to every small publish.
        try:
            if isinstance(sock, socket.socket):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            log.debug("could not set TCP_NODELAY on the broker socket", exc_info=True)

    def _on_connect_fail(self, client: paho.Client, userdata: object) -> None:
        try:
            self._watch.connect_failed(self._client.last_error)
        except Exception:
            log.exception("on_connect_fail failed")

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            with self._cond:
                was_connected = self._state.connected
                self._state.connected = False
                lasted = time.time() - self._state.connected_since
                self._cond.notify_all()
            opened, self._socket_opened = self._socket_opened, False
            if self._stopping or not (was_connected or opened):
                return  # paho says it twice after a keepalive timeout (docs/paho.md §9)
            delay = self._watch.disconnected(
                reason_code, was_connected, lasted, flags.is_disconnect_packet_from_server
            )
            if delay:
                self._set_reconnect_delay(client, delay)
        except Exception:
            log.exception("on_disconnect failed")

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        try:
            if self._discovery is not None and message.topic == self._discovery.birth_topic:
                self._on_birth(bytes(message.payload))
                return
            if message.topic != self.topics.command:
                return
            properties = getattr(message, "properties", None)
            response = getattr(properties, "ResponseTopic", None)
            if isinstance(response, str) and not is_topic_name(response):
                log.warning("ignoring response topic %r: not a topic one can publish to", response)
                response = None
            correlation = getattr(properties, "CorrelationData", None)
            self._on_command(
                IncomingCommand(
                    payload=bytes(message.payload),
                    received=time.monotonic(),
                    retained=bool(message.retain),
                    response_topic=response if isinstance(response, str) else None,
                    correlation=bytes(correlation) if correlation is not None else None,
                )
            )
        except Exception:
            log.exception("on_message failed")

    def _on_birth(self, payload: bytes) -> None:
        """Home Assistant restarted: announce again after a short random delay (a fleet of
        bridges must not all answer in the same instant)."""
        if payload.strip() == b"online":
            with self._cond:
                self._state.rediscover_at = time.monotonic() + random.uniform(1.0, 5.0)  # noqa: S311
                self._cond.notify_all()

    def _on_publish(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        try:
            self._delivery.acknowledged(mid, str(reason_code) if reason_code.is_failure else None)
            state = self._state  # plain reads: a missed wake-up costs STRAGGLER s at most
            # once per batch: the pump checks _acks_batched() itself before it waits
            batch = self._ack_batch
            if state.watched or (state.backlog and self._delivery.waiting_acks() == batch):
                with self._cond:  # else nobody waits: applied by the next publisher
                    self._cond.notify_all()
        except Exception:
            log.exception("on_publish failed")
