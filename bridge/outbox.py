"""Events waiting for the broker: in memory, or in a SQLite spool that survives a crash.

An outbox hands events out in order, one at a time, and forgets each only when the broker
has acknowledged it (``ack``). It is bounded in bytes and by age, never by a count: a burst
that comes faster than the broker takes it waits here and drains at the broker's pace.
Only when the bytes of the waiting events pass the bound (``BRIDGE_SPOOL_MAX_MB``, or
``BRIDGE_MEMORY_MAX_MB`` without a spool) is the oldest waiting event dropped, counted under
the reason ``size``; an event older than ``BRIDGE_OUTBOX_MAX_AGE`` is dropped under ``age``.
Events already handed to paho (a window of at most ``delivery.WINDOW``) cannot be taken back:
they are never dropped, and their bytes come on top of the bound.
Its one user is ``delivery.Delivery``, in the event loop's thread.
The spool's own guarantees are in ``bridge.spool_outbox``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from bridge.logs import Throttle

log = logging.getLogger(__name__)

AGE_CHECK = 10.0
"""Seconds between two scans for events older than the age limit."""
MEMORY_OVERHEAD = 160
"""Bytes an event held in memory takes besides its payload (the objects around it)."""
DROP_REASONS = ("size", "age")


@dataclass(slots=True)
class Pending:
    """One event waiting for the broker."""

    seq: int
    payload: bytes
    received_at: float  # time.time() when the bridge read it
    late: bool = False  # set when published: read before the current broker connection


class Outbox(Protocol):
    dropped: dict[str, int]  # per reason, DROP_REASONS
    durable: bool  # held on disk: survives a crash of the bridge
    grouped: bool  # commits with a fleet's other outboxes (spool_outbox.CommitGroup)

    def put_many(self, events: Sequence[tuple[bytes, float]]) -> None: ...
    def next_seq(self) -> int: ...
    def take(self) -> Pending | None: ...
    def give_back(self, item: Pending) -> None: ...
    def ack(self, item: Pending) -> None: ...
    def unacked(self) -> int: ...
    def queued(self) -> int: ...
    def held_bytes(self) -> int: ...
    def commit(self) -> None: ...
    def flush(self) -> None: ...
    def checkpoint(self) -> None: ...
    def close(self) -> None: ...


def first_seq() -> int:
    """Sequence numbers start from the clock in microseconds: they increase across restarts."""
    return time.time_ns() // 1000


class Pool:
    """The byte bound that the outboxes of a fleet's readers share (README, Fleet): when the
    events waiting in all of them pass it, the outbox holding the most bytes loses its
    oldest events first, so one flooding reader cannot evict the others' events."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.waiting = 0  # bytes of the events waiting (not in flight) in every member
        self.members: set[Bounds] = set()

    def make_room(self) -> None:
        """Bring the biggest members down to one level, as low as needed to fit the bound."""
        excess = self.waiting - self.max_bytes
        if excess <= 0:
            return
        ranked = sorted(self.members, key=Bounds.waiting_bytes, reverse=True)
        sizes = [member.waiting_bytes() for member in ranked]
        top = cumulative = 0
        for top, size in enumerate(sizes, 1):  # the top members, down to the next one's level
            cumulative += size
            following = sizes[top] if top < len(sizes) else 0
            if cumulative - top * following >= excess:
                break
        level = (cumulative - excess) // top
        for member in ranked[:top]:
            member.drop_oldest(level)


