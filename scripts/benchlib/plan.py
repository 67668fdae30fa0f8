"""How long each phase runs and how many events it writes, from the command line; no I/O."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Final

MILLION: Final = 1_000_000
BURST: Final = 30_000
"""Events of the burst phase (issue 10: a burst this size lost 25,463 events to a count bound)."""


@dataclass(frozen=True)
class Plan:
    latency: tuple[tuple[float, float], ...]  # (events/s, seconds)
    throughput_seconds: float
    command_samples: int
    million_events: int  # 0 = skipped
    warmup_events: int
    search_steps: int = 5  # paced steps of the throughput search, at most
    burst_events: int = BURST  # written at once with the broker up; 0 = skipped
    idle_seconds: float = 60.0  # the idle window and the 1 event/s window, each; 0 = skipped
    runs: int = 1  # the whole measured set, this many times on fresh processes (--runs)
    only: str | None = None  # "idle" / "latency": those phases alone (--only)


def make_plan(args: argparse.Namespace) -> Plan:
    if args.seconds is not None:
        s = float(args.seconds)
        plan = Plan(
            latency=((10, s), (200, s), (2000, s)),
            throughput_seconds=s,
            command_samples=min(200, max(10, int(20 * s))),
            million_events=MILLION,
            warmup_events=min(1000, max(100, int(200 * s))),
            search_steps=3,
            burst_events=min(BURST, max(1000, int(3000 * s))),
            idle_seconds=s,
        )
    elif args.quick:
        plan = Plan(
            ((10, 10), (200, 5), (2000, 5)), 5, 50, MILLION, 1000, search_steps=3, idle_seconds=20
        )
    else:
        plan = Plan(((10, 100), (200, 20), (2000, 10)), 10, 200, MILLION, 1000)
    if args.million_events is not None:
        plan = dataclasses.replace(plan, million_events=args.million_events)
    if args.skip_million:
        plan = dataclasses.replace(plan, million_events=0)
    if args.burst is not None:
        plan = dataclasses.replace(plan, burst_events=args.burst)
    plan = dataclasses.replace(plan, runs=args.runs, only=args.only)
    if plan.only in ("idle", "latency"):  # what the plan says runs, runs
        plan = dataclasses.replace(plan, million_events=0, burst_events=0)
    if plan.only == "latency":
        plan = dataclasses.replace(plan, idle_seconds=0)
    if args.idle_seconds is not None:
        plan = dataclasses.replace(plan, idle_seconds=args.idle_seconds)
    return plan
