"""The JSON report of a run: every figure for the bridge and the bare path with their ratio,
the issue's targets marked met or not (reported, never asserted), notes and the context."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from benchlib.plan import MILLION, Plan
from benchlib.rig import Record, Rig
from benchlib.run import RunResult
from benchlib.system import KINDS, paho_version

Metrics = dict[str, dict[str, Any]]
"""Metric key -> label, unit, bridge, baseline, ratio (and target, met): the JSON ``metrics``."""


def build_report(rig: Rig, run: RunResult) -> dict[str, Any]:
    metrics = metrics_of(rig.plan, run)
    for metric in metrics.values():
        bridge, base = metric["bridge"], metric["baseline"]
        metric["ratio"] = round(bridge / base, 3) if bridge is not None and base else None
    targets(metrics)
    load_end = os.getloadavg()
    return {
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime()),
            "runtime_s": round(time.monotonic() - rig.started, 1),
            "cpus": os.cpu_count() or 1,
            "load_average_start": [round(x, 2) for x in run.load_start],
            "load_average_end": [round(x, 2) for x in load_end],
            "python": sys.version.split()[0],
            "paho": paho_version(),
            "mosquitto": rig.broker.version(),
            "git": rig.code,
            "subscriber": "paho" if rig.args.paho_subscriber else "raw socket",
            "plan": vars(rig.plan),
            "million_skipped": not rig.plan.million_events,
            "hwm_within_capacity_kb": run.steady_hwm_kb,
            "throughput": {
                f"{k} QoS {q}": dataclasses.asdict(v) for (k, q), v in run.throughput.items()
            },
            "hwm_end_kb": run.peak_hwm_kb,
            "rss_ready_kb": run.rss_ready_kb,
            "cpu_whole_run": run.cpu,
            "strays": rig.recorder.strays,
            "workdir": str(rig.workdir),
        },
        "metrics": metrics,
        "phases": run.records,
        "notes": notes(rig.plan, run, rig.recorder.strays),
    }


def metrics_of(plan: Plan, run: RunResult) -> Metrics:
    """Every figure of one run, in the table's order."""

    def find(name: str, path: str) -> Record:
        return next(p for p in run.records if p["phase"] == name and p["path"] == path)

    metrics: Metrics = {}

    def add(key: str, label: str, unit: str, values: dict[str, float | None]) -> None:
        metrics[key] = {"label": label, "unit": unit, **values}

    for rate, _ in plan.latency:
        for q, qname in ((0.5, "p50"), (0.99, "p99"), (0.999, "p99.9")):
            values = {
                path: find(f"latency {rate:g}/s", path).get("latency_ms", {}).get(qname)
                for path in ("bridge", "baseline")
            }
            n = find(f"latency {rate:g}/s", "bridge").get("latency_ms", {}).get("n", 0)
            note = f" (n={n})" if q * n > n - 1 else ""
            key = f"latency_{rate:g}_{qname.replace('.', '')}_ms"
            add(key, f"event latency {qname} @ {rate:g}/s{note}", "ms", values)
    seconds = plan.throughput_seconds
    for qos in (0, 1):
        add(
            f"throughput_qos{qos}_eps",
            f"max sustained throughput, QoS {qos} ({seconds:g} s paced, 0 loss)",
            "events/s",
            {path: run.throughput[(path, qos)].sustained for path in KINDS},
        )
    for qos in (0, 1):
        add(
            f"saturation_qos{qos}_eps",
            f"saturation throughput, QoS {qos} (closed loop)",
            "events/s",
            {path: run.throughput[(path, qos)].saturation for path in KINDS},
        )
    for qname in ("p50", "p99"):
        add(
            f"command_latency_{qname}_ms",
            f"command latency {qname}",
            "ms",
            {path: find("commands", path)["latency_ms"][qname] for path in ("bridge", "baseline")},
        )
    top = max(rate for rate, _ in plan.latency)
    add(
        "cpu_s_per_10k_at_2000",
        f"CPU s / 10,000 events @ {top:g}/s",
        "s",
        {p: find(f"latency {top:g}/s", p)["sut_cpu_s_per_10k"] for p in ("bridge", "baseline")},
    )
    add(
        "context_switches_per_event_at_2000",
        f"context switches / event @ {top:g}/s",
        "",
        {p: find(f"latency {top:g}/s", p).get("sut_context_switches_per_event") for p in KINDS},
    )
    add(
        "cpu_s_per_10k_at_max_qos1",
        "CPU s / 10,000 events at saturation, QoS 1",
        "s",
        {p: run.throughput[(p, 1)].cpu_s_per_10k_at_saturation for p in KINDS},
    )
    idle_s = plan.idle_seconds
    add(
        "idle_cpu_pct",
        f"idle CPU, % of one core ({idle_s:g} s, schedstat)",
        "%",
        {p: run.idle[p].cpu_pct if run.idle else None for p in KINDS},
    )
    add(
        "idle_wakeups_per_s",
        "idle: times a thread got a CPU, per second",
        "/s",
        {p: run.idle[p].wakeups_per_s if run.idle else None for p in KINDS},
    )
    add(
        "cpu_us_per_event_at_1",
        f"CPU per event @ 1/s ({idle_s:g} s, schedstat)",
        "us",
        {p: run.slow[p].cpu_us_per_event if run.slow else None for p in KINDS},
    )
    add(
        "cpu_pct_at_1",
        "CPU @ 1 event/s, % of one core",
        "%",
        {p: run.slow[p].cpu_pct if run.slow else None for p in KINDS},
    )
    add(
        "peak_rss_mb",
        "peak RSS (VmHWM), loads within capacity",
        "MB",
        {path: round(kb / 1024, 1) for path, kb in run.steady_hwm_kb.items()},
    )
    add(
        "peak_rss_with_probes_mb",
        "peak RSS incl. the throughput search",
        "MB",
        {path: round(kb / 1024, 1) for path, kb in run.peak_hwm_kb.items()},
    )
    add(
        "rss_after_million_mb",
        f"RSS after {plan.million_events or MILLION:,} events",
        "MB",
        {
            p: round(run.million[p]["rss_after_kb"] / 1024, 1) if run.million else None
            for p in ("bridge", "baseline")
        },
    )
    add(
        "rss_growth_million_pct",
        f"RSS growth over {plan.million_events or MILLION:,} events",
        "%",
        {
            p: run.million[p]["rss_growth_pct"] if run.million else None
            for p in ("bridge", "baseline")
        },
    )
    if plan.burst_events:
        burst = {path: find("burst", path) for path in KINDS}
        add(
            "burst_lost",
            f"burst of {plan.burst_events:,} at full speed, broker up: events lost",
            "events",
            {path: burst[path]["lost"] for path in KINDS},
        )
        add(
            "burst_delivered_s",
            f"burst of {plan.burst_events:,}: first write to last event received",
            "s",
            {path: burst[path]["delivered_in_s"] for path in KINDS},
        )
    add(
        "events_lost",
        "events lost, except steps that did not hold",
        "events",
        {
            path: sum(
                p.get("lost", 0) for p in run.records if p["path"] == path and not p.get("overload")
            )
            for path in KINDS
        },
    )
    add(
        "events_lost_overload",
        "events lost, throughput steps that did not hold",
        "events",
        {
            path: sum(
                p.get("lost", 0) for p in run.records if p["path"] == path and p.get("overload")
            )
            for path in KINDS
        },
    )
    return metrics


