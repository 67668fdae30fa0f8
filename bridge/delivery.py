"""Events on their way to the broker: which one goes next, how many are in flight, which
the broker has acknowledged. No paho here: ``mqtt.MqttLink`` publishes, this decides.

Two rules keep paho 2.2 from deadlocking (docs/paho.md §6, paho #226, #346): ``lock`` is held
around every ``publish()`` together with the bookkeeping of what was published, and is never
taken inside a paho callback; ``on_publish`` only calls :meth:`Delivery.acknowledged`, which
appends to a deque (atomic, no lock), and whoever next holds ``lock`` applies it
(:meth:`Delivery.settle`). So any thread may publish - the reader thread straight after a
read (no hand-over to another thread on the hot path), the pump when the window was full -
and the order of events still holds: both take them from the one outbox under ``lock``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from bridge.outbox import Outbox, Pending

log = logging.getLogger(__name__)

WINDOW = 100
"""Messages handed to paho at once (in flight, not yet acknowledged)."""


class Delivery:
    """The outbox, the window of messages in flight, and the acknowledgements."""

    def __init__(self, outbox: Outbox, event_topic: str, window: int = WINDOW) -> None:
        self.outbox = outbox
        self.window = window
        self.lock = threading.Lock()
        self.published = 0  # events the broker acknowledged
        self.rejected = 0  # events the broker refused (v5 reason code >= 0x80)
        self._event_topic = event_topic
        self._acks: deque[tuple[int, str | None]] = deque()
        self._inflight: dict[int, Pending | None] = {}  # mid -> event (None: not an event)
        self._connection = 0  # the broker connection the window was last checked against
        self._held: set[int] = set()  # events paho re-sends after a reconnection (mids)
        self._late = 0  # late events delivered since the last report
        self._oldest_late = 0.0  # seconds the oldest of them had waited

    def acknowledged(self, mid: int, refusal: str | None = None) -> None:
        """paho's ``on_publish`` (any thread, no lock): ``refusal`` is the reason, if any."""
        self._acks.append((mid, refusal))

    def waiting_acks(self) -> int:
        """Acknowledgements not applied yet (any thread, no lock: a moment's count)."""
        return len(self._acks)

    # -- under ``lock`` ------------------------------------------------------------------

    def record(self, mid: int, item: Pending | None) -> None:
        """``mid`` was just handed to paho (under the same hold of ``lock`` as publish())."""
        self._inflight[mid] = item

    def settle(self) -> None:
        """Apply the acknowledgements that arrived since the last call."""
        while self._acks:
            mid, refusal = self._acks.popleft()
            item = self._inflight.pop(mid, None)  # unknown mid: published outside the window
            self._held.discard(mid)
            if item is None:
                continue
            self.outbox.ack(item)
            self._note_late(item)
            if refusal is None:
                self.published += 1
                continue
            self.rejected += 1
            log.error(
                "broker refused event seq %d (%s): check the broker's ACL for %s",
                item.seq,
                refusal,
                self._event_topic,
            )

    def _note_late(self, item: Pending) -> None:
        """Count the late events delivered; once an outage's backlog is gone, say so once."""
        if item.late:
            self._late += 1
            self._oldest_late = max(self._oldest_late, time.time() - item.received_at)
            if not self.outbox.unacked():
                self._report_late()
        elif self._late:  # acknowledged in order: every late one before it is delivered
            self._report_late()

    def _report_late(self) -> None:
        log.info(
            "delivered %d late events, oldest %.1f s (held while the broker was away)",
            self._late,
            self._oldest_late,
        )
        self._late, self._oldest_late = 0, 0.0

    def sync(self, connection: int) -> None:
        """Before anything is published on broker connection number ``connection``.

        paho re-sends the messages still in flight after a reconnection itself, right after
        ``on_connect`` returns: new events wait until the events among those are
        acknowledged (order kept). Only those: status, meta or discovery published on the
        new connection must not hold events back (they did, when this was worked out at the
        first event: a broker that then stalled held every event behind a config's PUBACK)."""
        if connection != self._connection:
            self._connection = connection
            self._held = {mid for mid, item in self._inflight.items() if item is not None}

    def next_event(self, connection: int) -> Pending | None:
        """The next event to publish on broker connection number ``connection``, or ``None``
        while the window is full, events from before a reconnection are not acknowledged
        yet (:meth:`sync`), or nothing waits."""
        self.settle()
        self.sync(connection)
        if self._held or len(self._inflight) >= self.window:
            return None
        return self.outbox.take()

    def in_flight(self) -> int:
        return len(self._inflight)

    def unacked(self) -> int:
        """Events not yet acknowledged (queued or in flight)."""
        self.settle()
        return self.outbox.unacked()
