"""CPU of the systems under test (schedstat, nanoseconds), of the broker, of this process and of
the whole machine (utime + stime from ``/proc``, in ticks), over one phase; it only reads, never
changes what it measures."""

from __future__ import annotations

import os
import time
from pathlib import Path

from benchlib.system import Broker, Sut
from harness import cpu_of  # scripts/harness.py


def process_cpu() -> dict[int, float]:
    """CPU seconds of every process on the machine, by pid.

    Not ``/proc/stat``: on the 2-core microVM this was written on, its idle accounting is
    wrong under bursty loads (a 5 s window counted 11.6 CPU-seconds on 2 CPUs, and 2.5 s
    busy for 0.7 s of work), while per-process accounting matches ``process_time()``.
    """
    found: dict[int, float] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue  # ended meanwhile
            found[int(name)] = cpu_of(stat)
    return found


class Meter:
    """CPU of the systems under test measured, of the broker, of this process and of all the
    machine's processes; ``other_busy_cores`` is what processes other than ours (measured or
    idle) took: other jobs. Processes that started and ended within the phase are missed,
    and so is kernel work charged to no process."""

    def __init__(self, suts: list[Sut], broker: Broker, everyone: list[Sut]) -> None:
        self._suts, self._broker, self._everyone = suts, broker, everyone
        self._wall = time.monotonic()
        self._sut_cpu = [sut.clock.read().cpu_ns for sut in suts]
        self._sut_switches = [sut.stat.context_switches() for sut in suts]
        self._all_cpu = sum(sut.stat.cpu_seconds() for sut in everyone)
        self._broker_cpu = broker.stat.cpu_seconds()
        self._bench_cpu = time.process_time()
        self._processes = process_cpu()
        self.per_sut: dict[str, float] = {}
        self.per_sut_switches: dict[str, int] = {}

    def read(self) -> dict[str, float]:
        """The readings since creation: ``sut_cpu_s`` sums all the systems under test."""
        wall = time.monotonic() - self._wall
        before, after = self._processes, process_cpu()
        ours = {os.getpid(), *(s.process.pid for s in self._everyone)}
        if self._broker.process is not None:
            ours.add(self._broker.process.pid)
        other = sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items() if pid not in ours)
        self.per_sut = {  # schedstat: ticks (10 ms) could not resolve a phase of 10 events
            s.name: (s.clock.read().cpu_ns - c) / 1e9
            for s, c in zip(self._suts, self._sut_cpu, strict=True)
        }
        sut = sum(self.per_sut.values())
        self.per_sut_switches = {
            s.name: s.stat.context_switches() - c
            for s, c in zip(self._suts, self._sut_switches, strict=True)
        }
        switches = sum(self.per_sut_switches.values())
        broker = self._broker.stat.cpu_seconds() - self._broker_cpu
        bench = time.process_time() - self._bench_cpu
        mine = sum(sut.stat.cpu_seconds() for sut in self._everyone) - self._all_cpu
        mine += broker + bench
        return {
            "wall_s": round(wall, 3),
            "sut_cpu_s": round(sut, 4),
            "sut_context_switches": switches,
            "broker_cpu_s": round(broker, 2),
            "bench_cpu_s": round(bench, 2),
            "machine_busy_cores": round((mine + other) / wall, 2),
            "other_busy_cores": round(other / wall, 2),
        }

    def share(self, shared: dict[str, float], sut: Sut) -> dict[str, float]:
        """``shared`` (a :meth:`read` of a phase that ran several paths at once) with ``sut``'s
        own CPU and context switches in place of the sums: broker, bench, machine stay shared."""
        return dict(
            shared,
            sut_cpu_s=round(self.per_sut[sut.name], 2),
            sut_context_switches=self.per_sut_switches[sut.name],
        )
