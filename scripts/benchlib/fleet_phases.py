"""The phases of the fleet benchmark, each on systems under test already started by the rig:
the start (until every reader is connected and ``online,ready``), the warm-up, the idle window,
the window at 1 event/s per reader, the flood and the final count of what was lost; each
appends its record to the rig and returns its typed figures."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Final

from benchlib.fleet_rig import Context, FleetRig, Record
from benchlib.fleet_system import FleetKind, FleetSut
from benchlib.quiet import QuietFigures
from benchlib.stats import ms, percentile
from harness import ThreadTime  # scripts/harness.py

SETTLE: Final = 65.0
"""Seconds between the warm-up (one event per reader) and the idle window: what the events
armed for later is theirs, not idleness. The bridge deletes acknowledged rows 30 s after the
acknowledgement (FLUSH_AFTER, bridge/upkeep.py), and that deletion arms a checkpoint 30 s later
(CHECKPOINT_EVERY): up to 60 s after the last event, per reader. The one-reader benchmark's 35 s
(``benchlib.quiet``) leaves the second round in its window: with one reader one wake-up, in a
fleet of 1,000 a burst of ~1,000 deletions and checkpoints (measured, 45bfc874dbc9). The CPU of
this settle time is reported apart (``settle``)."""
READY_TIMEOUT: Final = 300.0
"""Seconds a system under test may take until all its readers are up; then the run goes on
with what is up (the table says how many), since a slow start is itself a finding."""


@dataclass(frozen=True)
class Start:
    """From the start of the process(es): every reader connected (its reader socket accepted)
    and, for a bridge, every reader's status ``online,ready``; None if not within the time."""

    readers: int
    connected_s: float | None
    ready_s: float | None  # None for the bare path (it publishes no status)
    ready: int  # readers online,ready (all readers connected, for the bare path)


@dataclass(frozen=True)
class Latency:
    """Write (``BenchT``) to the subscriber's ``recv()``, ms."""

    n: int
    p50: float
    p99: float
    p999: float
    max: float


@dataclass(frozen=True)
class Loaded:
    """The window at 1 event/s per reader."""

    quiet: QuietFigures  # its own CPU (schedstat) over the window
    latency: Latency | None
    lost: int
    unwritten: int  # due while a reader had no client
    pss_kb: int  # at the end of the window, summed over its processes


@dataclass(frozen=True)
class Flood:
    readers: int
    seconds: float
    events_per_s: int  # arrived within the time, divided by it
    lost: int
    cpu_us_per_event: float | None  # the path's own CPU (its processes) per event arrived
    busy_cores: float  # the whole machine's, over the flood: saturated near the core count


def latency_of(ordered: list[int]) -> Latency | None:
    if not ordered:
        return None
    return Latency(
        len(ordered),
        ms(percentile(ordered, 0.5)),
        ms(percentile(ordered, 0.99)),
        ms(percentile(ordered, 0.999)),
        ms(ordered[-1]),
    )


def start_phase(rig: FleetRig, kind: FleetKind, readers: int, run: int) -> tuple[FleetSut, Start]:
    """Start a system under test; wait until all its readers are connected (and, for a
    bridge, online,ready), at most READY_TIMEOUT s."""
    sut = rig.start(kind, readers, run)
    status = kind != "baseline"
    rig.say(f"{sut.name}: {readers} reader(s) starting")
    deadline = time.monotonic() + READY_TIMEOUT
    connected_ns: int | None = None
    shown = checked = time.monotonic()
    while time.monotonic() < deadline:
        if time.monotonic() - checked > 1.0:  # not every turn: K processes' /proc files
            rig.check(sut)
            checked = time.monotonic()
        if connected_ns is None and sut.double.connected == readers:
            connected_ns = time.time_ns()
        ready = rig.board.ready(sut.devices) if status else sut.double.connected
        if connected_ns is not None and ready == readers:
            break
        if time.monotonic() - shown > 10:
            shown = time.monotonic()
            rig.say(f"  {sut.double.connected} connected, {ready} ready")
        time.sleep(0.05)
    ready_ns = rig.board.last_ready_ns(sut.devices) if status else None
    start = Start(
        readers,
        None if connected_ns is None else round((connected_ns - sut.started_ns) / 1e9, 2),
        None if ready_ns is None else round((ready_ns - sut.started_ns) / 1e9, 2),
        rig.board.ready(sut.devices) if status else sut.double.connected,
    )
    rig.records.append({"phase": "start", "path": kind, **asdict(start)})
    pids = f"pid {sut.processes[0].pid}" + (", ..." if len(sut.processes) > 1 else "")
    shown_ready = f", online,ready after {start.ready_s} s" if status else ""
    rig.say(
        f"{sut.name} ({pids}): all connected after {start.connected_s} s{shown_ready} "
        f"({start.ready}/{readers} up)"
    )
    return sut, start