class Bounds:
    """The byte and age bounds, and the counting and logging of what they drop. The bytes
    bound is the outbox's own, or a :class:`Pool`'s that it shares with other outboxes."""

    def __init__(
        self, max_bytes: int, max_age: float, size_setting: str, pool: Pool | None = None
    ) -> None:
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self._pool = pool
        self._held = 0
        self._in_flight = 0
        self._size_setting = size_setting
        self._throttle = Throttle(log)
        if pool is not None:
            pool.members.add(self)

    # Every change of these two is passed on to the pool's total: it is checked at every
    # put, and summing a thousand readers' outboxes there would cost more than the put.
    @property
    def _bytes(self) -> int:
        """Bytes of every event held, in flight or waiting."""
        return self._held

    @_bytes.setter
    def _bytes(self, value: int) -> None:
        if self._pool is not None:
            self._pool.waiting += value - self._held
        self._held = value

    @property
    def _out_bytes(self) -> int:
        """Bytes of the events handed out, in flight."""
        return self._in_flight

    @_out_bytes.setter
    def _out_bytes(self, value: int) -> None:
        if self._pool is not None:
            self._pool.waiting -= value - self._in_flight
        self._in_flight = value

    def held_bytes(self) -> int:
        """Bytes of the events held (payloads plus an estimate of what surrounds each)."""
        return self._bytes

    def waiting_bytes(self) -> int:
        """Bytes of the events waiting to be handed out (what the bound applies to)."""
        return self._held - self._in_flight

    def _over_bound(self, target: int | None = None) -> bool:
        """The waiting events take more than ``target`` bytes (the bound by default)."""
        return self._bytes - self._out_bytes > (self.max_bytes if target is None else target)

    def _make_room(self) -> None:
        """After a put: drop the oldest waiting events while the bound is passed."""
        if self._pool is not None:
            self._pool.make_room()
        elif self._over_bound():
            self.drop_oldest(self.max_bytes)

    def drop_oldest(self, target: int) -> None:
        """Drop the oldest waiting events until at most ``target`` bytes wait."""
        raise NotImplementedError

    def _leave_pool(self) -> None:
        if self._pool is not None:
            self._pool.waiting -= self.waiting_bytes()
            self._pool.members.discard(self)
            self._pool = None

    def _report_drop(self, count: int, reason: str) -> None:
        self.dropped[reason] += count
        if reason == "size":
            why = f"the outbox holds {self.max_bytes / 1048576:g} MB at most ({self._size_setting})"
        else:
            why = f"older than {self.max_age:g} s (BRIDGE_OUTBOX_MAX_AGE)"
        self._throttle.warning(
            reason,
            "dropped %d undelivered event(s), the oldest, reason %s: %s; %d dropped for %s so far",
            count,
            reason,
            why,
            self.dropped[reason],
            reason,
        )

    def flush_log(self) -> None:
        """The drop summary of the last minute, if it is due."""
        self._throttle.flush()


class MemoryOutbox(Bounds):
    """The outbox without a spool: lost if the bridge itself stops."""

    durable = False
    grouped = False

    def __init__(self, max_bytes: int, max_age: float, pool: Pool | None = None) -> None:
        super().__init__(max_bytes, max_age, "BRIDGE_MEMORY_MAX_MB", pool)
        self._queue: deque[Pending] = deque()
        self._out: set[int] = set()
        self._seq = first_seq()

    def put_many(self, events: Sequence[tuple[bytes, float]]) -> None:
        """Queue events (payload, ``time.time()`` when read), in order."""
        for payload, received_at in events:
            self._seq += 1
            self._queue.append(Pending(self._seq, payload, received_at))
            self._bytes += len(payload) + MEMORY_OVERHEAD
        self._make_room()

    def next_seq(self) -> int:
        """The ``seq`` the next event put gets."""
        return self._seq + 1

    def drop_oldest(self, target: int) -> None:
        dropped = 0
        while self._over_bound(target) and self._queue:
            self._bytes -= len(self._queue.popleft().payload) + MEMORY_OVERHEAD
            dropped += 1
        if dropped:
            self._report_drop(dropped, "size")

    def take(self) -> Pending | None:
        if not self._queue:
            return None
        item = self._queue.popleft()
        self._out.add(item.seq)
        self._out_bytes += len(item.payload) + MEMORY_OVERHEAD
        return item

    def give_back(self, item: Pending) -> None:
        self._out.discard(item.seq)
        self._out_bytes -= len(item.payload) + MEMORY_OVERHEAD
        self._queue.appendleft(item)

    def ack(self, item: Pending) -> None:
        if item.seq in self._out:
            self._out.discard(item.seq)
            self._bytes -= len(item.payload) + MEMORY_OVERHEAD
            self._out_bytes -= len(item.payload) + MEMORY_OVERHEAD

    def unacked(self) -> int:
        return len(self._queue) + len(self._out)

    def queued(self) -> int:
        return len(self._queue)

    def commit(self) -> None:
        """Nothing is durable here."""

    def flush(self) -> None:
        cutoff = time.time() - self.max_age
        old = 0
        while self._queue and self._queue[0].received_at < cutoff:
            self._bytes -= len(self._queue.popleft().payload) + MEMORY_OVERHEAD
            old += 1
        if old:
            self._report_drop(old, "age")
        self.flush_log()

    def checkpoint(self) -> None:
        """Nothing on disk."""

    def close(self) -> None:
        """Nothing to keep."""
        self._leave_pool()
