"""The readers file of a fleet (README, Fleet), the shard a reader falls in, and the byte bound
that a fleet's outboxes share. No broker, no reader: ``tests/test_fleet.py`` runs fleets."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.config import MB, load_settings
from bridge.delivery import Delivery
from bridge.fleet_file import FLEET_SPOOL, PER_READER, SHARED, fleet_options, load_fleet
from bridge.options import ConfigError
from bridge.outbox import MEMORY_OVERHEAD, MemoryOutbox, Pool
from bridge.shard import Shard, shard_of
from bridge.spool import Spool
from bridge.spool_outbox import (
    GROUP_DELAY,
    SPOOL_ROW_OVERHEAD,
    CommitGroup,
    SpoolOutbox,
)
from bridge.upkeep import SpoolUpkeep


def fleet_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "readers.toml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str, **env: object) -> list[str]:
    settings = load_settings(None, readers_file=fleet_file(tmp_path, text), **env)
    with pytest.raises(ConfigError) as caught:
        load_fleet(settings)
    return caught.value.lines


# -- precedence and values -----------------------------------------------------------------


def test_a_readers_own_table_wins_over_defaults_which_win_over_the_environment(
    tmp_path: Path, clean_env: Path
) -> None:
    path = fleet_file(
        tmp_path,
        "[defaults]\nreader_port = 4100\ncommand_timeout = 3\n"
        '[[reader]]\nreader_host = "10.0.0.1"\n'
        '[[reader]]\nreader_host = "10.0.0.2"\nreader_port = 4200\n'
        'device_id = "back"\ncommand_fields = ["Sequence", "Leds"]\n',
    )
    settings = load_settings(
        None, readers_file=path, command_timeout=9, command_gap=0.2, mqtt_host="broker"
    )
    first, second = (reader.options for reader in load_fleet(settings))
    assert (first.reader.port, second.reader.port) == (4100, 4200)
    assert first.commands.timeout == second.commands.timeout == 3  # [defaults] over env
    assert first.commands.gap == second.commands.gap == 0.2  # env where the file is silent
    assert first.mqtt.host == second.mqtt.host == "broker"  # shared
    assert first.topics.device_id == "10-0-0-1"  # derived from the host, as for one reader
    assert second.topics.device_id == "back"
    assert second.commands.allowed_fields == {"Sequence", "Leds"}  # a TOML array
    assert first.mqtt.client_id != second.mqtt.client_id  # each its own MQTT session


def test_every_reader_shares_one_spool_file_and_one_bound(tmp_path: Path, clean_env: Path):
    path = fleet_file(tmp_path, '[[reader]]\nreader_host = "a"\n[[reader]]\nreader_host = "b"\n')
    fleet = fleet_options(load_settings(None, readers_file=path, spool_max_mb=8))
    assert {reader.outbox for reader in fleet.readers} == {fleet.outbox}
    assert fleet.outbox.shared
    assert fleet.outbox.spool_path is not None
    assert fleet.outbox.spool_path.name == FLEET_SPOOL
    assert fleet.outbox.max_bytes == 8 * 1024 * 1024


def test_per_reader_keys_and_shared_settings_partition_the_settings() -> None:
    assert "reader_host" in PER_READER
    assert "mqtt_password_file" in PER_READER
    assert "mqtt_client_id" in PER_READER
    assert {"mqtt_host", "spool_path", "http_port", "log_level"} <= SHARED
    assert not PER_READER & SHARED


# -- start-up problems: one line each, naming the reader and the key --------------------------


def test_every_problem_of_the_file_is_listed_with_its_reader_and_key(
    tmp_path: Path, clean_env: Path
) -> None:
    lines = problems(
        tmp_path,
        "[defaults]\nreader_keepalive = 1\n"
        '[[reader]]\nreader_host = "10.0.0.1"\nreader_prot = 4000\n'
        '[[reader]]\nreader_host = "10.0.0.2"\nreader_keepalive = 10\nspool_path = "x"\n'
        '[[reader]]\nreader_host = "10.0.0.2"\ndevice_id = "other"\nreader_keepalive = 5\n'
        '[[reader]]\ndevice_id = "nohost"\n'
        "[extra]\nx = 1\n",
    )
    assert (
        "BRIDGE_READERS_FILE: unknown table or key 'extra' at the top level; expected "
        "[defaults] and [[reader]] tables"
    ) in lines
    assert "[[reader]] #1 (10.0.0.1): reader_prot: unknown key; did you mean reader_port?" in lines
    assert (
        "[[reader]] #1 (10.0.0.1): reader_keepalive: Input should be greater than or equal to "
        "2, got 1"
    ) in lines
    assert (
        "[[reader]] #2 (10.0.0.2): spool_path: is shared by every reader: set BRIDGE_SPOOL_PATH "
        "in the environment"
    ) in lines
    assert "[[reader]] #4 (nohost): reader_host: required, and not set" in lines
    assert (
        "[[reader]] #3 (other): reader_host: the same as [[reader]] #2's (10.0.0.2:4000); each "
        "reader needs its own"
    ) in lines
    assert len(lines) == 6, lines


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("[[reader]\n", "is not valid TOML", id="not-toml"),
        pytest.param("", "lists no [[reader]] table", id="empty"),
        pytest.param("reader = 3\n", "each reader must be a [[reader]] table", id="not-tables"),
        pytest.param("defaults = 3\n[[reader]]\nreader_host='x'\n", "must be a table", id="x"),
    ],
)
def test_a_file_that_is_not_a_readers_file_is_one_clear_line(
    tmp_path: Path, clean_env: Path, text: str, expected: str
) -> None:
    (line,) = problems(tmp_path, text)
    assert line.startswith("BRIDGE_READERS_FILE: ")
    assert expected in line


def test_a_missing_file_is_a_bad_setting(tmp_path: Path, clean_env: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, readers_file=tmp_path / "nope.toml")
    (line,) = caught.value.lines
    assert line.startswith("BRIDGE_READERS_FILE: must name a readable file")


def test_reader_host_in_the_environment_conflicts_with_a_fleet(
    tmp_path: Path, clean_env: Path
) -> None:
    lines = problems(tmp_path, '[[reader]]\nreader_host = "x"\n', reader_host="10.0.0.1")
    assert lines == [
        "BRIDGE_READER_HOST: set together with BRIDGE_READERS_FILE; give each reader's "
        "reader_host in the file and remove BRIDGE_READER_HOST"
    ]


# -- shards -------------------------------------------------------------------------------------


def test_shard_parses_k_of_n_and_refuses_the_rest() -> None:
    assert Shard.parse("2/3") == Shard(2, 3)
    assert Shard.parse(" 0 / 1 ") == Shard(0, 1)
    for bad in ("3/3", "1/0", "a/3", "/3", "1", "-1/3"):
        with pytest.raises(ValueError, match="K/N"):
            Shard.parse(bad)


def test_the_shard_of_a_device_id_is_crc32_and_stable() -> None:
    # zlib.crc32(b"front-door") == 0x31275DEE: fixed across processes, machines, versions
    assert shard_of("front-door", 1 << 32) == 0x31275DEE
    assert shard_of("front-door", 7) == 0x31275DEE % 7


@given(
    ids=st.sets(st.text(string.ascii_letters + string.digits + "-_.", min_size=1), max_size=60),
    count=st.integers(1, 12),
)
def test_every_reader_is_in_exactly_one_shard(ids: set[str], count: int) -> None:
    for device in ids:
        owners = [k for k in range(count) if Shard(k, count).holds(device)]
        assert len(owners) == 1


def test_a_shard_serves_only_its_readers(tmp_path: Path, clean_env: Path) -> None:
    text = "".join(f'[[reader]]\nreader_host = "10.0.0.{n}"\n' for n in range(1, 31))
    path = fleet_file(tmp_path, text)
    served: list[str] = []
    for k in range(3):
        fleet = fleet_options(load_settings(None, readers_file=path, shard=f"{k}/3"))
        served += [reader.topics.device_id for reader in fleet.readers]
        assert all(shard_of(device, 3) == k for device in served[-len(fleet.readers) :])
    assert sorted(served) == sorted(f"10-0-0-{n}" for n in range(1, 31))


# -- the shared byte bound ----------------------------------------------------------------------


def test_a_flooding_reader_loses_its_own_oldest_events_not_the_others() -> None:
    size = 100 + MEMORY_OVERHEAD
    pool = Pool(30 * size)
    quiet = MemoryOutbox(pool.max_bytes, 1e12, pool)
    flood = MemoryOutbox(pool.max_bytes, 1e12, pool)
    quiet.put_many([(b"q" * 100, float(n)) for n in range(5)])
    flood.put_many([(b"f" * 100, float(n)) for n in range(100)])
    assert pool.waiting == 30 * size
    assert quiet.queued() == 5  # untouched
    assert flood.queued() == 25
    assert flood.dropped == {"size": 75, "age": 0}
    assert quiet.dropped == {"size": 0, "age": 0}
    oldest = flood.take()
    assert oldest is not None
    assert oldest.received_at == 75.0  # its oldest went first


def test_the_shared_bound_levels_the_biggest_readers_down_together() -> None:
    size = 10 + MEMORY_OVERHEAD
    pool = Pool(100 * size)
    outboxes = [MemoryOutbox(pool.max_bytes, 1e12, pool) for _ in range(3)]
    for outbox, count in zip(outboxes, (10, 45, 45), strict=True):
        outbox.put_many([(b"x" * 10, 0.0)] * count)
    outboxes[0].put_many([(b"x" * 10, 0.0)] * 12)  # over by 12: the two big ones give 6 each
    assert [outbox.queued() for outbox in outboxes] == [22, 39, 39]
    assert pool.waiting == 100 * size


def test_in_flight_events_are_not_counted_nor_dropped_and_a_closed_outbox_leaves() -> None:
    size = 10 + MEMORY_OVERHEAD
    pool = Pool(10 * size)
    first, second = MemoryOutbox(pool.max_bytes, 1e12, pool), MemoryOutbox(1, 1e12, pool)
    first.put_many([(b"x" * 10, 0.0)] * 10)
    taken = [first.take() for _ in range(4)]
    assert pool.waiting == 6 * size
    second.put_many([(b"y" * 10, 0.0)] * 4)
    assert pool.waiting == 10 * size
    assert first.dropped["size"] == second.dropped["size"] == 0
    for item in taken:
        assert item is not None
        first.ack(item)
    assert pool.waiting == 10 * size
    first.close()
    assert pool.waiting == 4 * size
    assert pool.members == {second}


def test_the_shared_spool_keeps_readers_apart_and_evicts_the_flooder(tmp_path: Path) -> None:
    size = 100 + SPOOL_ROW_OVERHEAD
    spool = Spool.open(tmp_path / "fleet.db")
    pool = Pool(30 * size)
    try:
        quiet = SpoolOutbox(spool, pool.max_bytes, 1e12, reader="quiet", pool=pool)
        flood = SpoolOutbox(spool, pool.max_bytes, 1e12, reader='fl"ood', pool=pool)
        quiet.put_many([(b"q" * 100, float(n)) for n in range(5)])
        flood.put_many([(b"f" * 100, float(n)) for n in range(100)])
        quiet.commit()
        flood.commit()
        assert (quiet.queued(), flood.queued()) == (5, 25)
        assert flood.dropped["size"] == 75
        assert quiet.dropped["size"] == 0
        first = flood.take()
        assert first is not None
        assert first.received_at == 75.0
        seqs = []
        while (item := quiet.take()) is not None:
            seqs.append(item.seq)
        assert seqs == list(range(seqs[0], seqs[0] + 5))  # its own, consecutive
        quiet.close()
        flood.close()
        again = SpoolOutbox(spool, pool.max_bytes, 1e12, reader="quiet", pool=pool)
        assert again.unacked() == 5  # not acknowledged: still there for the next session
        again.close()
    finally:
        spool.close()


def test_a_fleets_readers_share_one_transaction_per_group_commit(tmp_path: Path) -> None:
    """Each reader's turn joins the group; one transaction writes them all, GROUP_DELAY later."""

    def committed() -> int:
        with contextlib.closing(sqlite3.connect(tmp_path / "fleet.db")) as reader:
            names = [row[0] for row in reader.execute("SELECT name FROM sqlite_master")]
            return sum(
                reader.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0] for name in names
            )

    async def scenario() -> tuple[int, int, int]:
        spool = Spool.open(tmp_path / "fleet.db")
        group = CommitGroup(spool)
        outboxes = [
            SpoolOutbox(spool, MB, 1e12, reader=name, group=group) for name in ("a", "b", "c")
        ]
        for outbox in outboxes:
            outbox.put_many([(b"{}", 0.0)] * 2)
            outbox.commit()  # the turn's commit: joined, not written yet
        before = committed()
        await asyncio.sleep(GROUP_DELAY * 3)
        after = committed()
        for outbox in outboxes:
            item = outbox.take()
            assert item is not None
            outbox.ack(item)
            outbox.commit()  # an acknowledged row alone joins too, to be deleted
        group.commit()
        deleted = committed()
        for outbox in outboxes:
            outbox.close()
        spool.close()
        return before, after, deleted

    assert asyncio.run(scenario()) == (0, 6, 3)


