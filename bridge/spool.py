"""The spool file: opening it safely, owning it alone, and starting afresh when it is corrupt.

``bridge.spool_outbox.SpoolOutbox`` keeps events in it; this module only opens, locks, checks and
closes the SQLite file. What it guarantees:

* one bridge per file: an exclusive ``flock`` held for the life of the process; a second
  bridge given the same path stops at start-up (exit status 2) instead of mixing its events
  with the first one's. ``flock`` locks are independent of the POSIX locks SQLite takes, and
  the locked descriptor stays open until SQLite's own are closed (closing any descriptor of
  a file drops the process's POSIX locks on it, SQLite's too);
* the file is private: created with mode 0600 (card ids are personal data), tightened to
  0600 if it was wider; SQLite gives its -wal and -shm files the same mode;
* a corrupt spool never stops the bridge: it is renamed aside with a time stamp, one ERROR
  line says so, and a fresh one is started. A file that is not SQLite at all is not the
  bridge's own state, though: it is left alone and reported as a bad setting.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import sqlite3
import stat
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

HEADER = b"SQLite format 3\x00"
AUTOCHECKPOINT_PAGES = 10_000
CHECKPOINT_GAP = 10.0
"""Seconds within which a second checkpoint is skipped (upkeep asks every 30 s per reader)."""
_CORRUPT = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


class SpoolError(Exception):
    """The spool cannot be used; ``str()`` is one line naming BRIDGE_SPOOL_PATH."""


class _CorruptError(Exception):
    """SQLite found the file corrupt (SQLITE_CORRUPT, SQLITE_NOTADB, or quick_check)."""


@dataclass
class Spool:
    """An open, locked spool file."""

    path: Path
    db: sqlite3.Connection
    lock_fd: int
    checkpointer: sqlite3.Connection | None = None
    checkpointed: float = -math.inf  # time.monotonic() of the last checkpoint

    @classmethod
    def open(cls, path: Path) -> Spool:
        """Open (create) the spool at ``path``; :class:`SpoolError` if it cannot be used."""
        lock_fd = _lock(path)
        try:
            try:
                db = _connect(path)
            except _CorruptError as exc:
                os.close(lock_fd)
                _move_aside(path, exc)
                lock_fd = _lock(path)
                db = _connect(path)
        except (OSError, sqlite3.Error) as exc:
            with contextlib.suppress(OSError):
                os.close(lock_fd)
            raise SpoolError(f"BRIDGE_SPOOL_PATH: cannot open the spool {path}: {exc}") from None
        return cls(path, db, lock_fd)

    def create_table(self, fleet: bool) -> None:
        """The events table, created if it is not there yet: ``events`` for one reader, or
        ``fleet_events``, where the readers of a fleet keep their rows by (reader, seq)."""
        if fleet:
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS fleet_events (reader TEXT NOT NULL, "
                "seq INTEGER NOT NULL, received_at REAL NOT NULL, payload BLOB NOT NULL, "
                "PRIMARY KEY (reader, seq)) WITHOUT ROWID"
            )
        else:
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS events "
                "(seq INTEGER PRIMARY KEY, received_at REAL NOT NULL, payload BLOB NOT NULL)"
            )
        self.db.commit()

    def checkpoint(self) -> None:
        """Copy committed pages from the write-ahead log into the database (PASSIVE: never
        blocks the writer), on a connection of its own, so that it may run in another
        thread than the writer's; the only fsyncs in WAL mode with synchronous=NORMAL.
        The readers of a fleet share the spool: one checkpoint serves them all, so one
        asked for within CHECKPOINT_GAP s of the last is skipped."""
        now = time.monotonic()
        if now - self.checkpointed < CHECKPOINT_GAP:
            return
        self.checkpointed = now
        if self.checkpointer is None:
            self.checkpointer = sqlite3.connect(self.path, check_same_thread=False)
            self.checkpointer.execute("PRAGMA cache_size=-256")  # KiB: it only copies pages
        self.checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.close()
        self.db.close()
        os.close(self.lock_fd)  # last: SQLite's descriptors are closed now


def _lock(path: Path) -> int:
    """Create ``path`` if needed (mode 0600), check it is SQLite, and lock it; the descriptor."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SpoolError(f"BRIDGE_SPOOL_PATH: {path} is not a regular file")
        if info.st_mode & 0o077 and info.st_uid == os.getuid():
            os.fchmod(fd, 0o600)  # card ids are personal data
        head = os.pread(fd, len(HEADER), 0)
        if head and not HEADER.startswith(head[: len(HEADER)]):
            raise SpoolError(
                f"BRIDGE_SPOOL_PATH: {path} is not a spool (not an SQLite file); "
                "it was left untouched: point BRIDGE_SPOOL_PATH at a new file"
            )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SpoolError(
                f"BRIDGE_SPOOL_PATH: {path} is in use by another running bridge; "
                "give each bridge its own spool"
            ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _connect(path: Path) -> sqlite3.Connection:
    """Open the database, check it, and make sure the table exists."""
    db = sqlite3.connect(path, check_same_thread=False)  # used under the caller's lock
    try:
        _prepare(db)
    except sqlite3.DatabaseError as exc:
        db.close()
        if exc.sqlite_errorcode in _CORRUPT:
            raise _CorruptError(str(exc)) from None
        raise
    except BaseException:
        db.close()
        raise
    return db


def _prepare(db: sqlite3.Connection) -> None:
    """Settings, a quick check, the table."""
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    # SQLite's default page cache (2 MiB) filled slowly as the queue slid through the
    # file: RSS crept up over a million events. The hot pages (both ends of the queue)
    # fit in far less; the rest is in the OS page cache anyway.
    db.execute("PRAGMA cache_size=-512")  # KiB
    # Checkpoints run in Spool.checkpoint(), from the pump, so no commit in the reader's
    # path waits for a disk flush (they put the 2,000 events/s p99 at 15-40 ms); this
    # is only a safety net.
    db.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
    (verdict,) = db.execute("PRAGMA quick_check(1)").fetchone()
    if verdict != "ok":
        raise _CorruptError(f"quick_check: {verdict}")
    db.commit()


def _move_aside(path: Path, error: _CorruptError) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        with contextlib.suppress(FileNotFoundError):
            source.rename(aside.with_name(aside.name + suffix))
    log.error(
        "the spool %s is corrupt (%s): moved it aside to %s and started a fresh one; "
        "the events it held are not delivered",
        path,
        error,
        aside,
    )


def check_spool(path: Path) -> str | None:
    """For ``check``: ``None`` when a bridge could use the spool at ``path``, else why not.

    It creates nothing: a missing file is fine if its directory could hold it."""
    if path.exists():
        if not path.is_file():
            return f"{path} is not a regular file"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            return f"cannot open {path}: {exc.strerror}"
        try:
            head = os.pread(fd, len(HEADER), 0)
            if head and not HEADER.startswith(head[: len(HEADER)]):
                return f"{path} is not a spool (not an SQLite file)"
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return f"{path} is in use by a running bridge"
        finally:
            os.close(fd)
        return None
    directory = path.parent
    while not directory.exists():  # the bridge creates the missing directories
        directory = directory.parent
    if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
        return f"cannot create {path}: {directory} is not a writable directory"
    return None
