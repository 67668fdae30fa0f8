"""The outboxes on their own: order, byte and age bounds, durability of the spool, its
checkpoints, a full disk, a corrupt or foreign file, a second bridge on the same file."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from bridge.outbox import MEMORY_OVERHEAD, MemoryOutbox, Outbox
from bridge.spool import SpoolError, check_spool
from bridge.spool_outbox import SPOOL_ROW_OVERHEAD, SpoolOutbox

MB = 1024 * 1024
PAYLOAD = 8  # bytes of b'{"n":NN}' for NN < 100


def events(start: int, stop: int, at: float = 1e9) -> list[tuple[bytes, float]]:
    return [(b'{"n":%02d}' % n, at + n) for n in range(start, stop)]


def room_for(kind: str, count: int) -> int:
    """A byte bound that holds exactly ``count`` of the test's events."""
    return count * (PAYLOAD + (MEMORY_OVERHEAD if kind == "memory" else SPOOL_ROW_OVERHEAD))


def make(kind: str, path: Path, events_held: int = 10, max_age: float = 1e12) -> Outbox:
    if kind == "memory":
        return MemoryOutbox(room_for(kind, events_held), max_age)
    return SpoolOutbox(path / "spool.db", room_for(kind, events_held), max_age)


@pytest.fixture(params=["memory", "spool"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def outbox(kind: str, tmp_path: Path) -> Outbox:
    return make(kind, tmp_path)


def drain(outbox: Outbox) -> list[bytes]:
    taken = []
    while (item := outbox.take()) is not None:
        outbox.ack(item)
        taken.append(item.payload)
    return taken


def test_events_come_out_in_order_with_increasing_seq(outbox: Outbox):
    outbox.put_many(events(0, 3))
    outbox.put_many(events(3, 5))
    outbox.commit()
    items = [outbox.take() for _ in range(5)]
    assert [item.payload for item in items if item] == [p for p, _ in events(0, 5)]
    seqs = [item.seq for item in items if item]
    assert seqs == sorted(seqs)
    assert outbox.take() is None
    assert (outbox.queued(), outbox.unacked()) == (0, 5)


def test_a_burst_far_past_any_count_is_held_whole_within_the_byte_bound(kind: str, tmp_path):
    """Issue 10: a count bound of 10,000 lost most of a 30,000-event burst."""
    outbox = make(kind, tmp_path, events_held=40_000)
    for start in range(0, 30_000, 100):
        outbox.put_many(events(start, start + 100))
        outbox.commit()
    assert outbox.dropped == {"size": 0, "age": 0}
    assert outbox.unacked() == 30_000
    taken = drain(outbox)
    assert len(taken) == 30_000
    assert taken[:2] == [b'{"n":00}', b'{"n":01}']
    assert outbox.held_bytes() == 0


def test_past_the_byte_bound_the_oldest_waiting_are_dropped_and_counted(outbox: Outbox, caplog):
    outbox.put_many(events(0, 4))
    assert outbox.take() is not None  # handed to paho: never dropped
    outbox.put_many(events(4, 16))
    outbox.commit()
    # 16 events, room for 10 waiting ones: the one in flight stays on top of them (its
    # bytes cannot be freed), and the five oldest waiting go.
    assert outbox.dropped == {"size": 5, "age": 0}
    assert drain(outbox) == [p for p, _ in events(6, 16)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # one line per burst of drops, not one per event
    assert "reason size" in warnings[0]
    assert "MAX_MB" in warnings[0]


def test_held_bytes_follow_puts_acknowledgements_and_drops(kind: str, outbox: Outbox):
    outbox.put_many(events(0, 3))
    outbox.commit()
    assert outbox.held_bytes() == room_for(kind, 3)
    item = outbox.take()
    assert item is not None
    outbox.ack(item)
    assert outbox.held_bytes() == room_for(kind, 2)
    outbox.ack(item)  # a second acknowledgement of the same event counts nothing
    assert outbox.held_bytes() == room_for(kind, 2)


def test_events_older_than_the_age_bound_are_dropped_as_age(kind: str, tmp_path: Path, caplog):
    outbox = make(kind, tmp_path, max_age=60.0)
    now = time.time()
    outbox.put_many(events(0, 3, at=now - 3600))
    outbox.put_many(events(3, 5, at=now))
    outbox.flush()  # the first flush looks at ages; later ones every AGE_CHECK s
    assert outbox.dropped == {"size": 0, "age": 3}
    assert drain(outbox) == [p for p, _ in events(3, 5, at=now)]
    assert any("reason age" in r.getMessage() for r in caplog.records)


def test_given_back_event_comes_out_first_again(outbox: Outbox):
    outbox.put_many(events(0, 3))
    first = outbox.take()
    assert first is not None
    outbox.give_back(first)
    assert drain(outbox) == [p for p, _ in events(0, 3)]


def test_a_full_disk_drops_the_oldest_waiting_events_not_the_bridge(tmp_path: Path, caplog):
    """SQLITE_FULL, as a full file system gives it, from SQLite's own page limit."""
    spool = SpoolOutbox(tmp_path / "spool.db", 100 * MB, 1e12)
    spool._db.execute("PRAGMA max_page_count=8")  # the test's full disk: 8 pages of 4 KiB
    big = [(b'{"d":"%s"}' % (b"x" * 900), 1e9 + n) for n in range(40)]
    for start in range(0, 40, 2):
        spool.put_many(big[start : start + 2])
        spool.commit()
    kept = drain(spool)
    assert spool.dropped["size"] > 0
    assert len(kept) + spool.dropped["size"] == 40
    assert kept == [payload for payload, _ in big[40 - len(kept) :]]  # the newest survive
    assert any("is full" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    spool.close()


def test_spool_file_is_private(tmp_path: Path):
    path = tmp_path / "spool.db"
    SpoolOutbox(path, MB, 1e12).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    SpoolOutbox(path, MB, 1e12).close()  # an older, wider file is tightened
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_second_bridge_on_the_same_spool_is_refused(tmp_path: Path):
    path = tmp_path / "spool.db"
    first = SpoolOutbox(path, MB, 1e12)
    with pytest.raises(SpoolError, match="in use by another running bridge"):
        SpoolOutbox(path, MB, 1e12)
    assert check_spool(path) == f"{path} is in use by a running bridge"
    first.close()
    assert check_spool(path) is None
    SpoolOutbox(path, MB, 1e12).close()


def test_corrupt_spool_is_moved_aside_and_a_fresh_one_started(tmp_path: Path, caplog):
    path = tmp_path / "spool.db"
    spool = SpoolOutbox(path, MB, 1e12)
    spool.put_many(events(0, 50))
    spool.commit()
    spool.close()
    with path.open("r+b") as raw:  # the header stays; the pages behind it do not
        raw.seek(100)
        raw.write(os.urandom(3000))
    fresh = SpoolOutbox(path, MB, 1e12)
    assert fresh.unacked() == 0
    fresh.put_many(events(0, 2))
    fresh.commit()
    assert drain(fresh) == [p for p, _ in events(0, 2)]
    fresh.close()
    aside = [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "moved it aside" in errors[0]


def test_a_file_that_is_not_sqlite_is_left_untouched(tmp_path: Path):
    path = tmp_path / "notes.txt"
    path.write_text("my notes, not a spool\n")
    with pytest.raises(SpoolError, match="not a spool"):
        SpoolOutbox(path, MB, 1e12)
    assert path.read_text() == "my notes, not a spool\n"
    assert check_spool(path) == f"{path} is not a spool (not an SQLite file)"


def test_check_spool_tells_an_unwritable_place(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "not a writable directory" in str(check_spool(blocker / "sub" / "spool.db"))
    assert check_spool(tmp_path / "new" / "deeper" / "spool.db") is None
    assert not (tmp_path / "new").exists()  # check creates nothing


def test_spool_reopened_over_a_lowered_bound_drops_its_oldest(tmp_path: Path):
    path = tmp_path / "spool.db"
    spool = SpoolOutbox(path, MB, 1e12)
    spool.put_many(events(0, 20))
    spool.commit()
    spool.close()
    again = SpoolOutbox(path, room_for("spool", 5), 1e12)
    assert again.dropped["size"] == 15
    assert drain(again) == [p for p, _ in events(15, 20)]
    again.close()


def test_spool_keeps_committed_unacknowledged_events_across_a_reopen(tmp_path: Path):
    path = tmp_path / "spool.db"
    spool = SpoolOutbox(path, max_bytes=MB, max_age=1e12)
    spool.put_many(events(0, 6))
    spool.commit()
    for _ in range(2):
        item = spool.take()
        assert item is not None
        spool.ack(item)
    spool.close()
    again = SpoolOutbox(path, max_bytes=MB, max_age=1e12)
    assert drain(again) == [p for p, _ in events(2, 6)]
    again.close()


def test_checkpoint_moves_the_write_ahead_log_into_the_database(tmp_path: Path):
    path = tmp_path / "spool.db"
    spool = SpoolOutbox(path, max_bytes=MB, max_age=1e12)
    spool.put_many(events(0, 2000))
    spool.commit()

    def rows_in_database_file() -> int:
        copy = tmp_path / "copy.db"  # the database file alone, without its -wal
        shutil.copyfile(path, copy)
        probe = sqlite3.connect(copy)
        try:
            tables = probe.execute("SELECT name FROM sqlite_master").fetchall()
            return probe.execute("SELECT COUNT(*) FROM events").fetchone()[0] if tables else 0
        finally:
            probe.close()
            copy.unlink()

    assert rows_in_database_file() == 0  # committed, but only in the log so far
    spool.checkpoint()
    assert rows_in_database_file() == 2000
    spool.close()


@pytest.mark.parametrize("count", [1, 3, 17, 300, 1000])
def test_spool_writes_every_row_of_a_large_read(tmp_path: Path, count: int):
    spool = SpoolOutbox(tmp_path / "spool.db", max_bytes=MB, max_age=1e12)
    spool.put_many(events(0, count))
    spool.commit()
    spool.close()
    again = SpoolOutbox(tmp_path / "spool.db", max_bytes=MB, max_age=1e12)
    assert drain(again) == [p for p, _ in events(0, count)]
    again.close()
