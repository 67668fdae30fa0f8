"""Wires the reader link, the command worker and the MQTT link together, and shuts them down.

Threads: the reader link reads (``reader``), the command worker writes commands (``commands``),
paho runs its network loop and the MQTT link its publishing pump. They hand data across
with queues; none of them blocks another. When BRIDGE_HTTP_PORT is set, the health listener
(``bridge.health``) reads their state from yet another thread.

Nothing here imports pydantic (the bridge gets checked :class:`BridgeOptions`) nor, unless the
health listener is on, prometheus_client: the long-running process stays small (``bridge.runner``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from bridge.commands import CommandError, RateLimit, parse_command
from bridge.logs import Throttle
from bridge.loops import watched_thread
from bridge.mqtt import IncomingCommand, MqttLink
from bridge.options import BridgeOptions, CommandOptions, ConfigError, OutboxOptions
from bridge.outbox import MemoryOutbox, Outbox, SpoolOutbox
from bridge.protocol import Frame, Skipped
from bridge.reader import CommandNotSentError, ReaderLink
from bridge.spool import SpoolError

if TYPE_CHECKING:  # imported when the listener starts: prometheus_client adds ~1 MB of RSS
    from bridge.health import HealthServer, Snapshot

log = logging.getLogger(__name__)

COMMAND_QUEUE = 100
RETAINED_REMEMBERED = 1000
"""Retained payloads whose refusal was logged, remembered so that it is logged once."""


def transaction_of(payload: bytes) -> object:
    """The ``transaction`` of a command payload, valid or not, for its result."""
    try:
        return parse_command(payload).transaction
    except CommandError as exc:
        return exc.transaction


def result_payload(
    incoming: IncomingCommand,
    transaction: object,
    *,
    sent: dict[str, object] | None = None,
    error: str | None = None,
) -> bytes:
    """``{"ok": ..., "transaction": ..., "sent"|"error": ...}`` (README, Commands)."""
    result: dict[str, object] = {"ok": error is None}
    if transaction is not None:
        result["transaction"] = transaction
    if error is None:
        result["sent"] = sent
    else:
        result["error"] = error
    return json.dumps(result, separators=(",", ":"), allow_nan=False).encode()


class CommandWorker:
    """Validates each MQTT command, sends it before its deadline or drops it; one result each."""

    def __init__(self, options: CommandOptions, link: ReaderLink, mqtt: MqttLink) -> None:
        self.options = options
        self._link = link
        self._mqtt = mqtt
        self._topic = mqtt.topics.command
        self._retained_seen: set[bytes] = set()  # digests of retained payloads logged once
        self._throttle = Throttle(log)
        self._queue: queue.Queue[IncomingCommand | None] = queue.Queue(COMMAND_QUEUE)
        self._limit = RateLimit(options.rate, options.burst)
        self.sent = 0
        self.refused = 0
        self.expired = 0

    def submit(self, incoming: IncomingCommand) -> None:
        """Called from paho's thread: never blocks."""
        try:
            self._queue.put_nowait(incoming)
        except queue.Full:
            transaction = transaction_of(incoming.payload)
            self._reply(incoming, transaction, error="too many commands waiting; dropped")

    def stop(self) -> None:
        self._queue.put(None)

    def run(self) -> None:
        while (incoming := self._queue.get()) is not None:
            try:
                self.handle(incoming)
            except Exception:
                log.exception("command handling failed")

    def handle(self, incoming: IncomingCommand) -> None:
        if incoming.retained:
            self._refuse_retained(incoming)
            return
        try:
            command = parse_command(incoming.payload, self.options.allowed_fields)
            if not self._limit.allow(incoming.received):
                raise CommandError(
                    f"rate limit: more than {self.options.rate:g} commands per second "
                    f"(bursts of {self.options.burst}, BRIDGE_COMMAND_RATE/_BURST); dropped",
                    command.transaction,
                )
        except CommandError as exc:
            self.refused += 1
            self._throttle.warning(
                "rate" if str(exc).startswith("rate limit") else "refused",
                "command refused: %s",
                exc,
            )
            self._reply(incoming, exc.transaction, error=str(exc))
            return
        deadline = incoming.received + self.options.timeout
        try:
            self._link.send(command.encode() + self.options.delimiter, deadline, self.options.gap)
        except CommandNotSentError as exc:
            self.expired += 1
            message = (
                f"not sent within {self.options.timeout:g} s: {exc}; "
                "dropped so that it cannot run late"
            )
            log.warning("command %s %s", command.encode().decode(), message)
            self._reply(incoming, command.transaction, error=message)
            return
        self.sent += 1
        log.info("command sent to the reader: %s", command.encode().decode())
        self._reply(incoming, command.transaction, sent=dict(command.as_dict()))

    def _refuse_retained(self, incoming: IncomingCommand) -> None:
        """A retained message on the command topic is never executed: it would run again
        on every reconnection. Each one gets its result; the log names a given payload once
        (a v3.1.1 broker replays it at every subscription)."""
        self.refused += 1
        if not incoming.payload:  # someone cleared the retained command: that is the fix
            self._retained_seen.clear()
            log.info("the retained message on %s was cleared", self._topic)
            self._reply(incoming, None, error="empty retained message (a clearing); nothing sent")
            return
        transaction = transaction_of(incoming.payload)
        error = (
            "retained command refused: it would run again on every reconnection; publish "
            "commands without the retain flag, and clear this one (an empty retained message)"
        )
        digest = hashlib.sha256(incoming.payload).digest()
        if digest not in self._retained_seen:
            if len(self._retained_seen) >= RETAINED_REMEMBERED:
                self._retained_seen.clear()  # a flood of distinct ones: say them again
            self._retained_seen.add(digest)
            log.warning(
                "%s on %s: %s",
                error,
                self._topic,
                incoming.payload[:100].decode("utf-8", "replace"),
            )
        self._reply(incoming, transaction, error=error)

    def _reply(
        self,
        incoming: IncomingCommand,
        transaction: object,
        *,
        sent: dict[str, object] | None = None,
        error: str | None = None,
    ) -> None:
        self._mqtt.publish_result(
            result_payload(incoming, transaction, sent=sent, error=error), incoming
        )


