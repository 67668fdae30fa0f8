"""The outbox on disk: events wait in a SQLite spool that survives a crash of the bridge.

The spool is SQLite in WAL mode with ``synchronous=NORMAL`` (``bridge.spool`` opens it). The
events of a loop turn are committed in one transaction at its end (``bridge.upkeep``), so a
crash (SIGKILL, OOM) of the bridge loses at most the turn in progress - which no order of steps
can save, the reader has sent it - and only a power cut could lose what came since the last
checkpoint (SQLite's own guarantee for that mode). The caller may hand events to paho before
that commit, in the same turn: that only lets the broker see them earlier, it never makes a
crash lose more. Acknowledged rows are deleted in batches (with the next commit, or
``flush``), so after a crash a few events may be sent twice - with the same ``seq``, which tells
the duplicate. A full disk (``SQLITE_FULL``) costs events, counted under ``size``, never the
bridge.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path

from bridge.outbox import AGE_CHECK, Bounds, Pending, Pool, first_seq
from bridge.spool import Spool
from bridge.upkeep import Checkpoints

log = logging.getLogger("bridge.outbox")

GROUP_DELAY = 0.01
"""Seconds a fleet's reader's rows wait for other readers' to share their transaction."""
WINDOW_ROWS = 500
"""Queued spool rows kept in memory at a time; the rest stay on disk."""
INSERT_SIZES = (200, 64, 16, 4, 1)
"""Rows per INSERT statement (3 variables each, 4 in a fleet's table: 800 at most, under
SQLite's oldest limit of 999)."""
SPOOL_ROW_OVERHEAD = 32
"""Bytes a spool row takes besides its payload (seq, time, record header), roughly."""


@functools.lru_cache(maxsize=2 * len(INSERT_SIZES))
def _insert_sql(fleet: bool, rows: int) -> str:
    if fleet:
        values = ", ".join(["(?, ?, ?, ?)"] * rows)
        return f"INSERT INTO fleet_events (reader, seq, received_at, payload) VALUES {values}"  # noqa: S608
    values = ", ".join(["(?, ?, ?)"] * rows)
    return f"INSERT INTO events (seq, received_at, payload) VALUES {values}"  # noqa: S608


def _row_size(payload: bytes) -> int:
    return len(payload) + SPOOL_ROW_OVERHEAD


