"""The report as the table the benchmark prints; it measures nothing."""

from __future__ import annotations

import sys
from typing import Any


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def print_table(report: dict[str, Any]) -> None:
    """The metrics as a Markdown table, then the context and the notes."""
    runs = report["meta"]["runs"]
    print_metrics(report["metrics"], runs)
    _print_context(report["meta"])
    if runs > 1:
        print(
            f"bridge, baseline: the medians of {runs} runs; ratio: the median of the {runs} "
            "per-run ratios; losses: summed over the runs"
        )
    for note in report["notes"]:
        print(" -", note)
    sys.stdout.flush()


def print_metrics(
    metrics: dict[str, dict[str, Any]], runs: int, columns: tuple[str, str] = ("bridge", "baseline")
) -> None:
    """The metrics as a Markdown table, the two paths' columns headed ``columns``."""
    _print_rows(_rows(metrics, runs, columns))


def _rows(
    metrics: dict[str, dict[str, Any]], runs: int, columns: tuple[str, str]
) -> list[tuple[str, ...]]:
    of = f", median of {runs}" if runs > 1 else ""
    first, second = columns
    rows: list[tuple[str, ...]] = [
        ("metric", "unit", f"{first}{of}", f"{second}{of}", f"ratio{of}", "target", "met?")
    ]
    for metric in metrics.values():
        met = metric.get("met")
        rows.append(
            (
                metric["label"],
                metric["unit"],
                _fmt(metric["bridge"]),
                _fmt(metric["baseline"]),
                "n/a" if metric["ratio"] is None else f"{metric['ratio']:.2f}",
                metric.get("target", ""),
                "" if "target" not in metric else "n/a" if met is None else "yes" if met else "NO",
            )
        )
    return rows


def _print_rows(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    for n, row in enumerate(rows):
        cells = [
            cell.ljust(width) if i < 2 or i >= 5 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("| " + " | ".join(cells) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def _print_context(meta: dict[str, Any]) -> None:
    print(
        f"\nruntime {meta['runtime_s']} s; {meta['cpus']} CPUs; load average "
        f"{meta['load_average_start'][0]} at the start, {meta['load_average_end'][0]} at the end; "
        f"bridge at {meta['git']}; {meta['mosquitto']}; paho {meta['paho']}; "
        f"subscriber: {meta['subscriber']}"
    )
    for context in meta["per_run"]:
        whole = context["cpu_whole_run"]
        if whole:
            run = f"run {context['run']}: " if meta["runs"] > 1 else ""
            print(
                f"{run}machine busy on average {whole['machine_busy_cores']} of {meta['cpus']} "
                f"cores, {whole['other_busy_cores']} of them by other processes"
            )
    if meta["plan"].get("only") == "idle":
        print("only the idle and 1 event/s phases ran (--only idle)")
    elif meta["plan"].get("only") == "latency":
        print("only the event latency phases ran (--only latency)")
    elif meta["million_skipped"]:
        print("the 1,000,000-event run was skipped (--skip-million)")
