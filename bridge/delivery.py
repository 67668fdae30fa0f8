"""Events on their way to the broker: the outbox's only owner. It decides which event goes
next, keeps the window of messages in flight, applies the broker's acknowledgements and holds
new events back after a reconnection until paho's re-sends are acknowledged. No paho here
(``mqtt.MqttLink`` publishes what this hands out), no clock but for reports, no lock: it is
used from the event loop's one thread (docs/architecture.md §5).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from bridge.outbox import Outbox, Pending

log = logging.getLogger(__name__)

WINDOW = 100
"""Messages handed to paho at once (in flight, not yet acknowledged)."""


class Delivery:
    """The outbox, the window of messages in flight, and the acknowledgements."""

    def __init__(self, outbox: Outbox, event_topic: str, window: int = WINDOW) -> None:
        self.window = window
        self.published = 0  # events the broker acknowledged
        self.rejected = 0  # events the broker refused (v5 reason code >= 0x80)
        self._outbox = outbox
        self._event_topic = event_topic
        self._inflight: dict[int, Pending | None] = {}  # mid -> event (None: not an event)
        self._connection = 0  # the broker connection the window was last checked against
        self._held: set[int] = set()  # events paho re-sends after a reconnection (mids)
        self._late = 0  # late events delivered since the last report
        self._oldest_late = 0.0  # seconds the oldest of them had waited

    # -- events in ----------------------------------------------------------------------

    def put(self, events: Sequence[tuple[bytes, float]]) -> None:
        """Queue the events of one read (payload, ``time.time()`` when read), in order;
        :meth:`commit` makes them durable (once per loop turn: a group commit)."""
        self._outbox.put_many(events)

    def next_seq(self) -> int:
        """The ``seq`` the next event put gets (consecutive for the events of one put)."""
        return self._outbox.next_seq()

    def commit(self) -> None:
        self._outbox.commit()

    # -- events out ---------------------------------------------------------------------

    def sync(self, connection: int) -> None:
        """Before anything is published on broker connection number ``connection``.

        paho re-sends the messages still in flight after a reconnection itself, right after
        ``on_connect`` returns: new events wait until the events among those are
        acknowledged (order kept). Only those: status, meta or discovery published on the
        new connection must not hold events back (a broker that stalled then would hold
        every event behind a config's PUBACK)."""
        if connection != self._connection:
            self._connection = connection
            self._held = {mid for mid, item in self._inflight.items() if item is not None}

    def next_event(self, connection: int) -> Pending | None:
        """The next event to publish on broker connection number ``connection``, or ``None``
        while the window is full, events from before a reconnection are not acknowledged
        yet (:meth:`sync`), or nothing waits."""
        self.sync(connection)
        if self._held or len(self._inflight) >= self.window:
            return None
        return self._outbox.take()

    def record(self, mid: int, item: Pending | None) -> None:
        """``mid`` was just handed to paho: an event, or another message (``None``)."""
        self._inflight[mid] = item

    def give_back(self, item: Pending) -> None:
        """paho did not take ``item`` (QoS 0 while disconnected): first in line again."""
        self._outbox.give_back(item)

    def acknowledged(self, mid: int, refusal: str | None = None) -> bool:
        """paho's ``on_publish``: ``refusal`` is the broker's reason, if it refused. True
        when it was an event's (its row may go)."""
        item = self._inflight.pop(mid, None)  # unknown mid: published outside the window
        self._held.discard(mid)
        if item is None:
            return False
        self._outbox.ack(item)
        self._note_late(item)
        if refusal is None:
            self.published += 1
            return True
        self.rejected += 1
        log.error(
            "broker refused event seq %d (%s): check the broker's ACL for %s",
            item.seq,
            refusal,
            self._event_topic,
        )
        return True

    def _note_late(self, item: Pending) -> None:
        """Count the late events delivered; once an outage's backlog is gone, say so once."""
        if item.late:
            self._late += 1
            self._oldest_late = max(self._oldest_late, time.time() - item.received_at)
            if not self._outbox.unacked():
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

    # -- what it holds --------------------------------------------------------------------

    def in_flight(self) -> int:
        return len(self._inflight)

    def has_waiting(self) -> bool:
        """Events wait in the outbox, not handed to paho yet."""
        return self._outbox.queued() > 0

    def unacked(self) -> int:
        """Events not yet acknowledged (queued or in flight)."""
        return self._outbox.unacked()

    def held_bytes(self) -> int:
        return self._outbox.held_bytes()

    @property
    def dropped(self) -> dict[str, int]:
        return dict(self._outbox.dropped)

    @property
    def is_spooled(self) -> bool:
        """Events are held on disk (a spool), not only in memory."""
        return self._outbox.durable

    @property
    def is_grouped(self) -> bool:
        """The outbox commits with a fleet's other readers (one transaction, one checkpoint
        schedule for the shared spool)."""
        return self._outbox.grouped

    # -- upkeep ---------------------------------------------------------------------------

    def flush(self) -> None:
        """Delete acknowledged rows, drop what grew too old, log due drop summaries."""
        self._outbox.flush()

    def checkpoint(self) -> None:
        self._outbox.checkpoint()

    def close(self) -> None:
        self._outbox.close()