class SpoolOutbox(Bounds):
    """The outbox on disk: what the broker has not acknowledged survives a crash.

    Given a path, it opens the spool file for itself (one reader, table ``events``). A
    fleet's readers share one open :class:`Spool` instead and one table, ``fleet_events``,
    keyed by (``reader``, ``seq``): each reader's rows keep their order and their ``seq``, and
    every reader runs the same few statements (a table per reader made SQLite prepare its
    statements again and again, beyond its cache, and hold thousands). They also share one
    :class:`Pool` for the byte bound and one :class:`CommitGroup`; closing such an outbox
    leaves the spool open."""

    durable = True

    def __init__(
        self,
        spool: Path | Spool,
        max_bytes: int,
        max_age: float,
        *,
        reader: str | None = None,
        pool: Pool | None = None,
        group: CommitGroup | None = None,
    ) -> None:
        super().__init__(max_bytes, max_age, "BRIDGE_SPOOL_MAX_MB", pool)
        self._owns_spool = not isinstance(spool, Spool)
        # Locked for this process; a corrupt file moved aside.
        self._spool = Spool.open(spool) if isinstance(spool, Path) else spool
        self.path = self._spool.path
        # The rows of this outbox: all of ``events``, or this reader's of ``fleet_events``.
        self._fleet = reader is not None
        self._table = "fleet_events" if self._fleet else "events"
        self._mine = "reader = ? AND " if self._fleet else ""
        self._key: tuple[str, ...] = () if reader is None else (reader,)
        self.reader = reader or ""  # this outbox's key in the spool's tables
        self._group = group
        self.grouped = group is not None
        self._db = self._spool.db
        self._spool.create_table(fleet=self._fleet)
        self._window: deque[Pending] = deque()
        self._staged: list[tuple[int, float, bytes]] = []  # put, not yet written
        self._window_complete = False  # every queued row is in the window
        self._acked: list[int] = []
        self._out: set[int] = set()  # handed out, not yet acknowledged
        self._closed = False
        self._age_checked = 0.0
        self._cursor = 0  # highest seq handed out
        self._drop_older_than(time.time() - max_age)
        count, top, payload_bytes = self._db.execute(
            f"SELECT COUNT(*), MAX(seq), TOTAL(LENGTH(payload)) FROM {self._table} "  # noqa: S608
            f"WHERE {self._mine}1",
            self._key,
        ).fetchone()
        self._count: int = count
        self._bytes = int(payload_bytes) + count * SPOOL_ROW_OVERHEAD
        self._seq = max(first_seq(), (top or 0) + 1)
        if self._count:
            log.info("spool %s holds %d undelivered event(s) from before", self.path, self._count)
        self._make_room()  # the bound may have been lowered since they were spooled

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
        self._bytes += sum(_row_size(payload) for _, _, payload in rows)
        if self._window_complete:
            if len(self._window) + len(rows) <= WINDOW_ROWS:
                self._window.extend(Pending(seq, payload, at) for seq, at, payload in rows)
            else:
                self._window_complete = False
        self._make_room()

    def next_seq(self) -> int:
        """The ``seq`` the next event put gets."""
        return self._seq + 1

    @property
    def spool(self) -> Spool:
        return self._spool

    def commit(self) -> None:
        """The loop turn's commit (``bridge.upkeep``): at once, or - for a fleet's reader -
        joined to the shared spool's group commit (:class:`CommitGroup`)."""
        if self._group is None:
            self._commit_now()
        elif self._staged or self._acked:
            self._group.add(self)

    def _commit_now(self) -> None:
        """Write and make durable every event put so far (one transaction for a whole loop
        turn's events), deleting in the same transaction the rows acknowledged since the
        last one. With the disk full, the oldest waiting events make room; if that is not
        enough, the new ones are dropped (still delivered if paho has them)."""
        if not self._staged:
            return
        rows, acked = self._take_staged()
        try:
            self._insert(rows, acked)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                raise
            self._acked = acked + self._acked  # rolled back: deleted later
            self._on_disk_full(rows)

    def _take_staged(self) -> tuple[list[tuple[int, float, bytes]], list[int]]:
        rows, self._staged = self._staged, []
        acked, self._acked = self._acked, []
        return rows, acked

    def _insert(self, rows: list[tuple[int, float, bytes]], acked: Sequence[int] = ()) -> None:
        with self._db:  # one transaction: committed, or rolled back on an error
            self._write(rows, acked)

    def _write(self, rows: list[tuple[int, float, bytes]], acked: Sequence[int]) -> None:
        # Many rows per statement: executemany() costs one step per row, each releasing and
        # taking the GIL again. Chunks of 256, 64, ... 1 rows: few steps, and few distinct
        # statements for SQLite's statement cache to hold (each prepared one keeps memory).
        start = 0
        for size in INSERT_SIZES:
            while len(rows) - start >= size:
                chunk = rows[start : start + size]
                values = [value for row in chunk for value in (*self._key, *row)]
                self._db.execute(_insert_sql(self._fleet, size), values)
                start += size
        if acked:
            self._delete_rows(acked)

    def _on_disk_full(self, rows: list[tuple[int, float, bytes]]) -> None:
        needed = sum(_row_size(payload) for _, _, payload in rows)
        log.error(
            "the disk holding the spool %s is full: dropping the oldest waiting events", self.path
        )
        waiting = self._bytes - self._out_bytes
        doomed = self._drop_oldest_queued(target=max(0, waiting - 2 * needed), written=False)
        rows = [row for row in rows if row[0] not in doomed]
        try:
            self._insert(rows)
            lost: set[int] = set()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                raise
            lost = {seq for seq, _, _ in rows} - self._out  # handed to paho: still delivered
            for seq, _, payload in rows:
                if seq in lost:
                    self._count -= 1
                    self._bytes -= _row_size(payload)
            self._report_drop(len(lost), "size")
        # The window may hold rows that never reached the disk: read it again from there.
        self._window.clear()
        self._window_complete = False

    def _drop_oldest_queued(self, target: int | None = None, written: bool = True) -> set[int]:
        """Drop the oldest events not handed out yet until ``target`` bytes (the bound) are
        held; their seqs. ``written``: the staged rows may be among them, so they are
        written first (else they are the caller's)."""
        if written:
            self._commit_now()
        doomed: list[int] = []
        while self._over_bound(target):
            self._fill_window()
            if not self._window:
                break
            oldest = self._window.popleft()
            self._cursor = max(self._cursor, oldest.seq)  # never handed out: skip it
            doomed.append(oldest.seq)
            self._count -= 1
            self._bytes -= _row_size(oldest.payload)
        if doomed:
            self._delete(doomed)
            self._report_drop(len(doomed), "size")
        return set(doomed)

    def drop_oldest(self, target: int) -> None:
        self._drop_oldest_queued(target)

    def _delete(self, seqs: Iterable[int]) -> None:
        self._delete_rows(seqs)
        self._db.commit()

    def _delete_rows(self, seqs: Iterable[int]) -> None:
        seqs = sorted(seqs)
        if seqs[-1] - seqs[0] + 1 == len(seqs):
            # In order, as acknowledgements and drops come: one range instead of one per row.
            self._db.execute(
                f"DELETE FROM {self._table} WHERE {self._mine}seq BETWEEN ? AND ?",  # noqa: S608
                (*self._key, seqs[0], seqs[-1]),
            )
        else:
            self._db.executemany(
                f"DELETE FROM {self._table} WHERE {self._mine}seq = ?",  # noqa: S608
                ((*self._key, s) for s in seqs),
            )

    def _fill_window(self) -> None:
        if self._window or self._window_complete:
            return
        self._commit_now()  # the query must see every row put
        rows = self._db.execute(
            f"SELECT seq, payload, received_at FROM {self._table} "  # noqa: S608
            f"WHERE {self._mine}seq > ? ORDER BY seq LIMIT ?",
            (*self._key, self._cursor, WINDOW_ROWS),
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
        self._out_bytes += _row_size(item.payload)
        return item

    def give_back(self, item: Pending) -> None:
        self._out.discard(item.seq)
        self._out_bytes -= _row_size(item.payload)
        self._window.appendleft(item)
        self._cursor = item.seq - 1

    def ack(self, item: Pending) -> None:
        if item.seq in self._out:
            self._out.discard(item.seq)
            self._acked.append(item.seq)
            self._count -= 1
            self._bytes -= _row_size(item.payload)
            self._out_bytes -= _row_size(item.payload)

    def unacked(self) -> int:
        return self._count

    def queued(self) -> int:
        return self._count - len(self._out)

    def flush(self) -> None:
        """Delete acknowledged rows and (every AGE_CHECK s) rows past the age limit."""
        self._commit_now()
        if self._acked:
            try:
                self._delete(self._acked)
                self._acked = []
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                    raise
                # Kept for the next flush; a crash meanwhile would only send them twice.
                self._db.rollback()
        self.flush_log()
        now = time.monotonic()
        if now - self._age_checked < AGE_CHECK:
            return
        self._age_checked = now
        if self._drop_older_than(time.time() - self.max_age, queued_only=True):
            self._window.clear()
            self._window_complete = False

    def _drop_older_than(self, cutoff: float, queued_only: bool = False) -> int:
        floor = self._cursor if queued_only else 0
        where = f"WHERE {self._mine}received_at < ? AND seq > ?"
        values = (*self._key, cutoff, floor)
        count, payload_bytes = self._db.execute(
            f"SELECT COUNT(*), TOTAL(LENGTH(payload)) FROM {self._table} {where}",  # noqa: S608
            values,
        ).fetchone()
        if not count:
            return 0
        self._db.execute(f"DELETE FROM {self._table} {where}", values)  # noqa: S608
        self._db.commit()
        if queued_only:  # at start-up the totals are read afterwards
            self._count -= count
            self._bytes -= int(payload_bytes) + count * SPOOL_ROW_OVERHEAD
        self._report_drop(count, "age")
        return int(count)

    def checkpoint(self) -> None:
        """Copy committed pages from the write-ahead log into the database (never blocks
        the writer; the only fsyncs in this mode)."""
        if not self._closed:
            self._spool.checkpoint()

    def close(self) -> None:
        """Flush and close; closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        self.flush()
        self._leave_pool()
        if self._owns_spool:
            self._spool.close()


class CommitGroup:
    """One transaction for the turns of every reader of a fleet that put events within
    GROUP_DELAY s: at a thousand readers, one event each per second, a transaction per event
    was a fifth of the process's CPU (py-spy, issue 12). A crash of the process can then lose
    events read within the last GROUP_DELAY s - each was handed to paho in the turn that read
    it, so only those the broker had not received yet. With the disk full, each reader's rows
    go through its own commit and its own disk-full handling instead."""

    def __init__(self, spool: Spool) -> None:
        self._db = spool.db
        self._loop = asyncio.get_running_loop()
        self._pending: dict[SpoolOutbox, None] = {}  # in the order they joined
        self._timer: asyncio.TimerHandle | None = None
        self.checkpoints = Checkpoints(spool.checkpoint)  # one schedule for the shared file

    def add(self, outbox: SpoolOutbox) -> None:
        self._pending[outbox] = None
        if self._timer is None:
            self._timer = self._loop.call_later(GROUP_DELAY, self.commit)

    def commit(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = list(self._pending), {}
        work = [(outbox, outbox._take_staged()) for outbox in pending if not outbox._closed]
        try:
            with self._db:
                for outbox, (rows, acked) in work:
                    outbox._write(rows, acked)
            self.checkpoints.arm()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                raise
            for outbox, (rows, acked) in work:  # rolled back: each on its own
                outbox._staged[:0] = rows
                outbox._acked[:0] = acked
                outbox._commit_now()
