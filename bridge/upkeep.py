"""When the outbox's disk work happens, so that SQLite stays off the path of an event.

* One commit per loop turn, after the turn's writes to the broker (a group commit): every
  read of the turn becomes durable against a crash of the bridge in one transaction, and the
  rows acknowledged since the last commit are deleted in it.
* When no event comes to carry them, acknowledged rows are deleted on their own: at once
  when FLUSH_ROWS have gathered (a backlog draining), else FLUSH_AFTER s after the first
  (after a crash, those not deleted yet go out twice, with the same ``seq``).
* Checkpoints - the only fsyncs in WAL mode with ``synchronous=NORMAL`` - run in the one
  SQLite worker thread, off the loop, at most every CHECKPOINT_EVERY s while anything is
  written. A power cut of the host can lose what was committed since the last one (SQLite's
  guarantee in that mode); a crash of the bridge loses nothing committed.

Each timer is armed by work to do and by nothing else: an idle bridge has none. On this
project's 2-core VM a wake-up of the process costs 150-400 us of CPU whatever it does, so
wake-ups are what the schedule saves (issue 11, CPU per event at 1 event/s): a delete and a
checkpoint after every acknowledgement took the bridge from ~0.9 to ~2.1 ms per event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from bridge.delivery import Delivery

log = logging.getLogger(__name__)

FLUSH_ROWS = 500
"""Acknowledged rows that are deleted at once, without waiting for FLUSH_AFTER."""
FLUSH_AFTER = 30.0
"""Seconds after an acknowledgement within which its row is deleted, at the latest."""
CHECKPOINT_EVERY = 30.0
"""Seconds between two checkpoints, at most, while anything is written."""
SQLITE_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
"""The one thread that checkpoints spools, for every reader of the process."""


class Checkpoints:
    """Checkpoints of one spool file in the SQLite worker thread, at most every
    CHECKPOINT_EVERY s while anything is written, armed by the writes and by nothing else. A
    one-reader bridge's upkeep has one; a fleet has one for its shared spool (its
    ``CommitGroup``'s), not one per reader."""

    def __init__(self, checkpoint: Callable[[], None]) -> None:
        self._checkpoint_now = checkpoint
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._running: Future[None] | None = None

    def arm(self) -> None:
        if self._timer is None:
            self._timer = self._loop.call_later(CHECKPOINT_EVERY, self._run)

    def _run(self) -> None:
        self._timer = None
        if self._running is not None:  # the last one still runs: try again later
            self.arm()
            return
        self._running = SQLITE_WORKER.submit(self._checkpoint_now)
        self._running.add_done_callback(
            lambda done: self._loop.call_soon_threadsafe(self._done, done)
        )

    def _done(self, done: Future[None]) -> None:
        self._running = None
        if (error := done.exception()) is not None:
            log.warning("spool checkpoint failed: %s (tried again later)", error)

    def cancel(self) -> None:
        """No more timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def close(self) -> None:
        """No more timer; wait for a running checkpoint (before the spool closes)."""
        self.cancel()
        if self._running is not None:
            await asyncio.wrap_future(self._running)


class SpoolUpkeep:
    """Schedules one delivery's commits, deletions and checkpoints on the running loop. A
    fleet's reader (its outbox in a commit group) has its acknowledged rows deleted by the
    group's next transaction and leaves checkpoints to the group: no timer of its own."""

    def __init__(self, delivery: Delivery) -> None:
        self._delivery = delivery
        self._loop = asyncio.get_running_loop()
        self._commit_due = False
        self._acked = 0
        self._flush: asyncio.Handle | None = None
        self._checkpoints = None if delivery.is_grouped else Checkpoints(delivery.checkpoint)

    def written(self) -> None:
        """Events were put: one commit at the end of this loop turn."""
        if not self._commit_due:
            self._commit_due = True
            self._loop.call_soon(self._commit)

    def acknowledged(self) -> None:
        """An event's row may go: with the next commit, or in a batch of its own."""
        if not self._delivery.is_spooled:
            return
        if self._delivery.is_grouped:  # the group's next transaction, within GROUP_DELAY
            self._delivery.commit()
            return
        self._acked += 1
        if self._acked >= FLUSH_ROWS:
            if self._flush is not None:
                self._flush.cancel()
            self._flush = self._loop.call_soon(self._delete)
        elif self._flush is None:
            self._flush = self._loop.call_later(FLUSH_AFTER, self._delete)

    def _commit(self) -> None:
        self._commit_due = False
        self._delivery.commit()  # the acknowledged rows went with it
        self._acked = 0
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        self._arm_checkpoint()

    def _delete(self) -> None:
        self._flush = None
        self._acked = 0
        self._delivery.flush()
        self._arm_checkpoint()

    def _arm_checkpoint(self) -> None:
        if self._delivery.is_spooled and self._checkpoints is not None:
            self._checkpoints.arm()

    async def close(self) -> None:
        """No more timers; wait for a running checkpoint (before the spool closes)."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._checkpoints is not None:
            await self._checkpoints.close()
