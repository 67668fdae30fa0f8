"""The phases of one run besides throughput: event latency, commands, the burst and the
1,000,000-event run; each appends its record to the rig (:meth:`Rig.summary`)."""

from __future__ import annotations

import contextlib
import queue
import time

from benchlib.errors import BenchError
from benchlib.event import COMMAND
from benchlib.meter import Meter
from benchlib.rig import MAX_BATCH, Record, Rig
from benchlib.stats import ms, percentile
from benchlib.system import KINDS, Kind, Sut


def latency_phase(rig: Rig, rate: float, seconds: float, kinds: tuple[Kind, ...] = KINDS) -> None:
    pairs = [rig.sut(kind, 1) for kind in kinds]
    groups = [pairs] if rate <= 10 else [[pairs[0]], [pairs[1]]]
    for group in groups:
        phases = [
            rig.new_phase(f"latency {rate:g}/s", sut, max(1, round(rate * seconds)))
            for sut in group
        ]
        meter = Meter(group, rig.broker, rig.suts)
        rig.paced(list(zip(group, phases, strict=True)), rate, seconds)
        for phase in phases:
            rig.drain(phase)
            rig.end_phase(phase)
        shared = meter.read()
        for sut, phase in zip(group, phases, strict=True):
            reading = meter.share(shared, sut)  # both paths at once (10/s): each its own CPU
            result = rig.summary(phase, reading, rate=rate, seconds=seconds)
            lat = result.get("latency_ms", {})
            rig.say(
                f"latency {rate:g}/s {sut.name}: p50 {lat.get('p50')} ms, p99 "
                f"{lat.get('p99')} ms, p99.9 {lat.get('p99.9')} ms "
                f"({phase.received}/{phase.sent}); machine busy "
                f"{reading['machine_busy_cores']} cores"
            )


def command_phase(rig: Rig, sut: Sut) -> None:
    """One command at a time, 10 ms apart: publish to the reader double's ``recv()``."""
    _wait_subscribed(rig, sut)
    time.sleep(0.2)
    samples: list[int] = []
    unexpected: list[str] = []
    missing = 0
    for _ in range(rig.plan.command_samples):
        got, took = _one_command(rig, sut)
        if took is None:
            missing += 1
        elif got.strip(b"\r\n\x00 ") != COMMAND:  # a late warm-up command, say
            unexpected.append(got.decode(errors="replace"))
        else:
            samples.append(took)
            time.sleep(0.01)
    samples.sort()
    result = {
        "phase": "commands",
        "path": sut.kind,
        "samples": len(samples),
        "missing": missing,
        "unexpected": len(unexpected),
        "unexpected_sample": unexpected[:5],
        "latency_ms": {
            "p50": ms(percentile(samples, 0.5)),
            "p90": ms(percentile(samples, 0.9)),
            "p99": ms(percentile(samples, 0.99)),
            "max": ms(samples[-1]),
        },
    }
    rig.records.append(result)
    rig.say(f"commands {sut.name}: {result['latency_ms']}, missing {missing}")


def _wait_subscribed(rig: Rig, sut: Sut) -> None:
    """Warm-up: the path is subscribed when a command comes through."""
    assert rig.control is not None
    deadline = time.monotonic() + 30
    while True:
        rig.check(sut)
        if time.monotonic() > deadline:
            raise BenchError(f"no command reached the reader double of {sut.name} in 30 s")
        rig.control.publish(sut.command_topic, COMMAND)
        with contextlib.suppress(queue.Empty):
            sut.reader.incoming.get(timeout=1.0)
            return


def _one_command(rig: Rig, sut: Sut) -> tuple[bytes, int | None]:
    """What the reader double received of one command, and the ns it took (None: nothing
    whole within 2 s)."""
    assert rig.control is not None
    incoming = sut.reader.incoming
    while not incoming.empty():
        incoming.get_nowait()
    start = time.time_ns()
    rig.control.publish(sut.command_topic, COMMAND)
    got, arrived = receive_command(incoming)
    return got, None if arrived is None else arrived - start


def receive_command(incoming: queue.Queue[tuple[int, bytes]]) -> tuple[bytes, int | None]:
    """What a reader double received of one command, and when (``time.time_ns()``) its end
    arrived (None: nothing whole within 2 s)."""
    got, arrived = b"", 0
    try:
        while b"}" not in got:
            arrived, data = incoming.get(timeout=2.0)
            got += data
    except queue.Empty:
        return got, None
    return got, arrived


def burst_phase(rig: Rig, sut: Sut) -> None:
    """The whole burst written as fast as the path reads it, the broker up all along:
    every event must arrive (the bridge's spool absorbs what the broker takes slower).
    Delivered-in runs from the first write to the last event received."""
    count = rig.plan.burst_events
    phase = rig.new_phase("burst", sut, count)
    meter = Meter([sut], rig.broker, rig.suts)
    start_ns = time.time_ns()
    while phase.sent < count:
        rig.write(sut, phase, min(MAX_BATCH, count - phase.sent))
    written = (phase.last_write_ns - start_ns) / 1e9
    rig.drain(phase, quiet=10.0, limit=300.0)
    rig.end_phase(phase)
    took = max(1e-9, (phase.last_receive_ns - start_ns) / 1e9)
    rig.summary(
        phase,
        meter.read(),
        written_in_s=round(written, 2),
        delivered_in_s=round(took, 2),
        events_per_s=round(phase.received / took),
    )
    rig.say(
        f"burst of {count:,} {sut.name}: written in {written:.2f} s, delivered in "
        f"{took:.2f} s, lost {phase.lost()}"
    )


def million_phase(rig: Rig, sut: Sut) -> Record:
    events = rig.plan.million_events
    warm = min(100_000, events // 10)
    rig.say(
        f"{warm:,} + {events:,} events through {sut.name} (closed loop, as fast as it goes; "
        "RSS measured after the first ones)"
    )
    warmup = rig.new_phase("million warm-up", sut, warm)
    meter = Meter([sut], rig.broker, rig.suts)
    rig.closed_loop(sut, warmup, None, warm)
    rig.drain(warmup)
    rig.end_phase(warmup)
    rig.summary(warmup, meter.read())
    rss_before, hwm_before = sut.stat.rss_kb(), sut.stat.hwm_kb()
    phase = rig.new_phase("million", sut, events)
    meter = Meter([sut], rig.broker, rig.suts)
    samples: list[dict[str, float]] = []
    ran = rig.closed_loop(sut, phase, None, events, samples)
    rig.drain(phase)
    rig.end_phase(phase)
    time.sleep(1.0)  # the spool's flush and the allocator settle
    rss_after = sut.stat.rss_kb()
    growth = 100.0 * (rss_after - rss_before) / rss_before
    result = rig.summary(
        phase,
        meter.read(),
        seconds=round(ran, 1),
        events_per_s=round(phase.received / ran),
        rss_before_kb=rss_before,
        rss_after_kb=rss_after,
        rss_growth_pct=round(growth, 2),
        hwm_before_kb=hwm_before,
        hwm_after_kb=sut.stat.hwm_kb(),
        rss_samples=samples,
    )
    rig.say(
        f"  {sut.name}: {ran:.0f} s, RSS {rss_before / 1024:.1f} -> {rss_after / 1024:.1f} MB "
        f"({growth:+.2f} %), lost {phase.lost()}"
    )
    return result
