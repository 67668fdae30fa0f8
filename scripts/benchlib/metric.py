"""The report's metrics across runs: each run's values of the bridge and of the bare path, their
medians and the median of the per-run ratios, and the issue's targets; no I/O.

With ``--runs N`` the same figure is measured N times on a machine whose other load varies; the
median of each column resists one disturbed run, and the ratio is the median of the ratios of
each run (each run's bridge and bare path measured minutes apart, not a run apart). Losses are
the exception: a lost event in any run is a finding, so they are summed over the runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchlib.stats import median

Metrics = dict[str, dict[str, Any]]
"""Metric key -> label, unit, bridge, baseline, ratio, combined, runs (and target, met): the
JSON report's ``metrics``."""


@dataclass(frozen=True)
class Pair:
    bridge: float | None
    baseline: float | None

    @property
    def ratio(self) -> float | None:
        if self.bridge is None or not self.baseline:
            return None
        return round(self.bridge / self.baseline, 3)


@dataclass(frozen=True)
class Row:
    """One figure of one run."""

    label: str
    unit: str
    pair: Pair
    summed: bool = False  # over the runs (losses), not their median


Rows = dict[str, Row]


def combine(runs: list[Rows], checks: list[Check] | None = None) -> Metrics:
    """The metrics of all runs, in the first run's order and with its labels; one run's
    values come back as they are; marked against ``checks`` (default: the issue 11 ones)."""
    metrics: Metrics = {}
    for key, row in runs[0].items():
        pairs = [run[key].pair for run in runs]
        if row.summed:
            total = Pair(_total([p.bridge for p in pairs]), _total([p.baseline for p in pairs]))
            bridge, baseline, ratio = total.bridge, total.baseline, total.ratio
        else:
            bridge = median([p.bridge for p in pairs])
            baseline = median([p.baseline for p in pairs])
            ratio = median([p.ratio for p in pairs])
        metrics[key] = {
            "label": row.label,
            "unit": row.unit,
            "bridge": bridge,
            "baseline": baseline,
            "ratio": ratio,
            "combined": "sum" if row.summed else "median",
            "runs": [{"bridge": p.bridge, "baseline": p.baseline, "ratio": p.ratio} for p in pairs],
        }
    targets(metrics, ONE_READER if checks is None else checks)
    return metrics


def _total(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return sum(present) if present else None


Check = tuple[str, str, str, Callable[[float], bool]]
"""A target: metric key, the target as the table shows it, the column it applies to
("bridge" or "ratio"), and whether a value meets it."""

ONE_READER: list[Check] = [
    ("latency_200_p50_ms", "ratio <= 1.5", "ratio", lambda r: r <= 1.5),
    ("throughput_qos1_eps", "ratio >= 0.8", "ratio", lambda r: r >= 0.8),
    ("command_latency_p50_ms", "< 2 ms", "bridge", lambda v: v < 2),
    ("idle_cpu_pct", "< 0.01 %", "bridge", lambda v: v < 0.01),
    # Issue 11 allows a one-reader process 45 MB (issue 5 asked 40 of the re-exec'd one).
    ("peak_rss_mb", "<= 45 MB", "bridge", lambda v: v <= 45),
    ("rss_after_million_mb", "<= 45 MB", "bridge", lambda v: v <= 45),
    ("rss_growth_million_pct", "< 5 %", "bridge", lambda v: v < 5),
    ("events_lost", "0", "bridge", lambda v: v == 0),
    ("burst_lost", "0", "bridge", lambda v: v == 0),
]
"""The one-reader benchmark's targets (issue 11)."""


def targets(metrics: dict[str, dict[str, Any]], checks: list[Check]) -> None:
    """The issue's targets, marked met or not (reported, never asserted)."""
    for key, text, column, ok in checks:
        metric = metrics.get(key)
        if metric is None:
            continue
        value = metric[column]
        metric["target"] = text
        metric["met"] = None if value is None else ok(value)
