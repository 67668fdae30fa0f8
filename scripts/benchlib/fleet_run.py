"""One run of the fleet benchmark (``bench.py --fleet N``), on freshly started systems under
test; ``--runs R`` repeats it, the broker and the subscribers outlive the runs.

Order, and why. The bridge starts first and alone, so that the time until its N readers are
``online,ready`` is its own; then the bare fleet path. The warm-up and the idle window are
shared (both connected, neither doing anything: each one's own CPU from schedstat, which other
load does not inflate). The loaded windows (1 event/s per reader) and the floods run one path
at a time: at N events/s each path, the broker and this process together take most of one of
the two cores, and running both at once would put each path's latency at the mercy of the
other's. The flood's reference, the one-reader bridge's QoS 1 saturation, runs next, in the
same run, and then (``--flood-shards S``, default 2) the flood again with the fleet bridge in
S shard processes (``BRIDGE_SHARD=K/S``), as a user with S cores deploys it. With
``--fleet-processes K``, K one-reader bridges (one process each) then run the start, warm-up,
idle and loaded phases alone, after the fleets stopped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from benchlib.fleet_phases import (
    Flood,
    Loaded,
    Start,
    final_count,
    flood_phase,
    idle_phase,
    loaded_phase,
    start_phase,
    warm_up,
)
from benchlib.fleet_rig import FleetRig, Record
from benchlib.fleet_system import FleetKind
from benchlib.quiet import QuietFigures

FLEETS: tuple[FleetKind, FleetKind] = ("bridge", "baseline")


@dataclass
class FleetRun:
    """What one run measured, by system under test; empty where a phase did not run."""

    number: int
    load_start: tuple[float, float, float]
    start: dict[FleetKind, Start] = field(default_factory=dict)
    settle: dict[FleetKind, QuietFigures] = field(default_factory=dict)  # before idle
    idle: dict[FleetKind, QuietFigures] = field(default_factory=dict)
    loaded: dict[FleetKind, Loaded] = field(default_factory=dict)
    flood: dict[FleetKind, Flood] = field(default_factory=dict)
    lost: dict[FleetKind, int] = field(default_factory=dict)  # all phases, by the counters
    records: list[Record] = field(default_factory=list)
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)


def measure_fleet(rig: FleetRig, number: int) -> FleetRun:
    plan = rig.plan
    if plan.runs > 1:
        rig.say(f"run {number} of {plan.runs}")
    rig.records = []
    run = FleetRun(number, os.getloadavg(), records=rig.records)
    suts = []
    for kind in FLEETS:
        sut, run.start[kind] = start_phase(rig, kind, plan.readers, number)
        suts.append(sut)
    warm_up(rig, suts)
    if plan.idle_seconds:
        run.settle, run.idle = idle_phase(rig, suts)
        for sut in suts:
            run.loaded[sut.kind] = loaded_phase(rig, sut)
    for sut in suts:
        run.flood[sut.kind] = flood_phase(rig, sut, plan.flood_readers)
    for sut in suts:
        run.lost[sut.kind] = final_count(rig, sut)
        rig.stop(sut)
    single(rig, run)
    if plan.flood_shards:
        sharded(rig, run)
    if plan.processes:
        processes(rig, run)
    run.load_end = os.getloadavg()
    return run


def single(rig: FleetRig, run: FleetRun) -> None:
    """The one-reader bridge's QoS 1 saturation (closed loop, as the flood), the flood's
    reference; after a second of warm-up."""
    sut, run.start["single"] = start_phase(rig, "single", 1, run.number)
    rig.closed_loop(sut, 1, 1.0)
    rig.drain(sut.tracks)
    rig.recorder.take_latencies()
    run.flood["single"] = flood_phase(rig, sut, 1)
    run.lost["single"] = final_count(rig, sut)
    rig.stop(sut)


def sharded(rig: FleetRig, run: FleetRun) -> None:
    """The flood's readers served by ``--flood-shards`` fleet bridges (one readers file,
    ``BRIDGE_SHARD=K/S`` each): the same flood, after the same warm-up as the fleet's."""
    readers = rig.plan.flood_readers
    sut, run.start["shards"] = start_phase(rig, "shards", readers, run.number)
    warm_up(rig, [sut])
    run.flood["shards"] = flood_phase(rig, sut, readers)
    run.lost["shards"] = final_count(rig, sut)
    rig.stop(sut)


def processes(rig: FleetRig, run: FleetRun) -> None:
    """K one-reader bridges, one process each: the fleet's phases but the flood."""
    sut, run.start["processes"] = start_phase(rig, "processes", rig.plan.processes, run.number)
    warm_up(rig, [sut])
    if rig.plan.idle_seconds:
        settle, idle = idle_phase(rig, [sut])
        run.settle["processes"], run.idle["processes"] = settle["processes"], idle["processes"]
        run.loaded["processes"] = loaded_phase(rig, sut)
    run.lost["processes"] = final_count(rig, sut)
    rig.stop(sut)