def notes(plan: Plan, run: RunResult, strays: int) -> list[str]:
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
    if strays:
        notes.append(f"{strays} event(s) arrived after their phase ended")
    return notes


def targets(metrics: dict[str, dict[str, Any]]) -> None:
    """The issue's targets, marked met or not (reported, never asserted)."""
    checks: list[tuple[str, str, str, Callable[[float], bool]]] = [
        ("latency_200_p50_ms", "ratio <= 1.5", "ratio", lambda r: r <= 1.5),
        ("throughput_qos1_eps", "ratio >= 0.8", "ratio", lambda r: r >= 0.8),
        ("command_latency_p50_ms", "< 2 ms", "bridge", lambda v: v < 2),
        ("idle_cpu_pct", "< 0.01 %", "bridge", lambda v: v < 0.01),
        ("peak_rss_mb", "< 40 MB", "bridge", lambda v: v < 40),
        ("rss_after_million_mb", "< 40 MB", "bridge", lambda v: v < 40),
        ("rss_growth_million_pct", "< 5 %", "bridge", lambda v: v < 5),
        ("events_lost", "0", "bridge", lambda v: v == 0),
        ("burst_lost", "0", "bridge", lambda v: v == 0),
    ]
    for key, text, column, ok in checks:
        metric = metrics.get(key)
        if metric is None:
            continue
        value = metric[column]
        metric["target"] = text
        metric["met"] = None if value is None else ok(value)
