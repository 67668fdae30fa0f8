#!/usr/bin/env python3
"""Benchmark of the bridge against a bare baseline path, both measured in the same run.

``python scripts/bench.py`` (the full run, 12-17 minutes on two cores), ``--quick`` (about three
minutes; its phases are shorter than the issue asks), ``--seconds S`` (every phase S seconds),
``--idle-seconds S`` (the idle and the 1 event/s windows, 60 s in the full run), ``--runs N``
(all of it N times), ``--only idle`` (the idle and 1 event/s phases alone, about 2 minutes a
run), ``--skip-million``, ``--json out.json``; ``--local`` compares the bridge with itself
answering every read (``BRIDGE_LOCAL_REPLY=accept``) and times the answers; ``--pin`` runs the
systems under test on CPU 0 and everything else on the other CPUs. Not a pytest test
(``tests/test_bench.py`` only checks that a very short run produces every figure).

It starts, in a temporary work directory of its own:

* a Mosquitto on a free loopback port with a generated configuration that keeps the broker
  out of the way: ``max_queued_messages 0``, ``max_inflight_messages 0``,
  ``set_tcp_nodelay true``, ``persistence false``;
* one reader double per system under test: a TCP server in this process that serves one
  client, writes READER EVENTs separated by CR LF and timestamps every byte it receives
  (commands). Events stay flat and realistic (an NFC read); the tag id carries the event's
  number (``"TagId": "%014X"``) and ``"BenchT"`` the ``time.time_ns()`` of its write;
* the systems under test, each a subprocess: the bridge (``python -m bridge run``, durable
  spool on, discovery off, no command rate limit and no command gap) and the *bare path*
  (``python scripts/bench.py --baseline``): one loop that reads the socket, splits on CR LF
  and publishes each line with paho (MQTT v5, ``max_inflight_messages_set(100)``) - no
  validation, no spool, no user properties - and writes every message of its ``rdr/cmd``
  to the reader socket as it is. Both set TCP_NODELAY on both of their sockets (the bridge
  does it itself), so the comparison is not about Nagle's algorithm. One bridge and one bare
  path per QoS; the QoS 0 pair only runs the QoS 0 throughput phase;
* the subscriber, in this process: a minimal MQTT v5 client on a raw socket (QoS 1
  subscription to ``+/rdr/evt``, one PUBACK write per received batch), because paho's
  reader costs ~50 us of CPU per message on this kind of machine, which would cap the
  baseline near 10,000 events/s and steal a core from the systems under test.
  ``--paho-subscriber`` uses paho instead. Commands are published with paho (QoS 1).

The figures, each for the bridge and for the bare path:

* event latency: ``time.time_ns()`` just before the reader double writes an event, to
  ``time.time_ns()`` when the subscriber's ``recv()`` returned it; paced (open loop) at 10,
  200 and 2,000 events/s. At 10 events/s both paths run at once, their events interleaved
  half a period (50 ms) apart so they never overlap; the other rates run one path at a time;
* throughput (QoS 0 and QoS 1), measured last (see below). *Saturation*: closed loop for
  ``--seconds`` (10 s in the full run) - the reader double keeps at most 2,000 events written
  and not yet received, as fast as they are taken; what
  arrived within that time divided by it. *Maximum sustained*: the highest paced (open loop)
  rate that holds for the same time with zero loss, the last event arriving within 0.5 s of
  its write and the reader double never held back. Searched from 90 % of saturation, 15 %
  lower a step until one holds or 10 % higher while they hold, then halving the gap between
  the highest rate that held and the lowest that failed (at most 5 steps). A reader
  paces its own events, and paced arrivals come in small batches that cost more per event
  than the closed loop's, so saturation overstates what a path sustains;
* command latency: ``time.time_ns()`` before paho's ``publish()`` of ``{"Sequence":"60"}`` on
  ``rdr/cmd``, to the reader double's ``recv()`` of the whole object; one at a time, 10 ms
  apart;
* CPU seconds (utime + stime from ``/proc/<pid>/stat``) per 10,000 events of the 2,000
  events/s phase, and of the QoS 1 saturation phase;
* idle CPU and CPU per event at 1 event/s (issue 11), first in the run, right after the
  warm-up: the process's own CPU time from ``/proc/<pid>/task/*/schedstat`` (nanoseconds on a
  CPU, summed over its threads; ticks cannot resolve a process that runs microseconds a
  second), as a percentage of one core and, at 1 event/s, in microseconds per event. Idle:
  connected to its reader double and to the broker, no event and no command, for
  ``--idle-seconds`` (60 s), from 2 s after the warm-up's last event; also the times one of
  its threads was put on a CPU per second (its wake-ups). 1 event/s: paced for as long, the
  window one second per event. Both paths share each window (the figures count only their own
  CPU time), their events half a second apart;
* RSS (``VmRSS``) before and after 1,000,000 events (closed loop, as fast as the path goes,
  after 100,000 warm-up events), and the peak (``VmHWM``) of the process up to then. The
  throughput steps that do not hold overload a path - the bridge then holds the excess in its
  spool (on disk, up to BRIDGE_SPOOL_MAX_MB), the bare path grows paho's queue without bound -
  so they run last, and their losses and the peak RSS including them are reported apart;
* a burst of 30,000 events (``--burst N``) written as fast as each path reads, the broker up
  all along: events lost (the target is 0) and the time from the first write to the last
  event received. It runs after the steady peak RSS is taken, before the throughput phases.

``--runs N`` repeats the whole measured set N times (issue 11: the median of at least 3 runs
on this noisy machine), each run on freshly started systems under test (so that no run
inherits another's peak RSS, or what its overload left queued or spooled) with the broker and
the subscriber shared. The table shows, per metric, the median of the bridge's values, of the
bare path's and of the per-run ratios; losses are summed over the runs. The JSON report keeps
each run's values (``metrics.*.runs``), the phases with their run number, and each run's
context (``meta.per_run``).

Next to each phase it records the context switches of the system under test (all threads)
and the CPU used by the broker, by this process and by every other process on the machine
(``/proc/<pid>/stat``): on a small machine the "other" part says how much other jobs took.

``--fleet [N]`` (issue 12, default N = 1000) measures a fleet instead: the bridge in fleet mode
(``BRIDGE_READERS_FILE`` with N readers ``r0000`` ..., spool on, discovery off, QoS 1, no command
rate limit) against the *bare fleet path* (``bench.py --fleet-bare``: one asyncio loop, one paho
client per reader driven through paho's socket callbacks, each CR-LF line published at QoS 1,
nothing else), each reader at 1 event/s at a random phase of its second, the events' own counters
telling what was lost: time until all N are ``online,ready``, idle CPU (``--idle-seconds``,
schedstat), CPU at N events/s and its ratio to the bare path's, PSS, latency p50/p99, a flood of
10 readers as fast as each path takes (``--seconds``) next to the one-reader bridge's QoS 1
saturation, and the flood again with the fleet in S shard processes (``--flood-shards S``,
default 2: a fleet on S cores). ``--fleet-processes K`` adds K one-reader bridge processes for
the same figures, summed. See ``benchlib/fleet_run.py`` for the order of the phases and why.

The parts live in ``scripts/benchlib/`` (one module each: the reader double, the subscriber,
the systems under test and the bare path, the rig, the phases, the report, the table) and share
``scripts/harness.py`` with ``soak.py``; this file is the command line.

Exit status: 0 when the run completed (targets are reported, not asserted), 2 when it could
not be set up or a process died, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

from benchlib.baseline import run_baseline
from benchlib.errors import BenchError, StopRequestedError
from benchlib.fleet_bare import run_fleet_bare
from benchlib.fleet_report import build_fleet_report, print_fleet
from benchlib.fleet_rig import FleetRig
from benchlib.fleet_run import measure_fleet
from benchlib.local import local_report, measure_local, print_local
from benchlib.plan import BURST, make_plan
from benchlib.report import build_report
from benchlib.rig import Rig
from benchlib.run import measure
from benchlib.system import SUT_CPU
from benchlib.table import print_table
from benchlib.throughput import next_rate

__all__ = ["main", "next_rate"]  # next_rate: tests/test_bench.py checks the search with it


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases (a couple of minutes)")
    parser.add_argument("--seconds", type=float, help="every phase this long (overrides --quick)")
    parser.add_argument("--skip-million", action="store_true", help="no 1,000,000-event run")
    parser.add_argument("--million-events", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--burst", type=int, help=f"events of the burst phase (default {BURST:,})")
    parser.add_argument(
        "--idle-seconds",
        type=float,
        help="the idle window and the 1 event/s window, each (default 60; --quick 20; 0 = skip)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="the whole measured set this many times; the table shows the medians (default 1)",
    )
    parser.add_argument(
        "--only",
        choices=("idle", "latency"),
        help="idle: only the idle and 1 event/s phases (with --runs: issue 11's before/after); "
        "latency: only the event latency phases",
    )
    parser.add_argument(
        "--local",
        action="store_true",
        help="the event path with local answers on (BRIDGE_LOCAL_REPLY=accept) against the "
        "same bridge without them, and the answers' latency (README, When the broker is down)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the systems under test on CPU 0, the broker and this process (reader doubles, "
        "subscriber) on the other CPUs: each bridge has a core of its own, as where the broker "
        "and the automation run on another machine (default: all share every CPU)",
    )
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--paho-subscriber", action="store_true", help="subscribe with paho")
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument(
        "--fleet",
        type=int,
        nargs="?",
        const=1000,
        metavar="N",
        help="the fleet benchmark with N readers (default 1000) instead",
    )
    parser.add_argument(
        "--fleet-processes",
        type=int,
        metavar="K",
        help="with --fleet: also K one-reader bridge processes (heavy: K Python processes)",
    )
    parser.add_argument(
        "--flood-shards",
        type=int,
        default=2,
        metavar="S",
        help="with --fleet: the flood again with the fleet bridge in S shard processes "
        "(BRIDGE_SHARD=K/S; default 2, 0 = not)",
    )
    internal = parser.add_argument_group("the bare baseline path (started by the benchmark)")
    internal.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    internal.add_argument("--reader-port", type=int, help=argparse.SUPPRESS)
    internal.add_argument("--mqtt-port", type=int, help=argparse.SUPPRESS)
    internal.add_argument("--device", help=argparse.SUPPRESS)
    internal.add_argument("--qos", type=int, choices=(0, 1), default=1, help=argparse.SUPPRESS)
    internal.add_argument("--fleet-bare", action="store_true", help=argparse.SUPPRESS)
    internal.add_argument("--readers-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _check_args(parser, args)
    if args.pin and args.fleet is not None:
        parser.error("--pin does not apply to --fleet")
    if args.pin and len(os.sched_getaffinity(0)) < 2:
        parser.error("--pin needs 2 CPUs or more")
    return args


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exits with a usage error for a combination of options that measures nothing sound."""
    if args.fleet is not None and args.fleet < 1:
        parser.error("--fleet needs 1 reader or more")
    if args.local and (args.fleet is not None or args.only):
        parser.error("--local takes neither --fleet nor --only")
    if args.fleet is not None and (args.only or args.paho_subscriber):
        parser.error("--fleet takes neither --only nor --paho-subscriber")
    if args.fleet_processes is not None and (args.fleet is None or args.fleet_processes < 1):
        parser.error("--fleet-processes needs --fleet and 1 process or more")
    if args.flood_shards < 0:
        parser.error("--flood-shards must be 0 or more")
    if args.fleet_bare and (args.readers_file is None or args.mqtt_port is None):
        parser.error("--fleet-bare needs --readers-file and --mqtt-port")
    if args.seconds is not None and args.seconds <= 0:
        parser.error("--seconds must be positive")
    if args.only == "idle" and args.idle_seconds == 0:
        parser.error("--only idle measures nothing with --idle-seconds 0")
    if args.runs < 1:
        parser.error("--runs must be 1 or more")
    if args.idle_seconds is not None and args.idle_seconds < 0:
        parser.error("--idle-seconds must be 0 (skip) or more")
    if args.baseline and (args.reader_port is None or args.mqtt_port is None or not args.device):
        parser.error("--baseline needs --reader-port, --mqtt-port and --device")


