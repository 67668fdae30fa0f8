"""What the one-reader rig and the fleet rig share: the time-stamped progress line, and the
check that the kernel can measure CPU per thread (schedstat) before anything starts."""

from __future__ import annotations

import time

from benchlib.errors import BenchError
from harness import has_schedstat  # scripts/harness.py


class Narrator:
    """Says what the benchmark does, each line stamped with the seconds since it began."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f} s] {text}", flush=True)

    @staticmethod
    def require_schedstat() -> None:
        if not has_schedstat():
            raise BenchError(
                "this kernel has no /proc/<pid>/task/<tid>/schedstat (CONFIG_SCHED_INFO)"
            )
