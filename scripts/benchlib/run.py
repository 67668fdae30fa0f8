"""One run of the measured set on fresh systems under test: the phases in their order, the
bridge and the bare path alternating phase by phase (or sharing a window where only their own
CPU time counts). ``--runs N`` repeats it; the broker and the subscriber outlive the runs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from benchlib.meter import Meter
from benchlib.phases import burst_phase, command_phase, latency_phase, million_phase
from benchlib.quiet import QuietFigures, idle_phase, slow_phase
from benchlib.rig import Record, Rig
from benchlib.system import KINDS, Kind
from benchlib.throughput import Throughput, throughput_phase

LoadAverage = tuple[float, float, float]


@dataclass
class RunResult:
    """What one run measured, for the report: the phase records and the figures drawn from
    the processes themselves (peak RSS, the whole run's CPU). Empty where a phase was skipped."""

    number: int
    load_start: LoadAverage
    records: list[Record] = field(default_factory=list)
    idle: dict[Kind, QuietFigures] = field(default_factory=dict)
    slow: dict[Kind, QuietFigures] = field(default_factory=dict)  # at 1 event/s
    million: dict[Kind, Record] = field(default_factory=dict)
    steady_hwm_kb: dict[Kind, int] = field(default_factory=dict)
    throughput: dict[tuple[Kind, int], Throughput] = field(default_factory=dict)
    peak_hwm_kb: dict[Kind, int] = field(default_factory=dict)
    rss_ready_kb: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    load_end: LoadAverage = (0.0, 0.0, 0.0)


def measure(rig: Rig, number: int) -> RunResult:
    """Start the systems under test, run every phase of the plan, stop them."""
    plan = rig.plan
    if plan.runs > 1:
        rig.say(f"run {number} of {plan.runs}")
    rig.start_suts(number)
    result = RunResult(number, os.getloadavg(), records=rig.records)
    whole_run = Meter(rig.suts, rig.broker, rig.suts)
    load = result.load_start
    rig.say(
        f"broker on port {rig.broker.port}, {os.cpu_count() or 1} CPUs, load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    if plan.idle_seconds:  # first: right after the warm-up, before any load
        result.idle = idle_phase(rig, plan.idle_seconds)
        result.slow = slow_phase(rig, plan.idle_seconds)
    if plan.only == "latency":
        for rate, seconds in plan.latency:
            latency_phase(rig, rate, seconds)
    elif plan.only != "idle":
        loaded(rig, result)
    result.peak_hwm_kb = {kind: rig.sut(kind, 1).stat.hwm_kb() for kind in KINDS}
    result.rss_ready_kb = dict(rig.rss_ready)
    result.cpu = whole_run.read()
    result.load_end = os.getloadavg()
    rig.stop_suts()
    return result


def loaded(rig: Rig, result: RunResult) -> None:
    """The phases under load, into ``result``."""
    plan = rig.plan
    for rate, seconds in plan.latency:
        latency_phase(rig, rate, seconds)
    for kind in KINDS:
        command_phase(rig, rig.sut(kind, 1))
    if plan.million_events:
        for kind in KINDS:
            result.million[kind] = million_phase(rig, rig.sut(kind, 1))
    # Peak RSS so far: every load within capacity. The throughput phases come last
    # because their open-loop checks may overload a path: the bridge then spools the
    # excess, the bare path queues it in paho's memory.
    result.steady_hwm_kb = {kind: rig.sut(kind, 1).stat.hwm_kb() for kind in KINDS}
    if plan.burst_events:  # after the steady peak: the bare path's queue grows here
        for kind in KINDS:
            burst_phase(rig, rig.sut(kind, 1))
    for qos in (1, 0):
        for kind in KINDS:
            result.throughput[(kind, qos)] = throughput_phase(rig, rig.sut(kind, qos))
    for kind in KINDS:
        rig.sut(kind, 0).stop()