# -- answers at the edge, per reader -------------------------------------------------------


def test_local_answers_are_per_reader_keys_checked_like_the_others(
    tmp_path: Path, clean_env: Path
) -> None:
    allowed = tmp_path / "allowed"
    allowed.write_text("04A1\n")
    path = fleet_file(
        tmp_path,
        '[defaults]\nlocal_when = "offline"\n'
        f'[[reader]]\nreader_host = "10.0.0.1"\nlocal_allow_file = "{allowed}"\n'
        '[[reader]]\nreader_host = "10.0.0.2"\nlocal_reply = "wink"\nlocal_after = 0.5\n'
        '[[reader]]\nreader_host = "10.0.0.3"\nlocal_when = "always"\n',
    )
    first, second, third = (
        r.options.local for r in load_fleet(load_settings(None, readers_file=path))
    )
    assert first is not None
    assert (first.reply, first.allow_file, first.when) == (None, allowed, "offline")
    assert second is not None
    assert (second.reply, second.when, second.after) == ("wink", "offline", 0.5)
    assert third is None  # a when without an answer: nothing to send
    allowed.write_text("04A1\nnot a tag\n")
    lines = problems(
        tmp_path,
        '[[reader]]\nreader_host = "10.0.0.1"\ndevice_id = "door"\n'
        f'local_allow_file = "{allowed}"\n'
        '[[reader]]\nreader_host = "10.0.0.2"\nlocal_reply = "wink"\n'
        f'local_allow_file = "{allowed}"\nlocal_when = "never"\n',
    )
    why = "line 2: not a tag id (hex digits expected)"
    assert lines[0] == f"[[reader]] #1 (door): local_allow_file: {allowed}: {why}"
    assert any(line.startswith("[[reader]] #2 (10.0.0.2): local_when: ") for line in lines)


