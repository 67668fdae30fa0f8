"""``bench.py --local``: the event path of a bridge that answers every read itself
(``BRIDGE_LOCAL_REPLY=accept``) against the same bridge without local answers, in the same
run, and how soon after a read its answer reaches the reader (README, When the broker is down).
The two bridges share each latency window (10 events/s) or take turns (faster rates)."""

from __future__ import annotations

import contextlib
import os
import queue
import statistics
import time
from typing import Any

from benchlib.event import COMMAND
from benchlib.phases import latency_phase, receive_command
from benchlib.rig import Record, Rig
from benchlib.stats import ms, percentile
from benchlib.system import LOCAL_KINDS, Sut

ANSWERS_PACE = 0.2
"""Seconds between the reader doubles' reads during the event-latency phases. The answering
bridge's answer reaches its reader double right after its event goes to the broker; read at
once, it woke a thread of this process just as the subscriber thread, in the same process
(one GIL), received the event it times: a cost of the benchmark charged to the bridge that
answers. The answers' own latency is measured in its own phase, read at once."""
ANSWER_PAUSE = 0.05
"""Seconds between a read's answer and the next read: one read at a time, so that no other
command occupies the command gap (the condition of the 20 ms target)."""


def answer_phase(rig: Rig, sut: Sut) -> Record:
    """One read at a time; from its write to the reader double's ``recv()`` of the answer."""
    incoming = sut.reader.incoming
    with contextlib.suppress(queue.Empty):
        while True:
            incoming.get_nowait()  # the latency phases' answers
    phase = rig.new_phase("local answers", sut, rig.plan.command_samples)
    samples: list[int] = []
    wrong = missing = 0
    for _ in range(rig.plan.command_samples):
        rig.write(sut, phase, 1)
        got, arrived = receive_command(incoming)
        if arrived is None:
            missing += 1
            continue
        if got.strip(b"\r\n\x00 ") != COMMAND:
            wrong += 1
        else:
            samples.append(arrived - phase.last_write_ns)
        time.sleep(ANSWER_PAUSE)
    rig.drain(phase)
    rig.end_phase(phase)
    samples.sort()
    record: Record = {
        "phase": "local answers",
        "path": sut.kind,
        "samples": len(samples),
        "missing": missing,
        "wrong": wrong,
        "events_lost": phase.lost(),
        "latency_ms": {
            "p50": ms(percentile(samples, 0.5)),
            "p99": ms(percentile(samples, 0.99)),
            "max": ms(samples[-1]) if samples else None,
        },
    }
    rig.records.append(record)
    rig.say(f"local answers: {record['latency_ms']}, missing {missing}, wrong {wrong}")
    return record


def measure_local(rig: Rig, number: int) -> list[Record]:
    """One run: fresh bridges, the latency phases for both (at the rates where they take
    turns, the bridge without answers first in odd runs, last in even ones), then the
    answers of the one that answers."""
    if rig.plan.runs > 1:
        rig.say(f"run {number} of {rig.plan.runs}")
    rig.start_suts(number)
    kinds = LOCAL_KINDS if number % 2 else LOCAL_KINDS[::-1]
    doubles = [rig.sut(kind, 1).reader for kind in kinds]
    for double in doubles:
        double.pace = ANSWERS_PACE
    for rate, seconds in rig.plan.latency:
        latency_phase(rig, rate, seconds, kinds)
    for double in doubles:
        double.pace = 0.0
    time.sleep(2 * ANSWERS_PACE)  # each double's thread back in recv(), reading at once
    answer_phase(rig, rig.sut("local", 1))
    records = rig.records
    rig.stop_suts()
    return records


def _figure(records: list[Record], phase: str, path: str, *keys: str) -> float | None:
    for record in records:
        if record["phase"] == phase and record["path"] == path:
            value: Any = record
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            return float(value) if isinstance(value, int | float) else None
    return None


def local_report(rig: Rig, runs: list[list[Record]]) -> dict[str, Any]:
    """Medians over the runs: each latency phase's p50 / p99 and CPU per 10,000 events for
    both bridges, the median of the per-run ratios (on / off) and each run's; the answers'
    latency."""

    def median(phase: str, path: str, *keys: str) -> float | None:
        values = [v for run in runs if (v := _figure(run, phase, path, *keys)) is not None]
        return round(statistics.median(values), 3) if values else None

    rows = []
    for rate, _ in rig.plan.latency:
        phase = f"latency {rate:g}/s"
        for label, keys in (
            ("p50 ms", ("latency_ms", "p50")),
            ("p99 ms", ("latency_ms", "p99")),
            ("CPU s / 10k events", ("sut_cpu_s_per_10k",)),
            ("events lost", ("lost",)),
        ):
            off, on = median(phase, "bridge", *keys), median(phase, "local", *keys)
            pairs = [
                (_figure(run, phase, "bridge", *keys), _figure(run, phase, "local", *keys))
                for run in runs
            ]
            ratios = [round(b / a, 2) for a, b in pairs if a and b is not None]
            rows.append(
                {
                    "figure": f"{phase}: {label}",
                    "off": off,
                    "on": on,
                    "ratio": round(statistics.median(ratios), 3) if ratios else None,
                    "ratios": ratios,
                }
            )
    answers = {
        key: median("local answers", "local", "latency_ms", key) for key in ("p50", "p99", "max")
    }
    return {
        "code": rig.code,
        "pinned": bool(rig.args.pin),
        "cpus": rig.cpus,
        "runs": len(runs),
        "load_average": os.getloadavg(),
        "rows": rows,
        "answers_ms": answers,
        "answers_missing": sum(
            _figure(run, "local answers", "local", "missing") or 0 for run in runs
        ),
        "records": runs,
    }


def print_local(report: dict[str, Any]) -> None:
    """The report as a Markdown table (README, When the broker is down)."""
    where = "bridges on a CPU of their own (--pin)" if report["pinned"] else "all on every CPU"
    print(
        f"\nlocal answers benchmark, {report['code']}, median of {report['runs']} run(s), {where}\n"
    )
    print("| metric | local answers off | local answers on | ratio (median) | each run's |")
    print("|---|---|---|---|---|")
    for row in report["rows"]:
        each = ", ".join(f"{r:g}" for r in row["ratios"])
        print(f"| {row['figure']} | {row['off']} | {row['on']} | {row['ratio']} | {each} |")
    answers = report["answers_ms"]
    print(
        f"\nanswer latency (read written -> answer received), ms: p50 {answers['p50']}, "
        f"p99 {answers['p99']}, max {answers['max']}; missing {report['answers_missing']}"
    )
