"""One reader's life on the event loop: its reader link, its outbox, its MQTT session and its
command worker, started and stopped together.

An event walks reader → protocol → :class:`EventPath` → MQTT link → paho within one loop
turn, without a hand-over; a command walks MQTT link → :class:`bridge.worker.CommandWorker`
→ reader link the same way (docs/architecture.md §3, §4). A session is what a fleet holds one
of per reader. Nothing here imports pydantic: it gets checked :class:`BridgeOptions`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from bridge.answerer import AllowFiles, Answerer
from bridge.delivery import Delivery
from bridge.held_results import HeldResults
from bridge.logs import Throttle
from bridge.loops import Fatal, watched_task
from bridge.mqtt import LocalResult, MqttLink, Result, Sweep
from bridge.options import BridgeOptions, ConfigError, OutboxOptions
from bridge.outbox import MemoryOutbox, Outbox
from bridge.protocol import Frame, Skipped
from bridge.reader import ReaderLink
from bridge.spool import SpoolError
from bridge.spool_outbox import SpoolOutbox
from bridge.worker import CommandWorker

if TYPE_CHECKING:  # the health listener's types; prometheus_client only when it is on
    from bridge.health import Snapshot

log = logging.getLogger(__name__)

STOP_READER = 2.0
"""Seconds the reader link gets to close before its task is cancelled."""


class EventPublisher(Protocol):
    """What the event path hands frames and link changes to (the MQTT link)."""

    def publish_events(self, events: list[tuple[bytes, float]]) -> None: ...
    def next_seq(self) -> int: ...
    def set_reader_up(self, up: bool) -> None: ...


class EventPath:
    """What the reader link reads, on its way to MQTT: frames stamped with the time they
    were read, shown to the answerer first (if the bridge answers reads itself), garbage
    logged (throttled), the link's state passed on."""

    def __init__(self, publisher: EventPublisher, answerer: Answerer | None = None) -> None:
        self._publisher = publisher
        self.answerer = answerer
        self._garbage = Throttle(log)

    def frames(self, frames: list[Frame]) -> None:
        now = time.time()
        if log.isEnabledFor(logging.DEBUG):
            for frame in frames:
                log.debug("event %s", frame.payload[:200].decode("utf-8", "replace"))
        answerer = self.answerer
        answers = answerer.reads(frames, self._publisher.next_seq()) if answerer else []
        self._publisher.publish_events([(frame.payload, now) for frame in frames])
        if answerer and answers:
            # after the events are written to the broker: giving the answer first, or in
            # the same write, delayed the event by a fifth to a third (bench.py --local)
            answerer.give(answers)

    def skipped(self, skipped: Skipped) -> None:
        self._garbage.warning(
            "garbage",
            "skipped %d byte(s) from the reader: %s (starts '%s')",
            skipped.size,
            skipped.reason,
            repr(skipped.sample)[2:-1],  # text, with \x escapes for what is not ASCII
        )

    def link_changed(self, up: bool, reason: str) -> None:
        self._publisher.set_reader_up(up)


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


