"""The figures of one run, as the table lists them: each a label, a unit and the values of
the bridge and of the bare path, drawn from the phase records; it measures nothing."""

from __future__ import annotations

from benchlib.metric import Pair, Row, Rows
from benchlib.plan import MILLION, Plan
from benchlib.rig import Record
from benchlib.run import RunResult
from benchlib.system import KINDS


def figures_of(plan: Plan, run: RunResult) -> Rows:
    """Every figure of one run, in the table's order (``--only idle``: the quiet ones)."""
    table = _Table(plan, run)
    if plan.only == "latency":
        _latency(table)
        _losses(table)
        return table.rows
    loaded = plan.only != "idle"
    if loaded:
        _latency(table)
        _throughput(table)
        _commands(table)
        _cpu_under_load(table)
    _quiet(table)
    if loaded:
        _memory(table)
        _burst(table)
    _losses(table)
    return table.rows


class _Table:
    """The rows of one run as they are added."""

    def __init__(self, plan: Plan, run: RunResult) -> None:
        self.plan, self.run = plan, run
        self.rows: Rows = {}

    def add(
        self, key: str, label: str, unit: str, values: dict[str, float | None], summed: bool = False
    ) -> None:
        self.rows[key] = Row(label, unit, Pair(values["bridge"], values["baseline"]), summed)

    def find(self, name: str, path: str) -> Record:
        return next(p for p in self.run.records if p["phase"] == name and p["path"] == path)


def _latency(t: _Table) -> None:
    for rate, _ in t.plan.latency:
        for q, qname in ((0.5, "p50"), (0.99, "p99"), (0.999, "p99.9")):
            values = {
                path: t.find(f"latency {rate:g}/s", path).get("latency_ms", {}).get(qname)
                for path in ("bridge", "baseline")
            }
            n = t.find(f"latency {rate:g}/s", "bridge").get("latency_ms", {}).get("n", 0)
            note = f" (n={n})" if q * n > n - 1 else ""
            key = f"latency_{rate:g}_{qname.replace('.', '')}_ms"
            t.add(key, f"event latency {qname} @ {rate:g}/s{note}", "ms", values)


def _throughput(t: _Table) -> None:
    seconds = t.plan.throughput_seconds
    for qos in (0, 1):
        t.add(
            f"throughput_qos{qos}_eps",
            f"max sustained throughput, QoS {qos} ({seconds:g} s paced, 0 loss)",
            "events/s",
            {path: t.run.throughput[(path, qos)].sustained for path in KINDS},
        )
    for qos in (0, 1):
        t.add(
            f"saturation_qos{qos}_eps",
            f"saturation throughput, QoS {qos} (closed loop)",
            "events/s",
            {path: t.run.throughput[(path, qos)].saturation for path in KINDS},
        )


def _commands(t: _Table) -> None:
    for qname in ("p50", "p99"):
        t.add(
            f"command_latency_{qname}_ms",
            f"command latency {qname}",
            "ms",
            {path: t.find("commands", path)["latency_ms"][qname] for path in KINDS},
        )


def _cpu_under_load(t: _Table) -> None:
    top = max(rate for rate, _ in t.plan.latency)
    t.add(
        "cpu_s_per_10k_at_2000",
        f"CPU s / 10,000 events @ {top:g}/s",
        "s",
        {p: t.find(f"latency {top:g}/s", p)["sut_cpu_s_per_10k"] for p in KINDS},
    )
    t.add(
        "context_switches_per_event_at_2000",
        f"context switches / event @ {top:g}/s",
        "",
        {p: t.find(f"latency {top:g}/s", p).get("sut_context_switches_per_event") for p in KINDS},
    )
    t.add(
        "cpu_s_per_10k_at_max_qos1",
        "CPU s / 10,000 events at saturation, QoS 1",
        "s",
        {p: t.run.throughput[(p, 1)].cpu_s_per_10k_at_saturation for p in KINDS},
    )


def _quiet(t: _Table) -> None:
    idle, slow, seconds = t.run.idle, t.run.slow, t.plan.idle_seconds
    t.add(
        "idle_cpu_pct",
        f"idle CPU, % of one core ({seconds:g} s, schedstat)",
        "%",
        {p: idle[p].cpu_pct if idle else None for p in KINDS},
    )
    t.add(
        "idle_wakeups_per_s",
        "idle: times a thread got a CPU, per second",
        "/s",
        {p: idle[p].wakeups_per_s if idle else None for p in KINDS},
    )
    t.add(
        "cpu_us_per_event_at_1",
        f"CPU per event @ 1/s ({seconds:g} s, schedstat)",
        "us",
        {p: slow[p].cpu_us_per_event if slow else None for p in KINDS},
    )
    t.add(
        "cpu_pct_at_1",
        "CPU @ 1 event/s, % of one core",
        "%",
        {p: slow[p].cpu_pct if slow else None for p in KINDS},
    )


def _memory(t: _Table) -> None:
    million, events = t.run.million, t.plan.million_events or MILLION
    t.add(
        "peak_rss_mb",
        "peak RSS (VmHWM), loads within capacity",
        "MB",
        {path: round(kb / 1024, 1) for path, kb in t.run.steady_hwm_kb.items()},
    )
    t.add(
        "peak_rss_with_probes_mb",
        "peak RSS incl. the throughput search",
        "MB",
        {path: round(kb / 1024, 1) for path, kb in t.run.peak_hwm_kb.items()},
    )
    t.add(
        "rss_after_million_mb",
        f"RSS after {events:,} events",
        "MB",
        {p: round(million[p]["rss_after_kb"] / 1024, 1) if million else None for p in KINDS},
    )
    t.add(
        "rss_growth_million_pct",
        f"RSS growth over {events:,} events",
        "%",
        {p: million[p]["rss_growth_pct"] if million else None for p in KINDS},
    )


def _burst(t: _Table) -> None:
    if not t.plan.burst_events:
        return
    burst = {path: t.find("burst", path) for path in KINDS}
    t.add(
        "burst_lost",
        f"burst of {t.plan.burst_events:,} at full speed, broker up: events lost",
        "events",
        {path: burst[path]["lost"] for path in KINDS},
        summed=True,
    )
    t.add(
        "burst_delivered_s",
        f"burst of {t.plan.burst_events:,}: first write to last event received",
        "s",
        {path: burst[path]["delivered_in_s"] for path in KINDS},
    )


def _losses(t: _Table) -> None:
    def lost(path: str, overload: bool) -> int:
        return sum(
            p.get("lost", 0)
            for p in t.run.records
            if p["path"] == path and bool(p.get("overload")) is overload
        )

    t.add(
        "events_lost",
        "events lost, except steps that did not hold",
        "events",
        {path: lost(path, overload=False) for path in KINDS},
        summed=True,
    )
    t.add(
        "events_lost_overload",
        "events lost, throughput steps that did not hold",
        "events",
        {path: lost(path, overload=True) for path in KINDS},
        summed=True,
    )
