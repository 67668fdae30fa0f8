"""The quiet phases (issue 11 §4): each path's own CPU while idle and at 1 event/s, from the
scheduler's per-thread nanoseconds (``harness.ThreadClock``), both paths in the same window.

Idle is the cost of merely being connected (keepalives, timers); 1 event/s is what a reader at
a door costs. Both are small enough that tick counters read 0 or 10 ms at random: schedstat
counts what each thread ran. Only the process's own CPU time counts, so both paths can share
a window (and other load on the machine does not inflate the figures, only delay them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

from benchlib.meter import Meter
from benchlib.rig import Rig
from benchlib.system import KINDS, Kind, Sut
from harness import ThreadTime  # scripts/harness.py

SETTLE: Final = 35.0
"""Seconds between the last event of the warm-up and the idle window: the last PUBACKs, spool
commits and the work they arm for later (the bridge's deletion of acknowledged rows and its
checkpoint, up to 30 s after the last write, bridge/upkeep.py) belong to the events, not to
being idle."""


@dataclass(frozen=True)
class QuietFigures:
    """One path's own CPU over one window."""

    seconds: float  # the window, wall time
    events: int  # written to the path in it; 0 = idle
    used: ThreadTime  # what the scheduler counted for its threads in it

    @property
    def cpu_pct(self) -> float:
        """Percent of one core."""
        return round(100 * self.used.cpu_ns / 1e9 / self.seconds, 6)

    @property
    def wakeups_per_s(self) -> float:
        """Times one of its threads was put on a CPU, per second (mostly wake-ups when idle)."""
        return round(self.used.slices / self.seconds, 2)

    @property
    def cpu_us_per_event(self) -> float | None:
        return round(self.used.cpu_ns / 1e3 / self.events, 1) if self.events else None

    def as_record(self) -> dict[str, float | int | None]:
        return {
            "window_s": round(self.seconds, 3),
            "schedstat_cpu_ns": self.used.cpu_ns,
            "schedstat_slices": self.used.slices,
            "cpu_pct_of_core": self.cpu_pct,
            "wakeups_per_s": self.wakeups_per_s,
            "cpu_us_per_event": self.cpu_us_per_event,
        }


def idle_phase(rig: Rig, seconds: float) -> dict[Kind, QuietFigures]:
    """Connected to its reader double and to the broker, no event and no command for
    ``seconds``: the CPU each path uses for nothing."""
    suts = [rig.sut(kind, 1) for kind in KINDS]
    _wait(rig, suts, time.monotonic() + SETTLE)
    meter = Meter(suts, rig.broker, rig.suts)
    start = time.monotonic()
    before = [sut.clock.read() for sut in suts]
    _wait(rig, suts, start + seconds)
    after = [sut.clock.read() for sut in suts]
    wall = time.monotonic() - start
    shared = meter.read()
    found: dict[Kind, QuietFigures] = {}
    for sut, was, now in zip(suts, before, after, strict=True):
        figures = found[sut.kind] = QuietFigures(wall, 0, now - was)
        rig.records.append(
            {
                "phase": "idle",
                "path": sut.kind,
                "seconds": seconds,
                **figures.as_record(),
                "cpu": meter.share(shared, sut),
            }
        )
        rig.say(
            f"idle {sut.name}: {figures.cpu_pct:.5f} % of a core, "
            f"{figures.wakeups_per_s:g} wake-ups/s over {wall:.1f} s"
        )
    return found


def slow_phase(rig: Rig, seconds: float) -> dict[Kind, QuietFigures]:
    """Paced at 1 event/s for ``seconds``, both paths at once half a second apart (as at
    10/s); the window is one second per event, from just before the first write."""
    rate = 1.0
    suts = [rig.sut(kind, 1) for kind in KINDS]
    phases = [rig.new_phase("1 event/s", sut, max(1, round(rate * seconds))) for sut in suts]
    meter = Meter(suts, rig.broker, rig.suts)
    start = time.monotonic()
    before = [sut.clock.read() for sut in suts]
    rig.paced(list(zip(suts, phases, strict=True)), rate, seconds)
    _wait(rig, suts, start + max(phase.sent for phase in phases) / rate)
    for phase in phases:
        rig.drain(phase)
        rig.end_phase(phase)
    after = [sut.clock.read() for sut in suts]
    wall = time.monotonic() - start
    shared = meter.read()
    found: dict[Kind, QuietFigures] = {}
    for sut, phase, was, now in zip(suts, phases, before, after, strict=True):
        figures = found[sut.kind] = QuietFigures(wall, phase.sent, now - was)
        rig.summary(
            phase, meter.share(shared, sut), rate=rate, seconds=seconds, **figures.as_record()
        )
        rig.say(
            f"1 event/s {sut.name}: {figures.cpu_us_per_event} us of CPU per event, "
            f"{figures.cpu_pct:.4f} % of a core ({phase.received}/{phase.sent} events)"
        )
    return found


def _wait(rig: Rig, suts: list[Sut], until: float) -> None:
    """Sleep until ``until`` (time.monotonic()), checking the paths every second; the check
    also reads their clocks, so a thread that ends in between keeps what it ran."""
    while (left := until - time.monotonic()) > 0:
        time.sleep(min(1.0, left))
        rig.check(*suts)