class Session:
    """One reader, bridged. Build it in the running loop; :meth:`start`, then :meth:`stop`."""

    def __init__(
        self,
        options: BridgeOptions,
        sweep: Sweep,
        on_fatal: Fatal,
        outbox: Outbox | None = None,
        allow_files: AllowFiles | None = None,
    ) -> None:
        """``outbox``: a fleet's reader gets one in the fleet's shared spool; else the
        session opens its own (``ConfigError`` if the spool cannot be used). ``allow_files``:
        the allow files a fleet's readers share."""
        self.options = options
        self.topics = options.topics
        self._on_fatal = on_fatal
        self.dead: list[str] = []  # parts that died (named in /healthz)
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        outbox = open_outbox(options.outbox) if outbox is None else outbox
        self.delivery = Delivery(outbox, options.topics.event)
        events = EventPath(self)
        self.reader = ReaderLink(options.reader, events)
        self.commands = CommandWorker(options.commands, self.reader, self, self.topics.command)
        self.mqtt = MqttLink(
            options, self.commands, self.delivery, sweep=sweep, on_fatal=self._fatal
        )
        if isinstance(outbox, SpoolOutbox):  # local results held through an outage, too
            held = HeldResults(outbox.spool, outbox.reader)
            self.mqtt.outgoing.held = held
            self.mqtt.outgoing.results.extend(held.load())
        self.answerer = None
        if options.local is not None:
            self.answerer = Answerer(options.local, self.commands, self, allow_files)
            self.commands.on_reached = self.answerer.command_reached
            events.answerer = self.answerer

    def _fatal(self, name: str) -> None:
        if name not in self.dead:
            self.dead.append(name)
        self._on_fatal(name)

    # -- what the parts hand each other (EventPublisher, ResultSink) -------------------------

    def publish_events(self, events: list[tuple[bytes, float]]) -> None:
        self.mqtt.publish_events(events)

    def next_seq(self) -> int:
        return self.delivery.next_seq()

    @property
    def is_connected(self) -> bool:
        return self.mqtt.is_connected

    def note_reply(self, seq: int, word: str) -> None:
        self.mqtt.outgoing.note_reply(seq, word)

    def set_reader_up(self, up: bool) -> None:
        self.mqtt.set_reader_up(up)

    def publish_result(self, result: Result | LocalResult) -> None:
        self.mqtt.publish_result(result)

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        reader, mqtt = self.options.reader, self.options.mqtt
        log.info(
            "bridging reader %s:%d to broker %s:%d as %s",
            reader.host,
            reader.port,
            mqtt.host,
            mqtt.port,
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
        stopping: Callable[[], bool] = lambda: self._stopping  # noqa: E731
        self._tasks = [
            watched_task("reader", self.reader.run(), self._fatal, stopping),
            watched_task("commands", self.commands.run(), self._fatal, stopping),
        ]
        self.mqtt.start()

    async def stop(self, timeout: float = 3.0) -> None:
        """Stop reading, drop waiting commands, deliver what is pending, publish ``offline``."""
        self._stopping = True
        self.reader.stop()
        if self.answerer is not None:
            self.answerer.close()
        reader, commands = self._tasks or (None, None)
        if commands is not None:
            commands.cancel()
        if reader is not None:
            await asyncio.wait([reader], timeout=STOP_READER)
            reader.cancel()
        await self.mqtt.stop(drain_timeout=timeout)

    def abort(self) -> None:
        """After a fatal error: free the reader's slot, keep the spool as it is, no goodbye
        to the broker (its last will says ``offline,dead``)."""
        self._stopping = True
        self.reader.stop()
        if self.answerer is not None:
            self.answerer.close()
        for task in self._tasks:
            task.cancel()
        self.mqtt.abort()

    # -- what the health listener reads ------------------------------------------------------

    def dead_loops(self) -> list[str]:
        """Names of this reader's parts that are not running (all of them before start)."""
        if self._stopping:
            return []
        if not self._tasks:
            return ["commands", "reader"]
        ended = {task.get_name() for task in self._tasks if task.done()}
        return sorted(ended | set(self.dead))

    def snapshot(self) -> Snapshot:
        """The counters the parts keep anyway, and the link states, read now."""
        from bridge.health import Snapshot  # noqa: PLC0415 - loaded already by its only caller

        reader, delivery = self.reader.counters, self.delivery
        backlog = delivery.unacked()
        local = dict(self.commands.local)
        if self.answerer is not None:
            local["withdrawn"] += self.answerer.withdrawn
        last = reader.last_frame_at
        return Snapshot(
            reader_up=self.reader.is_up,
            reader_down_reason=self.reader.down_reason,
            broker_connected=self.mqtt.is_connected,
            received=reader.frames,
            parse_errors=reader.skipped,
            published=delivery.published,
            rejected=delivery.rejected,
            buffered=backlog,
            dropped=delivery.dropped,
            held_bytes=delivery.held_bytes(),
            spooled=backlog if delivery.is_spooled else 0,
            commands_ok=self.commands.sent,
            commands_refused=self.commands.refused,
            commands_expired=self.commands.expired,
            local_answers=local,
            reader_connects=reader.connects,
            broker_connects=self.mqtt.connects,
            last_event_age=None if last is None else time.monotonic() - last,
        )
