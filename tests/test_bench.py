"""``scripts/bench.py`` runs end to end and reports every figure for the bridge and the bare path.

A smoke test of the benchmark itself, with every phase one or two seconds long and without the
1,000,000-event run: the figures are meaningless at that length, only their presence is checked;
then ``--only idle --runs 2``; then a fleet of five readers (``--fleet 5``, two one-reader
processes beside it), every reader's events complete; then ``--local`` (local answers on and
off); and the parts that decide a figure: the sustained-rate search, the schedstat clock, the
medians of several runs.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO, mosquitto_binary

if str(REPO / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO / "scripts"))  # the scripts import each other from there
from benchlib.metric import Pair, Row, combine  # scripts/benchlib/
from harness import ThreadClock  # scripts/harness.py

pytestmark = [pytest.mark.slow, pytest.mark.integration]

QUIET = {"idle_cpu_pct", "idle_wakeups_per_s", "cpu_us_per_event_at_1", "cpu_pct_at_1"}
LATENCY = {f"latency_{rate}_{q}_ms" for rate in (10, 200, 2000) for q in ("p50", "p99", "p999")}
MEASURED = (
    LATENCY
    | {
        "throughput_qos0_eps",
        "throughput_qos1_eps",
        "saturation_qos0_eps",
        "saturation_qos1_eps",
        "command_latency_p50_ms",
        "command_latency_p99_ms",
        "cpu_s_per_10k_at_2000",
        "context_switches_per_event_at_2000",
        "cpu_s_per_10k_at_max_qos1",
        "peak_rss_mb",
        "peak_rss_with_probes_mb",
        "events_lost",
        "events_lost_overload",
        "burst_lost",
        "burst_delivered_s",
    }
    | QUIET
)
MILLION = {"rss_after_million_mb", "rss_growth_million_pct"}


FLEET = {
    "fleet_ready_s",
    "fleet_settle_cpu_ms",
    "fleet_idle_cpu_pct",
    "fleet_idle_wakeups_per_s",
    "fleet_cpu_pct",
    "fleet_cpu_us_per_event",
    "fleet_pss_mb",
    "fleet_latency_p50_ms",
    "fleet_latency_p99_ms",
    "fleet_latency_p999_ms",
    "fleet_events_lost",
}
FLOOD = {
    "flood_eps",
    "single_saturation_eps",
    "flood_cpu_us",
    "single_cpu_us",
    "flood_busy_cores",
    "flood_lost",
    "shards_eps",
    "shards_cpu_us",
    "shards_busy_cores",
    "shards_lost",
}


def run_bench(tmp_path: Path, *flags: str) -> tuple[str, dict[str, Any]]:
    """The printed output and the JSON report of ``scripts/bench.py`` with ``flags``."""
    mosquitto_binary()  # fails with the install hint when it is missing
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench.py"),
            *flags,
            "--json",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "| metric" in result.stdout  # the table
    report: dict[str, Any] = json.loads(out.read_text())
    return result.stdout, report


@pytest.mark.timeout(120)
def test_short_run_reports_every_metric_for_both_paths(tmp_path: Path) -> None:
    _, report = run_bench(
        tmp_path, "--quick", "--skip-million", "--seconds", "1", "--idle-seconds", "2"
    )
    metrics = report["metrics"]
    assert set(metrics) == MEASURED | MILLION
    for key in MEASURED:
        for path in ("bridge", "baseline"):
            value = metrics[key][path]
            assert isinstance(value, int | float), (key, path, value)
            assert value >= 0, (key, path, value)
        # An idle path may not run at all in a short window (the bridge on one event loop).
        if not key.endswith("_lost") and not key.startswith(("events_lost", "idle_")):
            assert metrics[key]["ratio"] > 0, key
    assert metrics["burst_lost"]["bridge"] == 0  # the spool absorbs a burst (issue 10)
    for key in MILLION:  # skipped: present, without a value
        assert metrics[key]["bridge"] is None
        assert metrics[key]["baseline"] is None
    assert report["meta"]["million_skipped"] is True
    for key in (
        "latency_200_p50_ms",
        "throughput_qos1_eps",
        "command_latency_p50_ms",
        "idle_cpu_pct",
    ):
        assert metrics[key]["target"]
        assert isinstance(metrics[key]["met"], bool)
    paths = {(phase["phase"], phase["path"]) for phase in report["phases"]}
    assert report["meta"]["plan"]["idle_seconds"] == 2
    for path in ("bridge", "baseline"):  # 2 s at 1 event/s: 2 events, each the CPU of its own
        assert metrics["cpu_pct_at_1"][path] > 0
    phases = ("idle", "1 event/s", "latency 10/s", "latency 200/s", "latency 2000/s", "commands")
    for phase in (*phases, "burst"):
        assert {(phase, "bridge"), (phase, "baseline")} <= paths


@pytest.mark.timeout(120)
def test_only_idle_repeated_reports_each_run_and_the_medians(tmp_path: Path) -> None:
    output, report = run_bench(tmp_path, "--only", "idle", "--runs", "2", "--idle-seconds", "1")
    assert "median of 2" in output  # the table says what its figures are
    metrics = report["metrics"]
    assert set(metrics) == QUIET | {"events_lost", "events_lost_overload"}
    for key in QUIET:
        assert len(metrics[key]["runs"]) == 2
        for path in ("bridge", "baseline"):
            values = [run[path] for run in metrics[key]["runs"]]
            assert all(isinstance(v, int | float) and v >= 0 for v in values), (key, values)
            assert metrics[key][path] == pytest.approx(sum(values) / 2, abs=1e-6)  # 2: the mean
    assert metrics["events_lost"]["bridge"] == 0
    assert report["meta"]["runs"] == 2
    assert [context["run"] for context in report["meta"]["per_run"]] == [1, 2]
    ran = {(phase["run"], phase["phase"], phase["path"]) for phase in report["phases"]}
    assert ran == {
        (run, phase, path)
        for run in (1, 2)
        for phase in ("idle", "1 event/s")
        for path in ("bridge", "baseline")
    }


@pytest.mark.timeout(90)
def test_local_run_compares_the_event_path_with_answers_on_and_off_and_times_the_answers(
    tmp_path: Path,
) -> None:
    output, report = run_bench(tmp_path, "--local", "--seconds", "1", "--pin")
    assert "local answers benchmark" in output
    assert "CPU of their own (--pin)" in output
    cpus = report["cpus"]  # --pin: the two bridges on CPU 0, the rest on the others
    assert cpus["bench"] == cpus["bench-local"] == [0], cpus
    assert cpus["benchmark"] == cpus["broker"], cpus
    assert cpus["broker"], cpus
    assert 0 not in cpus["broker"], cpus
    rows = {row["figure"]: row for row in report["rows"]}
    for rate in (10, 200, 2000):
        for figure in ("p50 ms", "p99 ms", "CPU s / 10k events"):
            row = rows[f"latency {rate}/s: {figure}"]
            assert row["off"] > 0, row
            assert row["on"] > 0, row
        lost = rows[f"latency {rate}/s: events lost"]
        assert (lost["off"], lost["on"]) == (0, 0)
    assert report["answers_missing"] == 0
    answers = report["answers_ms"]
    assert 0 < answers["p50"] <= answers["p99"] <= answers["max"]


@pytest.mark.timeout(90)
def test_short_fleet_run_reports_every_fleet_figure_and_loses_nothing(tmp_path: Path) -> None:
    output, report = run_bench(
        tmp_path,
        *("--fleet", "5", "--fleet-processes", "2", "--seconds", "2", "--idle-seconds", "2"),
    )
    assert "bare fleet path" in output
    assert "2 processes" in output  # the second table
    metrics = report["metrics"]
    assert set(metrics) == FLEET | FLOOD
    for key in FLEET | {"flood_eps", "flood_cpu_us", "flood_busy_cores", "flood_lost"}:
        for path in ("bridge", "baseline"):
            value = metrics[key][path]
            assert isinstance(value, int | float), (key, path, value)
            assert value >= 0, (key, path, value)
    for key in ("fleet_cpu_pct", "fleet_pss_mb", "fleet_latency_p50_ms", "flood_eps"):
        assert metrics[key]["ratio"] > 0, key
    assert metrics["single_saturation_eps"]["bridge"] > 0
    assert metrics["single_cpu_us"]["bridge"] > 0
    for key in ("shards_eps", "shards_cpu_us"):  # the flood again, the fleet in 2 shards
        assert metrics[key]["bridge"] > 0, key
    assert metrics["shards_lost"]["bridge"] == 0
    assert isinstance(metrics["shards_eps"]["met"], bool)
    assert metrics["shards_eps"]["to_single"] > 0
    # /proc ticks (10 ms) over a 2 s flood: a little over the core count is their rounding
    assert 0 < metrics["flood_busy_cores"]["bridge"] <= (os.cpu_count() or 1) + 0.1
    for key in ("fleet_events_lost", "flood_lost"):  # every reader's counters complete
        assert metrics[key]["bridge"] == 0
        assert metrics[key]["baseline"] == 0
    for key in ("fleet_ready_s", "fleet_cpu_pct", "fleet_pss_mb", "flood_eps", "flood_cpu_us"):
        assert isinstance(metrics[key]["met"], bool), key
    processes = report["processes_metrics"]
    assert set(processes) == FLEET
    for key in FLEET:  # "bridge": the 2 one-reader processes, "baseline": the fleet bridge
        assert isinstance(processes[key]["bridge"], int | float), key
    assert processes["fleet_events_lost"]["bridge"] == 0
    ran = {(phase["phase"], phase["path"]) for phase in report["phases"]}
    for path in ("bridge", "baseline"):
        for phase in ("start", "settle", "idle", "5 events/s", "flood of 5", "all events"):
            assert (phase, path) in ran
    assert ("flood of 1", "single") in ran
    assert ("flood of 5", "shards") in ran
    assert ("2 events/s", "processes") in ran


def _search(capacity: float, start: float, steps: int = 5) -> tuple[float | None, float | None]:
    """The benchmark's sustained-rate search against a path that holds up to ``capacity``."""
    sys.path.insert(0, str(REPO / "scripts"))  # a script, importable only from there
    try:
        bench = importlib.import_module("bench")
    finally:
        sys.path.remove(str(REPO / "scripts"))
    next_rate: Callable[[float | None, float | None], float | None] = bench.next_rate
    passed = failed = None
    rate: float | None = start
    for _ in range(steps):
        if rate is None:
            break
        if rate <= capacity:
            passed = rate
        else:
            failed = rate
        rate = next_rate(passed, failed)
    return passed, failed


