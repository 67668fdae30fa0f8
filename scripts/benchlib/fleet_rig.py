"""The fleet benchmark's rig: the broker, the two subscribers (events, statuses), the systems
under test as they are started, and the ways of writing events to their readers (paced at
1 event/s per reader, each at its own phase; closed loop) and of waiting for them. It computes
no figure; the phases (``fleet_phases``) do.
"""

from __future__ import annotations

import argparse
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from benchlib.client import RawSubscriber
from benchlib.errors import BenchError
from benchlib.event import PREFIX
from benchlib.fleet_recorder import FleetRecorder, StatusBoard, Track
from benchlib.fleet_system import FleetKind, FleetSut
from benchlib.meter import process_cpu
from benchlib.narrator import Narrator
from benchlib.system import Broker, git_state

WINDOW: Final = 2000
"""Closed loop: events written and not yet received, at most, over all the flooding readers
(the one-reader saturation phase's window, shared)."""
MAX_BATCH: Final = 500
"""Events in one write, at most."""
FILES_PER_READER: Final = 6
"""Open files of this process and of the broker per reader of both fleets: the broker holds a
connection per MQTT client (2 per reader pair), this process a listener and a client socket
per reader (4 per pair)."""

Record = dict[str, Any]


@dataclass(frozen=True)
class FleetPlan:
    readers: int  # N of --fleet
    processes: int  # K of --fleet-processes; 0 = that phase does not run
    idle_seconds: float  # the idle window and the N events/s window, each
    flood_seconds: float
    flood_readers: int
    flood_shards: int  # --flood-shards: the flood again with the fleet in that many shards
    runs: int


def make_fleet_plan(args: argparse.Namespace) -> FleetPlan:
    quick = bool(args.quick)
    idle = args.idle_seconds if args.idle_seconds is not None else (20.0 if quick else 60.0)
    seconds = args.seconds if args.seconds is not None else (5.0 if quick else 10.0)
    return FleetPlan(
        readers=args.fleet,
        processes=args.fleet_processes or 0,
        idle_seconds=idle,
        flood_seconds=seconds,
        flood_readers=min(10, args.fleet),
        flood_shards=args.flood_shards,
        runs=args.runs,
    )