def test_a_fleets_readers_acknowledged_rows_go_with_the_group_not_a_timer_each(
    tmp_path: Path,
) -> None:
    """A one-reader bridge deletes acknowledged rows up to FLUSH_AFTER s later, from a timer of
    its own; a fleet's reader hands them to the group's next transaction (README, Fleet: no
    per-reader upkeep after a burst)."""

    async def scenario() -> tuple[int, int]:
        spool = Spool.open(tmp_path / "fleet.db")
        group = CommitGroup(spool)
        deliveries = [
            Delivery(SpoolOutbox(spool, MB, 1e12, reader=name, group=group), "t")
            for name in ("a", "b")
        ]
        upkeeps = [SpoolUpkeep(delivery) for delivery in deliveries]
        for delivery, upkeep in zip(deliveries, upkeeps, strict=True):
            assert delivery.is_grouped
            delivery.put([(b"{}", 0.0)])
            upkeep.written()
        await asyncio.sleep(GROUP_DELAY * 3)
        written = rows(tmp_path / "fleet.db")
        for mid, (delivery, upkeep) in enumerate(zip(deliveries, upkeeps, strict=True), 1):
            item = delivery.next_event(0)
            assert item is not None
            delivery.record(mid, item)
            assert delivery.acknowledged(mid)
            upkeep.acknowledged()
        await asyncio.sleep(GROUP_DELAY * 3)
        left = rows(tmp_path / "fleet.db")
        for upkeep in upkeeps:
            await upkeep.close()
        for delivery in deliveries:
            delivery.close()
        await group.checkpoints.close()
        spool.close()
        return written, left

    assert asyncio.run(scenario()) == (2, 0)


def rows(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT COUNT(*) FROM fleet_events").fetchone()[0])
