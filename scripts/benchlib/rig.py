"""The test rig: broker, subscriber, command sender and systems under test, and the ways of
writing events to them (paced, closed loop) and of waiting for them; it computes no figure.

Every phase builds on it: a :class:`Phase` per path, events written to the path's reader
double, the arrivals matched by the :class:`Recorder`, and a record of the phase appended to
:attr:`Rig.records` (``summary``), which is what the JSON report lists under ``phases``.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path
from typing import Any, Final

from benchlib.client import Control, PahoSubscriber, RawSubscriber, Subscriber
from benchlib.errors import BenchError
from benchlib.event import PREFIX, render_batch
from benchlib.narrator import Narrator
from benchlib.plan import Plan
from benchlib.recorder import Phase, Recorder
from benchlib.stats import ms, percentile
from benchlib.system import KINDS, LOCAL_KINDS, Broker, Kind, Sut, git_state

WINDOW: Final = 2000
"""Closed loop: events written and not yet received, at most."""
MAX_BATCH: Final = 500
"""Events in one write of the reader double, at most."""

Record = dict[str, Any]
"""One phase as the JSON report lists it (``phases``): counts, latencies, CPU readings."""


class Rig(Narrator):
    def __init__(self, args: argparse.Namespace, plan: Plan, workdir: Path) -> None:
        self.args = args
        self.plan = plan
        self.workdir = workdir
        self.broker = Broker(workdir)
        self.recorder = Recorder()
        self.subscriber: Subscriber | None = None
        self.control: Control | None = None
        self.suts: list[Sut] = []
        self.next_id = 1
        self.records: list[Record] = []
        super().__init__()
        self.rss_ready: dict[str, int] = {}
        self.code = "?"
        self.cpus: dict[str, list[int]] = {}

    # -- set-up ------------------------------------------------------------------------------

    def setup(self) -> None:
        self.require_schedstat()
        self.code = git_state()  # what the systems under test load, now
        self.broker.start()
        topic_filter = f"{PREFIX}/+/rdr/evt"
        subscriber_class = PahoSubscriber if self.args.paho_subscriber else RawSubscriber
        self.subscriber = subscriber_class(self.broker.port, topic_filter, self.recorder)
        self.subscriber.start()
        self.control = Control(self.broker.port)
        self.control.start()

    def start_suts(self, run: int) -> None:
        """Fresh systems under test for run number ``run``, each connected and warmed up; a
        fresh list of records. Fresh processes, so that no run inherits another's peak RSS
        (VmHWM) or what its overload left queued."""
        self.records, self.rss_ready = [], {}
        # QoS 0 runs the throughput phase only
        levels = (1,) if self.plan.only in ("idle", "latency") or self.args.local else (1, 0)
        kinds = LOCAL_KINDS if self.args.local else KINDS
        self.suts = [
            Sut(kind, qos, self.broker.port, self.workdir, run, pinned=self.args.pin)
            for kind in kinds
            for qos in levels
        ]
        for sut in self.suts:
            self.wait_ready(sut)
        self.cpus = self.where()

    def where(self) -> dict[str, list[int]]:
        """The CPUs each process may run on (``--pin`` or not), for the report."""
        pids = {"benchmark": 0, **{sut.device: sut.process.pid for sut in self.suts}}
        if self.broker.process is not None:
            pids["broker"] = self.broker.process.pid
        return {name: sorted(os.sched_getaffinity(pid)) for name, pid in pids.items()}

    def stop_suts(self) -> None:
        for sut in self.suts:
            sut.stop()

    def sut(self, kind: Kind, qos: int) -> Sut:
        return next(s for s in self.suts if s.kind == kind and s.qos == qos)

    def new_phase(self, name: str, sut: Sut, capacity: int) -> Phase:
        phase = Phase(name, sut.kind, sut.event_topic.encode(), self.next_id, capacity)
        self.next_id += capacity
        self.recorder.active[phase.topic] = phase
        return phase

    def end_phase(self, phase: Phase) -> None:
        if self.recorder.active.get(phase.topic) is phase:
            del self.recorder.active[phase.topic]

    def check(self, *suts: Sut) -> None:
        for sut in suts:
            sut.check()
            sut.clock.read()  # so that a thread ending before the next reading keeps its time
        if self.subscriber is not None and not self.subscriber.alive():
            raise BenchError(self.subscriber.error or "the subscriber stopped")

    def wait_ready(self, sut: Sut, timeout: float = 60.0) -> None:
        """Connected to its reader double, an event made it through, then a warm-up."""
        deadline = time.monotonic() + timeout
        while not sut.reader.connected.wait(0.2):
            self.check(sut)
            if time.monotonic() > deadline:
                raise BenchError(f"{sut.name} did not connect within {timeout} s; see {sut.log}")
        probe = self.new_phase("probe", sut, 1000)
        while probe.received == 0:
            self.check(sut)
            if time.monotonic() > deadline or probe.sent >= probe.capacity:
                raise BenchError(f"no event of {sut.name} arrived within {timeout} s")
            self.write(sut, probe, 1)
            self.recorder.progress.wait(0.25)
            self.recorder.progress.clear()
        self.drain(probe, quiet=2.0)
        self.end_phase(probe)
        warmup = self.new_phase("warm-up", sut, self.plan.warmup_events)
        self.paced([(sut, warmup)], 2000.0, self.plan.warmup_events / 2000.0)
        self.drain(warmup)
        self.end_phase(warmup)
        rss = self.rss_ready[sut.name] = sut.stat.rss_kb()
        self.say(f"{sut.name} ready (pid {sut.process.pid}, RSS {rss / 1024:.1f} MB)")

    # -- emitting ----------------------------------------------------------------------------

    def write(self, sut: Sut, phase: Phase, count: int) -> None:
        now = time.perf_counter()
        t_ns = time.time_ns()
        sut.reader.write(render_batch(phase.first_id + phase.sent, count, t_ns))
        if not phase.sent:
            phase.first_write = now
        phase.sent += count
        phase.last_write = now
        phase.last_write_ns = t_ns

    def paced(self, targets: list[tuple[Sut, Phase]], rate: float, seconds: float) -> None:
        """Open loop: ``rate`` events/s to each target for ``seconds``; target j's event i is
        due at ``start + (i + j / len(targets)) / rate`` (interleaved, never at once)."""
        count = max(1, round(rate * seconds))
        share = len(targets)
        start = time.perf_counter()
        checked = start
        while True:
            now = time.perf_counter()
            elapsed = (now - start) * rate
            next_due = math.inf
            for j, (sut, phase) in enumerate(targets):
                due = min(count, max(0, math.floor(elapsed - j / share) + 1))
                if due > phase.sent:
                    self.write(sut, phase, min(due - phase.sent, MAX_BATCH))
                if phase.sent < count:
                    next_due = min(next_due, start + (phase.sent + j / share) / rate)
            if next_due == math.inf:
                return
            if now - checked > 1.0:
                self.check(*(sut for sut, _ in targets))
                checked = now
            delay = next_due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)

    def closed_loop(
        self,
        sut: Sut,
        phase: Phase,
        seconds: float | None,
        limit: int,
        samples: list[dict[str, float]] | None = None,
    ) -> float:
        """Keep at most WINDOW events in flight, as fast as they are taken, for ``seconds``
        (or until ``limit`` events); the seconds it ran. With ``samples``: the RSS every
        100,000 events and a progress line every 10 s."""
        start = time.perf_counter()
        deadline = math.inf if seconds is None else start + seconds
        checked = shown = start
        report = samples is not None
        progress = self.recorder.progress
        while phase.sent < limit:
            now = time.perf_counter()
            if now >= deadline:
                break
            progress.clear()
            room = min(limit - phase.sent, phase.received + WINDOW - phase.sent)
            if room >= min(100, limit - phase.sent):
                self.write(sut, phase, min(room, MAX_BATCH))
            else:
                progress.wait(0.01)
            if now - checked > 1.0:
                self.check(sut)
                checked = now
                if samples is not None and (phase.received // 100_000) > len(samples):
                    samples.append(
                        {"events": phase.received, "rss_kb": sut.stat.rss_kb(), "t_s": now - start}
                    )
                if report and now - shown >= 10.0:
                    shown = now
                    self.say(
                        f"  {sut.name}: {phase.received:,}/{limit:,} events, "
                        f"{phase.received / (now - start):,.0f}/s, "
                        f"RSS {sut.stat.rss_kb() / 1024:.1f} MB"
                    )
        return time.perf_counter() - start

    def drain(self, phase: Phase, quiet: float = 5.0, limit: float = 120.0) -> None:
        """Wait for every event of the phase, or until none arrived for ``quiet`` s."""
        start = last_change = time.monotonic()
        seen = phase.received
        while phase.received < phase.sent:
            self.recorder.progress.wait(0.05)
            self.recorder.progress.clear()
            now = time.monotonic()
            if phase.received != seen:
                seen, last_change = phase.received, now
            elif now - last_change > quiet or now - start > limit:
                return

    def summary(self, phase: Phase, meter: dict[str, float], **extra: object) -> dict[str, Any]:
        ordered = phase.sorted_latencies()
        result: dict[str, Any] = {
            "phase": phase.name,
            "path": phase.path,
            "sent": phase.sent,
            "received": phase.received,
            "lost": phase.lost(),
            "duplicates": phase.duplicates,
            "mismatched_payloads": phase.mismatched,
            "unparseable": phase.unparseable + phase.out_of_range,
        }
        if ordered:
            result["latency_ms"] = {
                "n": len(ordered),
                "min": ms(ordered[0]),
                "p50": ms(percentile(ordered, 0.50)),
                "p90": ms(percentile(ordered, 0.90)),
                "p99": ms(percentile(ordered, 0.99)),
                "p99.9": ms(percentile(ordered, 0.999)),
                "max": ms(ordered[-1]),
            }
        result.update(extra)
        result["cpu"] = meter
        cpu = meter["sut_cpu_s"]
        result["sut_cpu_s_per_10k"] = round(cpu / phase.sent * 10_000, 3) if phase.sent else None
        switches = meter.get("sut_context_switches")
        if switches is not None and phase.sent:
            result["sut_context_switches_per_event"] = round(switches / phase.sent, 2)
        self.records.append(result)
        return result

    def cleanup(self) -> None:
        if self.control is not None:
            self.control.close()
        for sut in self.suts:
            sut.stop()
        if self.subscriber is not None:
            self.subscriber.close()
        self.broker.stop()