def raise_open_files(needed: int) -> int:
    """Raise this process's soft open-file limit to at least ``needed`` (the hard limit if it
    allows); the broker, started after, inherits it. BenchError if the hard one is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise BenchError(
            f"the hard open-file limit {hard} is below the {needed} this fleet needs: raise it "
            "(ulimit -Hn as root, LimitNOFILE=) or use fewer readers"
        )
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


class FleetRig(Narrator):
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.plan = make_fleet_plan(args)
        self.workdir = workdir
        self.broker = Broker(workdir)
        self.recorder = FleetRecorder()
        self.board = StatusBoard()
        self.subscribers: list[RawSubscriber] = []
        self.suts: list[FleetSut] = []
        self.records: list[Record] = []
        super().__init__()
        self.code = "?"
        self.open_files = 0

    # -- set-up -------------------------------------------------------------------------

    def setup(self) -> None:
        self.require_schedstat()
        self.code = git_state()
        most = max(self.plan.readers, self.plan.processes)
        self.open_files = raise_open_files(FILES_PER_READER * most + 256)
        self.broker.start()
        for name, topic_filter, sink in (
            ("sub", f"{PREFIX}/+/rdr/evt", self.recorder),
            ("status", f"{PREFIX}/+/status", self.board),
        ):
            subscriber = RawSubscriber(self.broker.port, topic_filter, sink, name)
            subscriber.start()
            self.subscribers.append(subscriber)

    def start(self, kind: FleetKind, readers: int, run: int) -> FleetSut:
        """A system under test and its readers, started; statuses timed from now."""
        shards = self.plan.flood_shards
        sut = FleetSut(kind, readers, self.broker.port, self.workdir, run, shards=shards)
        self.board.expect(sut.devices)
        self.recorder.watch(sut.tracks)
        self.suts.append(sut)
        return sut

    def stop(self, sut: FleetSut) -> list[int]:
        statuses = sut.stop()
        self.recorder.forget(sut.tracks)
        self.suts.remove(sut)
        return statuses

    # -- watching -----------------------------------------------------------------------

    def check(self, *suts: FleetSut) -> None:
        for sut in suts:
            sut.check()
        for subscriber in self.subscribers:
            if not subscriber.alive():
                raise BenchError(subscriber.error or "a subscriber stopped")

    def wait(self, suts: list[FleetSut], until: float) -> None:
        """Sleep until ``until`` (time.monotonic()), checking the systems every second."""
        while (left := until - time.monotonic()) > 0:
            time.sleep(min(1.0, left))
            self.check(*suts)

    def drain(self, tracks: list[Track], quiet: float = 5.0, limit: float = 120.0) -> None:
        """Wait until every event written to ``tracks`` arrived, or none did for ``quiet`` s."""
        start = last_change = time.monotonic()
        seen = sum(track.received for track in tracks)
        progress = self.recorder.progress
        while (received := sum(track.received for track in tracks)) < sum(
            track.sent for track in tracks
        ):
            progress.wait(0.05)
            progress.clear()
            now = time.monotonic()
            if received != seen:
                seen, last_change = received, now
            elif now - last_change > quiet or now - start > limit:
                return

    # -- writing ------------------------------------------------------------------------

    def paced(self, suts: list[FleetSut], seconds: float) -> int:
        """Every reader of ``suts`` writes one event a second at its own phase (due at
        ``start + k + phase``) for ``seconds`` (at least 1); the events written. Late ones are
        written at once: each event's time is taken just before its own write."""
        schedule = sorted(
            ((phase, sut, index) for sut in suts for index, phase in enumerate(sut.phases)),
            key=lambda item: item[0],
        )
        written = 0
        start = checked = time.perf_counter()
        for k in range(max(1, round(seconds))):
            for phase, sut, index in schedule:
                delay = start + k + phase - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                written += sut.double.emit(index)
                if time.perf_counter() - checked > 1.0:
                    self.check(*suts)
                    checked = time.perf_counter()
        return written

    def closed_loop(self, sut: FleetSut, readers: int, seconds: float) -> tuple[int, float]:
        """The first ``readers`` readers of ``sut`` write as fast as their events are taken,
        WINDOW events in flight over all of them, for ``seconds``: the events that arrived in
        that time, and the seconds it ran."""
        tracks = sut.tracks[:readers]
        window = max(100, WINDOW // readers)
        lot = max(10, window // 4)  # write when this much room, not event by event
        base = sum(track.received for track in tracks)
        progress = self.recorder.progress
        start = checked = time.perf_counter()
        while (now := time.perf_counter()) < start + seconds:
            progress.clear()
            wrote = 0
            for index, track in enumerate(tracks):
                room = window - (track.sent - track.received)
                if room >= lot:
                    wrote += sut.double.emit(index, min(room, MAX_BATCH))
            if not wrote:
                progress.wait(0.01)
            if now - checked > 1.0:
                self.check(sut)
                checked = now
        ran = time.perf_counter() - start
        return sum(track.received for track in tracks) - base, ran

    def cleanup(self) -> None:
        for sut in list(self.suts):
            self.stop(sut)
        for subscriber in self.subscribers:
            subscriber.close()
        self.broker.stop()


class Context:
    """CPU of the broker, of this process and of every other process over one window
    (``/proc/<pid>/stat`` ticks: context only, not a figure of the systems under test)."""

    def __init__(self, rig: FleetRig) -> None:
        self._rig = rig
        self._wall = time.monotonic()
        self._broker = rig.broker.stat.cpu_seconds()
        self._bench = time.process_time()
        self._all = process_cpu()

    def read(self) -> dict[str, float]:
        wall = max(1e-9, time.monotonic() - self._wall)
        after = process_cpu()
        busy = sum(cpu - self._all.get(pid, 0.0) for pid, cpu in after.items())
        ours = sum(
            after.get(process.pid, 0.0) - self._all.get(process.pid, 0.0)
            for sut in self._rig.suts
            for process in sut.processes
        )
        broker = self._rig.broker.stat.cpu_seconds() - self._broker
        bench = time.process_time() - self._bench
        return {
            "wall_s": round(wall, 3),
            "broker_cpu_pct": round(100 * broker / wall, 2),
            "bench_cpu_pct": round(100 * bench / wall, 2),
            "machine_busy_cores": round(busy / wall, 2),
            "other_busy_cores": round(max(0.0, busy - ours - broker - bench) / wall, 2),
        }
