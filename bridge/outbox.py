"""Events waiting for the broker: in memory, or in a SQLite spool that survives a crash.

An outbox hands events out in order, one at a time, and forgets each only when the broker
has acknowledged it (``ack``). It is bounded by count and by age: when more than
``max_events`` wait to be handed out, the oldest of them is dropped and counted (the few
already handed to paho, at most ``mqtt.WINDOW``, cannot be taken back and are not counted).
The caller (``mqtt.MqttLink``) serialises every call under its own lock and never holds that
lock around paho's ``publish()``.

The spool is SQLite in WAL mode with ``synchronous=NORMAL``. The events of one read are
committed in one transaction before the next read, so a crash (SIGKILL, OOM) of the bridge
loses at most the read in progress - which no order of steps can save, the reader has sent
it - and only a power cut within the last moments could lose more (SQLite's own guarantee
for that mode). The caller may hand events to paho before that commit, in the same step:
that only lets the broker see them earlier, it never makes a crash lose more. Acknowledged rows are
deleted in batches (``flush``), so after a crash a few events may be sent twice - with the
same ``seq``, which tells the duplicate.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

WINDOW_ROWS = 500
"""Queued spool rows kept in memory at a time; the rest stay on disk."""
AGE_CHECK = 10.0
AUTOCHECKPOINT_PAGES = 10_000
INSERT_SIZES = (256, 64, 16, 4, 1)
"""Rows per INSERT statement (3 variables each: 768 at most, under SQLite's oldest limit
of 999)."""
"""Seconds between two scans for events older than the age limit."""


@dataclass(slots=True)
class Pending:
    """One event waiting for the broker."""

    seq: int
    payload: bytes
    received_at: float  # time.time() when the bridge read it


class Outbox(Protocol):
    dropped: int

    def put_many(self, events: Sequence[tuple[bytes, float]]) -> None: ...
    def take(self) -> Pending | None: ...
    def give_back(self, item: Pending) -> None: ...
    def ack(self, seq: int) -> None: ...
    def unacked(self) -> int: ...
    def queued(self) -> int: ...
    def commit(self) -> None: ...
    def flush(self) -> None: ...
    def checkpoint(self) -> None: ...
    def close(self) -> None: ...


@functools.lru_cache(maxsize=len(INSERT_SIZES))
def _insert_sql(rows: int) -> str:
    values = ", ".join(["(?, ?, ?)"] * rows)
    return f"INSERT INTO events (seq, received_at, payload) VALUES {values}"  # noqa: S608


def first_seq() -> int:
    """Sequence numbers start from the clock in microseconds: they increase across restarts."""
    return time.time_ns() // 1000


class _Bounds:
    """Counting and logging of dropped events, shared by both outboxes."""

    def __init__(self, max_events: int, max_age: float) -> None:
        self.max_events = max_events
        self.max_age = max_age
        self.dropped = 0

    def _report_drop(self, count: int, why: str) -> None:
        before = self.dropped
        self.dropped += count
        if before == 0 or before // 1000 != self.dropped // 1000:
            log.warning(
                "dropped %d undelivered event(s), the oldest, %s; %d dropped so far",
                count,
                why,
                self.dropped,
            )


class MemoryOutbox(_Bounds):
    """The outbox without a spool: lost if the bridge itself stops."""

    def __init__(self, max_events: int, max_age: float) -> None:
        super().__init__(max_events, max_age)
        self._queue: deque[Pending] = deque()
        self._out: set[int] = set()
        self._seq = first_seq()

    def put_many(self, events: Sequence[tuple[bytes, float]]) -> None:
        """Queue events (payload, ``time.time()`` when read), in order."""
        for payload, received_at in events:
            self._seq += 1
            self._queue.append(Pending(self._seq, payload, received_at))
        excess = len(self._queue) - self.max_events
        if excess > 0:
            for _ in range(excess):
                self._queue.popleft()
            self._report_drop(excess, f"outbox full ({self.max_events} events, BRIDGE_OUTBOX_SIZE)")

    def take(self) -> Pending | None:
        if not self._queue:
            return None
        item = self._queue.popleft()
        self._out.add(item.seq)
        return item

    def give_back(self, item: Pending) -> None:
        self._out.discard(item.seq)
        self._queue.appendleft(item)

    def ack(self, seq: int) -> None:
        self._out.discard(seq)

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
            self._queue.popleft()
            old += 1
        if old:
            self._report_drop(old, f"older than {self.max_age:g} s (BRIDGE_OUTBOX_MAX_AGE)")

    def checkpoint(self) -> None:
        """Nothing on disk."""

    def close(self) -> None:
        """Nothing to keep."""


class SpoolOutbox(_Bounds):
    """The outbox on disk: what the broker has not acknowledged survives a crash."""

    def __init__(self, path: Path, max_events: int, max_age: float) -> None:
        super().__init__(max_events, max_age)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # One connection, used by several threads but always under the caller's lock.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # SQLite's default page cache (2 MiB) fills slowly as the queue slides through the
        # file: RSS crept up over a million events. The hot pages (both ends of the queue)
        # fit in far less; the rest is in the OS page cache anyway.
        self._db.execute("PRAGMA cache_size=-512")  # KiB
        # Checkpoints (the only fsyncs in this mode) run in checkpoint(), from another
        # thread on another connection, so no commit in the reader's path waits for a disk
        # flush (they put the 2,000 events/s p99 at 15-40 ms); this is only a safety net.
        self._db.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
        self._checkpointer: sqlite3.Connection | None = None
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS events "
            "(seq INTEGER PRIMARY KEY, received_at REAL NOT NULL, payload BLOB NOT NULL)"
        )
        self._window: deque[Pending] = deque()
        self._staged: list[tuple[int, float, bytes]] = []  # put, not yet written
        self._window_complete = False  # every queued row is in the window
        self._acked: list[int] = []
        self._out: set[int] = set()  # handed out, not yet acknowledged
        self._closed = False
        self._age_checked = 0.0
        self._drop_older_than(time.time() - max_age)
        row = self._db.execute("SELECT COUNT(*), MAX(seq) FROM events").fetchone()
        self._count: int = row[0]
        self._seq = max(first_seq(), (row[1] or 0) + 1)
        self._cursor = 0  # highest seq handed out
        if self._count:
            log.info("spool %s holds %d undelivered event(s) from before", path, self._count)

    def put_many(self, events: Sequence[tuple[bytes, float]]) -> None:
        """Queue events (payload, ``time.time()`` when read), in order. They are written
        and made durable by the next ``commit()`` (one per read, not one per event), so
        they can be taken before any disk work: SQLite stays off the latency path."""
        rows = [(self._seq + n, at, payload) for n, (payload, at) in enumerate(events, 1)]
        if not rows:
            return
        self._seq += len(rows)
        self._staged += rows
        self._count += len(rows)
        if self._window_complete:
            if len(self._window) + len(rows) <= WINDOW_ROWS:
                self._window.extend(Pending(seq, payload, at) for seq, at, payload in rows)
            else:
                self._window_complete = False
        excess = self._count - len(self._out) - self.max_events
        if excess > 0:
            self._drop_oldest_queued(excess)

    def _write_staged(self) -> None:
        """Write the rows put since the last write, in the open transaction."""
        if not self._staged:
            return
        if not self._db.in_transaction:
            self._db.execute("BEGIN")  # committed by commit() or flush()
        # Many rows per statement: sqlite3 releases and retakes the GIL around every step,
        # so executemany() (one step per row) handed the GIL to paho's thread and back once
        # per event at full load.
        # Chunks of 256, 128, ... 1 rows: few steps, and few distinct statements for SQLite's
        # statement cache to hold (each prepared one keeps its memory).
        rows, start = self._staged, 0
        for size in INSERT_SIZES:
            while len(rows) - start >= size:
                chunk = rows[start : start + size]
                self._db.execute(_insert_sql(size), [value for row in chunk for value in row])
                start += size
        self._staged = []

    def _drop_oldest_queued(self, count: int) -> None:
        self._write_staged()  # the rows to delete must be there
        dropped = 0
        while dropped < count:
            self._fill_window()
            if not self._window:
                break
            oldest = self._window.popleft()
            self._db.execute("DELETE FROM events WHERE seq = ?", (oldest.seq,))
            dropped += 1
        self._count -= dropped
        if dropped:
            self._report_drop(dropped, f"spool full ({self.max_events} events, BRIDGE_OUTBOX_SIZE)")

    def commit(self) -> None:
        """Make every event put so far durable (one transaction for a whole read's events)."""
        self._write_staged()
        if self._db.in_transaction:
            self._db.execute("COMMIT")

    def _fill_window(self) -> None:
        if self._window or self._window_complete:
            return
        self._write_staged()  # the query must see every row put
        rows = self._db.execute(
            "SELECT seq, payload, received_at FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (self._cursor, WINDOW_ROWS),
        ).fetchall()
        self._window.extend(Pending(seq, bytes(payload), at) for seq, payload, at in rows)
        self._window_complete = len(rows) < WINDOW_ROWS

    def take(self) -> Pending | None:
        self._fill_window()
        if not self._window:
            return None
        item = self._window.popleft()
        self._cursor = item.seq
        self._out.add(item.seq)
        return item

    def give_back(self, item: Pending) -> None:
        self._out.discard(item.seq)
        self._window.appendleft(item)
        self._cursor = item.seq - 1

    def ack(self, seq: int) -> None:
        if seq in self._out:
            self._out.discard(seq)
            self._acked.append(seq)
            self._count -= 1

    def unacked(self) -> int:
        return self._count

    def queued(self) -> int:
        return self._count - len(self._out)

    def flush(self) -> None:
        """Delete acknowledged rows and (every AGE_CHECK s) rows past the age limit."""
        self.commit()
        acked, self._acked = self._acked, []
        if acked and max(acked) - min(acked) + 1 == len(acked):
            # Acknowledgements come in order: one range delete instead of one per row.
            self._db.execute(
                "DELETE FROM events WHERE seq BETWEEN ? AND ?", (min(acked), max(acked))
            )
        elif acked:
            self._db.executemany("DELETE FROM events WHERE seq = ?", ((s,) for s in acked))
        now = time.monotonic()
        if now - self._age_checked < AGE_CHECK:
            return
        self._age_checked = now
        dropped = self._drop_older_than(time.time() - self.max_age, queued_only=True)
        if dropped:
            self._count -= dropped
            self._window.clear()
            self._window_complete = False

    def _drop_older_than(self, cutoff: float, queued_only: bool = False) -> int:
        floor = self._cursor if queued_only else 0
        deleted = self._db.execute(
            "DELETE FROM events WHERE received_at < ? AND seq > ?", (cutoff, floor)
        ).rowcount
        if deleted:
            self._report_drop(deleted, f"older than {self.max_age:g} s (BRIDGE_OUTBOX_MAX_AGE)")
        return deleted

    def checkpoint(self) -> None:
        """Copy committed pages from the write-ahead log into the database (PASSIVE: never
        blocks the writer). The one call that may be made without the caller's lock, by
        one thread at a time: it has its own connection."""
        if self._closed:
            return
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(self.path, check_same_thread=False)
            self._checkpointer.execute("PRAGMA cache_size=-256")  # KiB: it only copies pages
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        """Flush and close; closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        self.flush()
        if self._checkpointer is not None:
            self._checkpointer.close()
        self._db.close()
