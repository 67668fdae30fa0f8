"""One run of the measured set: the phases in their order, the bridge and the bare path
alternating phase by phase; it starts and stops nothing but the QoS 0 pair at its end."""

from __future__ import annotations

import os
from dataclasses import dataclass

from benchlib.meter import Meter
from benchlib.phases import burst_phase, command_phase, latency_phase, million_phase
from benchlib.quiet import QuietFigures, idle_phase, slow_phase
from benchlib.rig import Record, Rig
from benchlib.system import KINDS, Kind
from benchlib.throughput import Throughput, throughput_phase


@dataclass(frozen=True)
class RunResult:
    """What one run measured, for the report: the phase records and the figures drawn from
    the processes themselves (peak RSS, the whole run's CPU)."""

    records: list[Record]
    throughput: dict[tuple[Kind, int], Throughput]
    million: dict[Kind, Record]
    steady_hwm_kb: dict[Kind, int]
    peak_hwm_kb: dict[Kind, int]
    rss_ready_kb: dict[str, int]
    idle: dict[Kind, QuietFigures]  # empty when skipped
    slow: dict[Kind, QuietFigures]  # at 1 event/s; empty when skipped
    load_start: tuple[float, float, float]
    cpu: dict[str, float]


def measure(rig: Rig) -> RunResult:
    plan = rig.plan
    load_start = os.getloadavg()
    whole_run = Meter(rig.suts, rig.broker, rig.suts)
    rig.say(
        f"broker on port {rig.broker.port}, {os.cpu_count() or 1} CPUs, load average "
        f"{load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}"
    )
    idle: dict[Kind, QuietFigures] = {}
    slow: dict[Kind, QuietFigures] = {}
    if plan.idle_seconds:  # first: right after the warm-up, before any load has been
        idle = idle_phase(rig, plan.idle_seconds)
        slow = slow_phase(rig, plan.idle_seconds)
    for rate, seconds in plan.latency:
        latency_phase(rig, rate, seconds)
    for kind in KINDS:
        command_phase(rig, rig.sut(kind, 1))
    million: dict[Kind, Record] = {}
    if plan.million_events:
        for kind in KINDS:
            million[kind] = million_phase(rig, rig.sut(kind, 1))
    # Peak RSS so far: every load within capacity. The throughput phases come last
    # because their open-loop checks may overload a path: the bridge then spools the
    # excess, the bare path queues it in paho's memory.
    steady: dict[Kind, int] = {kind: rig.sut(kind, 1).stat.hwm_kb() for kind in KINDS}
    if plan.burst_events:  # after the steady peak: the bare path's queue grows here
        for kind in KINDS:
            burst_phase(rig, rig.sut(kind, 1))
    throughput: dict[tuple[Kind, int], Throughput] = {}
    for qos in (1, 0):
        for kind in KINDS:
            throughput[(kind, qos)] = throughput_phase(rig, rig.sut(kind, qos))
    for kind in KINDS:
        rig.sut(kind, 0).stop()
    peak: dict[Kind, int] = {kind: rig.sut(kind, 1).stat.hwm_kb() for kind in KINDS}
    return RunResult(
        records=rig.records,
        throughput=throughput,
        million=million,
        steady_hwm_kb=steady,
        peak_hwm_kb=peak,
        rss_ready_kb=dict(rig.rss_ready),
        idle=idle,
        slow=slow,
        load_start=load_start,
        cpu=whole_run.read(),
    )