def warm_up(rig: FleetRig, suts: list[FleetSut]) -> None:
    """One event per reader, each at its phase within one second, drained (the first event
    through each reader's path pays for what is set up lazily)."""
    first = {id(track): track.sent for sut in suts for track in sut.tracks}
    written = rig.paced(suts, 1.0)
    tracks = [track for sut in suts for track in sut.tracks]
    rig.drain(tracks)
    latency = latency_of(rig.recorder.take_latencies())
    lost = sum(track.missing(first[id(track)]) for track in tracks)
    rig.records.append(
        {
            "phase": "warm-up",
            "path": "+".join(sut.kind for sut in suts),
            "sent": written,
            "lost": lost,
            "latency_ms": None if latency is None else asdict(latency),
        }
    )
    rig.say(f"warm-up: {written} events, lost {lost}")


def idle_phase(
    rig: FleetRig, suts: list[FleetSut]
) -> tuple[dict[FleetKind, QuietFigures], dict[FleetKind, QuietFigures]]:
    """All readers connected, no event and no command: each system's own CPU (schedstat),
    all in the same window, after SETTLE s for what the warm-up left to do (a window shorter
    than 30 s, a quick look, waits only as long as itself); that settle time's CPU, then the
    idle window's."""
    seconds = rig.plan.idle_seconds
    settle = settle_seconds(seconds)
    start = time.monotonic()
    before = [sut.cpu() for sut in suts]
    rig.wait(suts, start + settle)
    settled = _quiet(rig, suts, "settle", start, before)
    context = Context(rig)
    start = time.monotonic()
    before = [sut.cpu() for sut in suts]
    rig.wait(suts, start + seconds)
    idle = _quiet(rig, suts, "idle", start, before, context=context.read())
    for sut in suts:
        figures = idle[sut.kind]
        rig.say(
            f"idle {sut.name}: {figures.cpu_pct:.4f} % of a core, {figures.wakeups_per_s:g} "
            f"wake-ups/s over {figures.seconds:.1f} s (the {settle:g} s before: "
            f"{settled[sut.kind].used.cpu_ns / 1e6:.0f} ms of CPU)"
        )
    return settled, idle


def settle_seconds(window: float) -> float:
    return SETTLE if window >= 30 else window


def _quiet(
    rig: FleetRig,
    suts: list[FleetSut],
    name: str,
    start: float,
    before: list[ThreadTime],
    *,
    context: dict[str, float] | None = None,
) -> dict[FleetKind, QuietFigures]:
    """Each system's CPU since ``before`` (taken at ``start``), recorded as phase ``name``."""
    after = [sut.cpu() for sut in suts]
    wall = time.monotonic() - start
    found: dict[FleetKind, QuietFigures] = {}
    for sut, was, now in zip(suts, before, after, strict=True):
        figures = found[sut.kind] = QuietFigures(wall, 0, now - was)
        record: Record = {"phase": name, "path": sut.kind, **figures.as_record()}
        if context is not None:
            record["context"] = context
        rig.records.append(record)
    return found


