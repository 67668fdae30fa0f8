"""Throughput of one path: saturation (closed loop), then the sustained-rate search (paced).

A reader paces its own events, and paced arrivals come in small batches that cost more per
event than the closed loop's, so saturation overstates what a path sustains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from benchlib.meter import Meter
from benchlib.rig import WINDOW, Rig
from benchlib.system import Sut

KEEP_UP: Final = 0.5
"""Sustained rate: seconds the last event may arrive after its write (a path that falls
behind by more than 5 % over 10 s does not hold the rate)."""


@dataclass(frozen=True)
class Throughput:
    """One path's throughput figures, events/s (``sustained`` None: no paced rate held)."""

    saturation: int
    sustained: int | None
    lowest_failed: int | None
    cpu_s_per_10k_at_saturation: float | None


def next_rate(passed: float | None, failed: float | None) -> float | None:
    """The next paced rate of the sustained-throughput search, or None when it is done.

    From 90 % of saturation: 15 % lower a step while none holds, 10 % higher a step while all
    hold, then halfway between the highest rate that held and the lowest that failed, until
    the two are within 4 %. Both directions, so that a path whose first step holds is not
    reported at that step (it may sustain more), and one whose first step fails is not
    reported at 85 % of it."""
    if passed is None:
        return None if failed is None else failed * 0.85
    if failed is None:
        return passed * 1.1
    if failed / passed < 1.04:
        return None
    return (passed + failed) / 2


def throughput_phase(rig: Rig, sut: Sut) -> Throughput:
    """Saturation (closed loop), then the highest paced rate that holds (open loop)."""
    seconds = rig.plan.throughput_seconds
    capacity = int(seconds * 200_000) + WINDOW  # beyond any Python path on one core
    phase = rig.new_phase(f"saturation QoS {sut.qos}", sut, capacity)
    meter = Meter([sut], rig.broker, rig.suts)
    ran = rig.closed_loop(sut, phase, seconds, phase.capacity)
    in_time = phase.received
    rig.drain(phase)
    rig.end_phase(phase)
    saturation = in_time / ran
    result = rig.summary(
        phase, meter.read(), qos=sut.qos, seconds=round(ran, 2), events_per_s=round(saturation)
    )
    rig.say(
        f"saturation QoS {sut.qos} {sut.name}: {saturation:,.0f} events/s over {ran:.1f} s "
        f"(closed loop), lost {phase.lost()}; CPU {result['cpu']}"
    )
    passed: float | None = None
    failed: float | None = None
    rate: float | None = 0.9 * saturation
    for _ in range(rig.plan.search_steps):
        if rate is None:
            break
        if sustained_step(rig, sut, rate, seconds):
            passed = rate
        else:
            failed = rate
        rate = next_rate(passed, failed)
    if passed is None:
        rig.say(f"  no paced rate held within {rig.plan.search_steps} steps")
    return Throughput(
        saturation=round(saturation),
        sustained=None if passed is None else round(passed),
        lowest_failed=None if failed is None else round(failed),
        cpu_s_per_10k_at_saturation=result["sut_cpu_s_per_10k"],
    )


def sustained_step(rig: Rig, sut: Sut, rate: float, seconds: float) -> bool:
    """Paced at ``rate`` for ``seconds``: every event arrives, the last one within KEEP_UP
    of its write, and the reader double could write at the rate (no back-pressure)."""
    step = rig.new_phase(f"sustained QoS {sut.qos}", sut, max(1, round(rate * seconds)))
    meter = Meter([sut], rig.broker, rig.suts)
    rig.paced([(sut, step)], rate, seconds)
    written_for = step.last_write - step.first_write
    rig.drain(step)
    rig.end_phase(step)
    behind = (step.last_receive_ns - step.last_write_ns) / 1e9
    achieved = (step.sent - 1) / written_for if written_for > 0 else rate
    ok = not step.lost() and behind <= KEEP_UP and achieved >= 0.97 * rate
    rig.summary(
        step,
        meter.read(),
        qos=sut.qos,
        rate=round(rate),
        achieved_write_rate=round(achieved),
        last_event_behind_s=round(behind, 3),
        ok=ok,
        overload=not ok,  # a step that did not hold may have lost events: counted apart
    )
    rig.say(
        f"  paced at {rate:,.0f}/s for {seconds:g} s: {'holds' if ok else 'does not hold'} "
        f"(lost {step.lost()}, last event {behind:.3f} s after its write, "
        f"written at {achieved:,.0f}/s)"
    )
    return ok
