"""The figures of one run, as the table lists them: each a label, a unit and the values of
the bridge and of the bare path, drawn from the phase records; it measures nothing."""

from __future__ import annotations

from benchlib.metric import Pair, Row, Rows
from benchlib.plan import MILLION, Plan
from benchlib.rig import Record
from benchlib.run import RunResult
from benchlib.system import KINDS


def figures_of(plan: Plan, run: RunResult) -> Rows:
    """Every figure of one run, in the table's order."""

    def find(name: str, path: str) -> Record:
        return next(p for p in run.records if p["phase"] == name and p["path"] == path)

    rows: Rows = {}

    def add(
        key: str, label: str, unit: str, values: dict[str, float | None], summed: bool = False
    ) -> None:
        rows[key] = Row(label, unit, Pair(values["bridge"], values["baseline"]), summed)

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
            summed=True,
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
        summed=True,
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
        summed=True,
    )
    return rows
