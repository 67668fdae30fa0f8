"""The outboxes on their own: order, bounds, durability of the spool, its checkpoints."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from bridge.outbox import MemoryOutbox, Outbox, SpoolOutbox


def events(start: int, stop: int) -> list[tuple[bytes, float]]:
    return [(b'{"n":%d}' % n, 1e9 + n) for n in range(start, stop)]


@pytest.fixture(params=["memory", "spool"])
def outbox(request: pytest.FixtureRequest, tmp_path: Path) -> Outbox:
    if request.param == "memory":
        return MemoryOutbox(max_events=10, max_age=1e12)
    return SpoolOutbox(tmp_path / "spool.db", max_events=10, max_age=1e12)


def drain(outbox: Outbox) -> list[bytes]:
    taken = []
    while (item := outbox.take()) is not None:
        outbox.ack(item.seq)
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


def test_a_batch_past_the_bound_drops_the_oldest_waiting(outbox: Outbox):
    outbox.put_many(events(0, 4))
    assert outbox.take() is not None  # in flight: not dropped, not counted against the bound
    outbox.put_many(events(4, 16))
    outbox.commit()
    assert outbox.dropped == 5
    assert drain(outbox) == [p for p, _ in events(6, 16)]


def test_given_back_event_comes_out_first_again(outbox: Outbox):
    outbox.put_many(events(0, 3))
    first = outbox.take()
    assert first is not None
    outbox.give_back(first)
    assert drain(outbox) == [p for p, _ in events(0, 3)]


def test_spool_keeps_committed_unacknowledged_events_across_a_reopen(tmp_path: Path):
    path = tmp_path / "spool.db"
    spool = SpoolOutbox(path, max_events=100, max_age=1e12)
    spool.put_many(events(0, 6))
    spool.commit()
    for _ in range(2):
        item = spool.take()
        assert item is not None
        spool.ack(item.seq)
    spool.close()
    again = SpoolOutbox(path, max_events=100, max_age=1e12)
    assert drain(again) == [p for p, _ in events(2, 6)]
    again.close()


def test_checkpoint_moves_the_write_ahead_log_into_the_database(tmp_path: Path):
    path = tmp_path / "spool.db"
    spool = SpoolOutbox(path, max_events=10_000, max_age=1e12)
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
    spool = SpoolOutbox(tmp_path / "spool.db", max_events=10_000, max_age=1e12)
    spool.put_many(events(0, count))
    spool.commit()
    spool.close()
    again = SpoolOutbox(tmp_path / "spool.db", max_events=10_000, max_age=1e12)
    assert drain(again) == [p for p, _ in events(0, count)]
    again.close()