def open_outbox(options: OutboxOptions) -> Outbox:
    if options.spool_path is None:
        log.warning(
            "BRIDGE_SPOOL_PATH=none: events held for the broker are lost if the bridge stops"
        )
        return MemoryOutbox(options.max_bytes, options.max_age)
    try:
        return SpoolOutbox(options.spool_path, options.max_bytes, options.max_age)
    except SpoolError as exc:
        raise ConfigError([str(exc)]) from None


class HasBridgeOptions(Protocol):
    """What builds :class:`BridgeOptions`: ``bridge.config.Settings``, typed without pydantic."""

    def bridge_options(self) -> BridgeOptions: ...


class Bridge:
    """One reader, one broker. ``start()``, then ``stop()`` (from any thread).

    Takes checked options, or settings to check (the tests pass ``Settings``; a bad one
    raises :class:`ConfigError` here, before anything starts). ``on_fatal(name)`` is called
    (from the dying thread) when one of its threads dies: the runner then exits non-zero.
    """

    def __init__(
        self,
        options: BridgeOptions | HasBridgeOptions,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        if not isinstance(options, BridgeOptions):
            options = options.bridge_options()
        self.options = options
        self.topics = options.topics
        self._on_fatal = on_fatal or (lambda name: None)
        self._stopping = False
        self._batch: list[tuple[bytes, float]] = []  # the events of the current read
        self._garbage = Throttle(log)
        self.reader = ReaderLink(
            options.reader,
            self._on_frame,
            self._on_skipped,
            self._on_reader_state,
            on_batch=self._on_read,
        )
        self.outbox = open_outbox(options.outbox)
        self.mqtt = MqttLink(
            options.mqtt,
            self.topics,
            options.identity,
            self._on_command,
            outbox=self.outbox,
            discovery=options.discovery,
            live_max_age=options.live_max_age,
            on_fatal=self._fatal,
        )
        self.commands = CommandWorker(options.commands, self.reader, self.mqtt)
        self._threads = [
            watched_thread("reader", self.reader.run, self._fatal, lambda: self._stopping),
            watched_thread("commands", self.commands.run, self._fatal, lambda: self._stopping),
        ]
        self._dead: list[str] = []
        self.http: HealthServer | None = None
        if options.http is not None:
            from bridge.health import HealthServer  # noqa: PLC0415 - see the TYPE_CHECKING import

            self.http = HealthServer(options.http, self, on_fatal=self._fatal)

    def _fatal(self, name: str) -> None:
        """A thread the bridge depends on died (logged with its traceback by then)."""
        if name not in self._dead:
            self._dead.append(name)
        self._on_fatal(name)

    def start(self) -> None:
        if self.http is not None:
            self.http.start()  # first: a port already in use stops us before anything runs
        log.info(
            "bridging reader %s:%d to broker %s:%d as %s",
            self.reader.options.host,
            self.reader.options.port,
            self.mqtt.options.host,
            self.mqtt.options.port,
            self.topics.base,
        )
        discovery = self.options.discovery
        if discovery is not None and discovery.node != self.topics.device_id:
            # docs/home-assistant.md: node ids allow [A-Za-z0-9_-] only; "door.1" and "door_1"
            # would become one device in Home Assistant, each bridge overwriting the other.
            log.warning(
                "BRIDGE_DEVICE_ID %r appears in Home Assistant as %r (discovery topics allow "
                "only letters, digits, '_' and '-'): another reader whose id differs only in "
                "other characters would share its device; such ids are best avoided",
                self.topics.device_id,
                discovery.node,
            )
        self.mqtt.start()
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        """Stop reading, finish commands, deliver what is pending, publish ``offline``."""
        self._stopping = True
        if self.http is not None:
            self.http.stop()
        self.reader.stop()
        self.commands.stop()
        for thread in self._threads:
            thread.join(timeout)
        self.mqtt.stop(drain_timeout=timeout)
        log.info("stopped")

    def abort(self, timeout: float = 1.0) -> None:
        """After a thread died: free the reader's one slot and keep the spool as it is,
        but say no goodbye to the broker (its last will tells ``offline,dead``)."""
        self._stopping = True
        if self.http is not None:
            self.http.stop()
        self.reader.stop()
        for thread in self._threads:
            thread.join(timeout)
        self.mqtt.abort(timeout)

    # -- what the health listener reads (its own threads) ----------------------------------

    def dead_loops(self) -> list[str]:
        """Names of the bridge's threads that died (paho's network thread included); all
        of them before ``start``."""
        dead = [thread.name for thread in self._threads if not thread.is_alive()]
        if self._stopping:
            return dead
        return sorted({*dead, *self._dead, *self.mqtt.dead_loops()})

    def is_alive(self) -> bool:
        return not self.dead_loops()

    def snapshot(self) -> Snapshot:
        """The counters the parts keep anyway, and the link states, read now."""
        from bridge.health import Snapshot  # noqa: PLC0415 - loaded already by its only caller

        reader, mqtt = self.reader.counters, self.mqtt.counters
        backlog = self.mqtt.backlog
        last = reader.last_frame_at
        return Snapshot(
            reader_up=self.reader.is_up,
            reader_down_reason=self.reader.down_reason,
            broker_connected=self.mqtt.is_connected,
            received=reader.frames,
            parse_errors=reader.skipped,
            published=mqtt.published,
            rejected=mqtt.rejected,
            buffered=backlog,
            dropped=self.mqtt.dropped,
            held_bytes=self.mqtt.held_bytes,
            spooled=backlog if isinstance(self.outbox, SpoolOutbox) else 0,
            commands_ok=self.commands.sent,
            commands_refused=self.commands.refused,
            commands_expired=self.commands.expired,
            reader_connects=reader.connects,
            broker_connects=mqtt.connects,
            last_event_age=None if last is None else time.monotonic() - last,
        )

    # -- reader callbacks (reader thread) -------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("event %s", frame.payload[:200].decode("utf-8", "replace"))
        self._batch.append((frame.payload, time.time()))

    def _on_read(self) -> None:
        # The events of one read are spooled in one transaction: durable before anything
        # else happens, without a disk write per event; then published from this thread.
        batch, self._batch = self._batch, []
        self.mqtt.publish_events(batch)

    def _on_skipped(self, skipped: Skipped) -> None:
        self._garbage.warning(
            "garbage",
            "skipped %d byte(s) from the reader: %s (starts %r)",
            skipped.size,
            skipped.reason,
            skipped.sample.decode("ascii", "backslashreplace"),
        )

    def _on_reader_state(self, up: bool, reason: str) -> None:
        self.mqtt.set_reader_up(up)

    def _on_command(self, incoming: IncomingCommand) -> None:
        self.commands.submit(incoming)