def _raise_interrupted(signum: int, frame: types.FrameType | None) -> None:
    raise StopRequestedError(signal.Signals(signum).name)


def _measure(rig: Rig | FleetRig) -> dict[str, Any]:
    """Every run, then the report, printed as a table."""
    if isinstance(rig, FleetRig):
        fleet_runs = [measure_fleet(rig, number) for number in range(1, rig.plan.runs + 1)]
        report = build_fleet_report(rig, fleet_runs)
        print_fleet(report)
    elif rig.args.local:
        local_runs = [measure_local(rig, number) for number in range(1, rig.plan.runs + 1)]
        report = local_report(rig, local_runs)
        print_local(report)
    else:
        runs = [measure(rig, number) for number in range(1, rig.plan.runs + 1)]
        report = build_report(rig, runs)
        print_table(report)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.baseline:
        return run_baseline(args.reader_port, args.mqtt_port, args.device, args.qos)
    if args.fleet_bare:
        return run_fleet_bare(args.readers_file, args.mqtt_port)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        workdir = args.workdir.resolve()
    else:
        workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    print(f"bench: work directory {workdir}", flush=True)
    if args.pin:
        # before any thread or child: they inherit it (the broker, the subscriber, ...)
        os.sched_setaffinity(0, os.sched_getaffinity(0) - {SUT_CPU})
    rig = FleetRig(args, workdir) if args.fleet is not None else Rig(args, make_plan(args), workdir)
    status = 2
    try:
        rig.setup()
        report = _measure(rig)
        if args.json is not None:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        status = 0
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
    except StopRequestedError as exc:
        print(f"bench: interrupted ({exc}); cleaning up", file=sys.stderr)
        status = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        rig.cleanup()
        if status == 0 and args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
