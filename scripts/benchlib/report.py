"""The JSON report: every metric for the bridge and the bare path (each run's values and their
medians, :mod:`benchlib.metric`), the phase records, notes and the context of the runs.

Backward compatible with the single-run report: with one run the metrics hold that run's
values, and the per-run context stays at the top of ``meta`` as well as in ``per_run``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any

from benchlib.figure import figures_of
from benchlib.metric import combine
from benchlib.plan import Plan
from benchlib.rig import Rig
from benchlib.run import RunResult
from benchlib.system import paho_version


def build_report(rig: Rig, runs: list[RunResult]) -> dict[str, Any]:
    plan = rig.plan
    per_run = [run_context(run) for run in runs]
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime()),
        "runtime_s": round(time.monotonic() - rig.started, 1),
        "cpus": os.cpu_count() or 1,
        "load_average_start": [round(x, 2) for x in runs[0].load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "paho": paho_version(),
        "mosquitto": rig.broker.version(),
        "git": rig.code,
        "subscriber": "paho" if rig.args.paho_subscriber else "raw socket",
        "plan": vars(plan),
        "million_skipped": not plan.million_events,
        "runs": len(runs),
    }
    if len(runs) == 1:  # where a single run's report always had them
        meta.update({k: v for k, v in per_run[0].items() if not k.startswith(("run", "load"))})
    meta.update(per_run=per_run, strays=rig.recorder.strays, workdir=str(rig.workdir))
    return {
        "meta": meta,
        "metrics": combine([figures_of(plan, run) for run in runs]),
        "phases": [{"run": run.number, **record} for run in runs for record in run.records],
        "notes": all_notes(plan, runs, rig.recorder.strays),
    }


def run_context(run: RunResult) -> dict[str, Any]:
    """What one run saw besides its metrics: peaks, throughput details, the machine's load."""
    return {
        "run": run.number,
        "load_average_start": [round(x, 2) for x in run.load_start],
        "load_average_end": [round(x, 2) for x in run.load_end],
        "hwm_within_capacity_kb": run.steady_hwm_kb,
        "throughput": {
            f"{k} QoS {q}": dataclasses.asdict(v) for (k, q), v in run.throughput.items()
        },
        "hwm_end_kb": run.peak_hwm_kb,
        "rss_ready_kb": run.rss_ready_kb,
        "cpu_whole_run": run.cpu,
    }


def all_notes(plan: Plan, runs: list[RunResult], strays: int) -> list[str]:
    """The notes of every run (prefixed with its number when there are several), then strays."""
    found = [
        f"run {run.number}: {note}" if len(runs) > 1 else note
        for run in runs
        for note in notes(plan, run)
    ]
    if strays:
        found.append(f"{strays} event(s) arrived after their phase ended")
    return found


def notes(plan: Plan, run: RunResult) -> list[str]:
    """What a reader of the table should know: losses, failed probes, a busy machine."""
    notes = []
    busy = []
    for phase in run.records:
        where = f"{phase['phase']} / {phase['path']}"
        for what in ("duplicates", "mismatched_payloads", "unparseable", "missing"):
            if phase.get(what):
                notes.append(f"{where}: {what} = {phase[what]}")
        if phase.get("lost"):
            beyond = " (a rate it did not hold)" if phase.get("overload") else ""
            notes.append(f"{where}: {phase['lost']} event(s) lost{beyond}")
        cpu = phase.get("cpu")
        if cpu and cpu["wall_s"] > 1 and cpu["bench_cpu_s"] / cpu["wall_s"] > 0.8:
            notes.append(
                f"{where}: this process used {cpu['bench_cpu_s'] / cpu['wall_s']:.0%} of a "
                "core; it may have limited the figure"
            )
        if cpu and cpu["other_busy_cores"] > 0.5:
            busy.append(f"{where} {cpu['other_busy_cores']}")
    if busy:
        notes.append("other processes kept more than half a core busy during: " + ", ".join(busy))
    for (kind, qos), figures in run.throughput.items():
        if figures.sustained is None:
            notes.append(
                f"{kind} QoS {qos}: no paced rate held within {plan.search_steps} steps "
                f"(lowest tried {figures.lowest_failed:,}/s)"
            )
    return notes