def loaded_phase(rig: FleetRig, sut: FleetSut) -> Loaded:
    """Every reader at 1 event/s at its own phase for the idle window's length: the system's
    own CPU over the window (one second per event cycle, then the drain), the latency of every
    event, what was lost by the counters, the PSS at the end."""
    seconds = max(1.0, round(rig.plan.idle_seconds))
    first = [track.sent for track in sut.tracks]
    unwritten = sum(track.unwritten for track in sut.tracks)
    rig.recorder.take_latencies()  # strays of earlier phases are not this window's
    context = Context(rig)
    start = time.monotonic()
    before = sut.cpu()
    written = rig.paced([sut], seconds)
    rig.wait([sut], start + seconds)
    rig.drain(sut.tracks)
    used = sut.cpu() - before
    wall = time.monotonic() - start
    pss = sut.pss_kb()
    quiet = QuietFigures(wall, written, used)
    lost = sum(track.missing(n) for track, n in zip(sut.tracks, first, strict=True))
    unwritten = sum(track.unwritten for track in sut.tracks) - unwritten
    loaded = Loaded(quiet, latency_of(rig.recorder.take_latencies()), lost, unwritten, pss)
    rig.records.append(
        {
            "phase": f"{len(sut.tracks)} events/s",
            "path": sut.kind,
            "sent": written,
            "lost": lost,
            "unwritten": unwritten,
            **quiet.as_record(),
            "latency_ms": None if loaded.latency is None else asdict(loaded.latency),
            "pss_kb": pss,
            "hwm_kb": sut.hwm_kb(),
            "context": context.read(),
        }
    )
    lat = loaded.latency
    rig.say(
        f"{len(sut.tracks)} events/s {sut.name}: {quiet.cpu_pct:.2f} % of a core, "
        f"{quiet.cpu_us_per_event} us/event, p50 {lat and lat.p50} ms, p99 {lat and lat.p99} "
        f"ms, lost {lost}, PSS {pss / 1024:.1f} MB"
    )
    return loaded


def flood_phase(rig: FleetRig, sut: FleetSut, readers: int) -> Flood:
    """``readers`` readers as fast as the path takes their events, for ``--seconds``."""
    seconds = rig.plan.flood_seconds
    tracks = sut.tracks[:readers]
    first = [track.sent for track in tracks]
    context = Context(rig)
    before = sut.cpu()
    arrived, ran = rig.closed_loop(sut, readers, seconds)
    used = sut.cpu() - before
    machine = context.read()
    rig.drain(tracks, quiet=10.0, limit=300.0)
    latency = latency_of(rig.recorder.take_latencies())
    lost = sum(track.missing(n) for track, n in zip(tracks, first, strict=True))
    per_event = round(used.cpu_ns / 1e3 / arrived, 2) if arrived else None
    busy = machine["machine_busy_cores"]
    flood = Flood(readers, round(ran, 2), round(arrived / ran), lost, per_event, busy)
    rig.records.append(
        {
            "phase": f"flood of {readers}",
            "path": sut.kind,
            **asdict(flood),
            "sent": sum(track.sent - n for track, n in zip(tracks, first, strict=True)),
            "cpu_pct_of_core": round(100 * used.cpu_ns / 1e9 / ran, 2),
            "latency_ms": None if latency is None else asdict(latency),
            "context": machine,
        }
    )
    rig.say(
        f"flood of {readers} {sut.name}: {flood.events_per_s:,} events/s over {ran:.1f} s, "
        f"{per_event} us of its CPU per event, machine busy {busy} cores "
        f"(broker {machine['broker_cpu_pct']} %, bench {machine['bench_cpu_pct']} %), "
        f"lost {lost}"
    )
    return flood


def final_count(rig: FleetRig, sut: FleetSut) -> int:
    """Events lost over the system's whole life: every reader's counters 0 .. sent - 1 must
    all have arrived (after a last drain)."""
    rig.drain(sut.tracks)
    lost = sum(track.missing() for track in sut.tracks)
    record: Record = {
        "phase": "all events",
        "path": sut.kind,
        "sent": sum(track.sent for track in sut.tracks),
        "lost": lost,
        "duplicates": sum(track.duplicates for track in sut.tracks),
        "mismatched_payloads": sum(track.mismatched for track in sut.tracks),
        "unwritten": sum(track.unwritten for track in sut.tracks),
        "readers_with_losses": sum(1 for track in sut.tracks if track.missing()),
        "reconnections": sut.double.connections - len(sut.tracks),
        "status_left_ready": rig.board.flaps(sut.devices) if sut.kind != "baseline" else None,
        "log_tail": sut.log_tail(),
    }
    rig.records.append(record)
    return lost