@pytest.mark.parametrize("capacity", [0.5, 0.7, 0.86, 0.95, 1.0, 1.15])
def test_sustained_search_goes_up_as_well_as_down(capacity: float) -> None:
    passed, failed = _search(capacity, start=0.9)
    assert passed is not None
    assert passed <= capacity
    # within 10 % of what the path holds, whichever side of the first step it lies
    assert passed >= 0.9 * capacity
    if failed is not None:
        assert failed > capacity


def test_thread_clock_keeps_the_time_of_a_thread_that_ended() -> None:
    clock = ThreadClock(os.getpid())
    spun, may_end = threading.Event(), threading.Event()

    def spin() -> None:
        start = time.thread_time()
        while time.thread_time() - start < 0.05:
            pass
        spun.set()
        may_end.wait(10)

    start = clock.read()
    worker = threading.Thread(target=spin)
    worker.start()
    assert spun.wait(10)
    seen = clock.read()  # the worker's 50 ms are counted now
    may_end.set()
    worker.join()
    after = clock.read()  # the worker's counters are gone: its time must stay counted
    assert (seen - start).cpu_ns >= 45_000_000
    assert after.cpu_ns >= seen.cpu_ns
    assert after.slices >= seen.slices > start.slices


def test_runs_combine_into_the_median_of_each_column_and_of_the_ratios() -> None:
    def run(bridge: float, baseline: float, lost: int) -> dict[str, Row]:
        return {
            "latency_200_p50_ms": Row("p50", "ms", Pair(bridge, baseline)),
            "events_lost": Row("lost", "events", Pair(lost, 0), summed=True),
        }

    runs = [run(1.0, 1.0, 0), run(3.0, 1.0, 2), run(2.0, 2.0, 0)]
    metrics = combine(runs)
    latency = metrics["latency_200_p50_ms"]
    assert (latency["bridge"], latency["baseline"]) == (2.0, 1.0)
    assert latency["ratio"] == 1.0  # the median of 1, 3 and 1, not 2.0 / 1.0
    assert latency["met"] is True
    assert [r["ratio"] for r in latency["runs"]] == [1.0, 3.0, 1.0]
    lost = metrics["events_lost"]
    assert lost["bridge"] == 2  # a loss in any run counts: summed, not the median (0)
    assert lost["met"] is False
    single = combine(runs[1:2])["latency_200_p50_ms"]  # one run: its values as they are
    assert (single["bridge"], single["baseline"], single["ratio"]) == (3.0, 1.0, 3.0)
    assert single["met"] is False
