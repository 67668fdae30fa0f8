"""The soak's report: what a run recorded, judged (the failures that fail it), as the JSON
report and its printed summary; it measures nothing itself."""

from __future__ import annotations

import sys
from dataclasses import asdict
from typing import Any

from soaklib.loss import Losses, count_losses
from soaklib.result import Ending
from soaklib.soak import Soak


def build_report(soak: Soak, end: Ending) -> dict[str, Any]:
    """The report of a finished run; what fails it is added to ``soak.failures`` first."""
    _, emitter, _ = soak.parts()
    exposed = {c for window in soak.kill_windows for c in window.exposed}
    discarded = {c for drop in soak.reset_drops for c in drop.discarded}
    losses = count_losses(soak.ledger, emitter.stats, exposed, discarded, soak.started)
    growth = 100.0 * (end.rss_end - end.rss_start) / end.rss_start if end.rss_start > 0 else 0.0
    _judge(soak, losses, growth)
    return {
        **_events(soak, end, losses),
        **_losses(soak, losses),
        **_faults(soak),
        **_bridge(soak, end, growth),
    }


def _judge(soak: Soak, losses: Losses, growth: float) -> None:
    """What fails the run: losses by the bridge, phantoms, seq conflicts, RSS growth."""
    _, _, subscriber = soak.parts()
    stats = subscriber.stats
    if losses.by_bridge:
        soak.failures.append(f"{losses.by_bridge} event(s) lost by the bridge")
    if losses.phantom or losses.beyond:
        soak.failures.append(
            f"{losses.phantom + losses.beyond} event(s) received that were never sent"
        )
    if stats.seq_conflicts:
        soak.failures.append(f"{stats.seq_conflicts} seq conflict(s)")
    if soak.args.max_rss_growth is not None and growth > soak.args.max_rss_growth:
        soak.failures.append(
            f"bridge RSS grew by {growth:.1f} % (> {soak.args.max_rss_growth:g} %)"
        )


def _events(soak: Soak, end: Ending, losses: Losses) -> dict[str, Any]:
    _, emitter, subscriber = soak.parts()
    return {
        "duration_s": round(end.emitted_for, 1),
        "rate_target_per_s": soak.args.rate,
        "events_attempted": losses.attempted,
        "events_sent": emitter.stats.sent,
        "events_not_sent_no_reader_client": emitter.stats.not_sent,
        "emitter_catch_ups": emitter.stats.catch_ups,
        "received_unique": subscriber.stats.unique,
        "messages_received": subscriber.stats.messages,
    }


def _losses(soak: Soak, losses: Losses) -> dict[str, Any]:
    _, _, subscriber = soak.parts()
    stats = subscriber.stats
    return {
        "lost": len(losses.lost),
        "lost_exposed_to_broker_sigkill": losses.sigkill,
        "lost_unsent_by_simulator_at_rst": losses.unsent,
        "lost_by_bridge": losses.by_bridge,
        "lost_sample": [asdict(event) for event in losses.sample],
        "duplicated": stats.duplicates,
        "duplicate_seqs": stats.duplicate_seqs,
        "seq_conflicts": stats.seq_conflicts,
        "seq_not_increasing_with_counter": losses.seq_not_increasing,
        "out_of_order_first_copies": stats.out_of_order,
        "late_marked": stats.late,
        "unparseable_messages": stats.unparseable,
        "received_never_sent": losses.phantom + losses.beyond,
    }


def _faults(soak: Soak) -> dict[str, Any]:
    _, _, subscriber = soak.parts()
    simulator, stats = soak.simulator, subscriber.stats
    assert simulator is not None
    kinds = [fault.kind for fault in soak.faults]
    drops = soak.reset_drops
    return {
        "broker_restarts": sum(1 for kind in kinds if kind.startswith("broker")),
        "broker_restarts_sigterm": kinds.count("broker-sigterm"),
        "broker_restarts_sigkill": kinds.count("broker-sigkill"),
        "sigkill_outstanding_at_kill": [w.outstanding for w in soak.kill_windows],
        "sigkill_exposed_events": [len(w.exposed) for w in soak.kill_windows],
        "rst_drops_with_unsent_bytes": sum(1 for d in drops if d.unsent_bytes),
        "rst_unsent_bytes_max": max((d.unsent_bytes for d in drops), default=0),
        "rst_wait_ms_max": max((d.waited_ms for d in drops), default=0.0),
        "rst_still_unsent_at_reset": sum(1 for d in drops if d.still_unsent_bytes),
        "reader_drops": kinds.count("reader-fin") + kinds.count("reader-rst"),
        "reader_drops_fin": kinds.count("reader-fin"),
        "reader_drops_rst": kinds.count("reader-rst"),
        "reader_connections_accepted": simulator.accepted,
        "subscriber_connects": stats.connects,
        "subscriber_sessions_resumed": stats.sessions_resumed,
        "subscriber_callback_errors": stats.callback_errors,
    }


def _bridge(soak: Soak, end: Ending, growth: float) -> dict[str, Any]:
    bridge, _, _ = soak.parts()
    problems, problem_lines = bridge.problems()
    return {
        "drained": end.drained,
        "drain_s": round(end.drain_seconds, 1),
        "bridge_rss_start_kb": end.rss_start,
        "bridge_rss_end_kb": end.rss_end,
        "bridge_rss_growth_pct": round(growth, 2),
        "bridge_rss_peak_kb": end.rss_peak,
        "bridge_cpu_s": round(end.cpu_end, 2),
        "bridge_cpu_s_after_warmup": round(end.cpu_end - end.cpu_start, 2),
        "bridge_exit_code": end.exit_code,
        "bridge_log_problems": problems,
        "bridge_log_problem_lines": problem_lines,
        "faults": [asdict(fault) for fault in soak.faults],
        "samples": [asdict(sample) for sample in soak.samples],
        "workdir": str(soak.workdir),
        "failures": soak.failures,
        "ok": not soak.failures,
    }


# -- the printed summary ----------------------------------------------------------------------


def _line(label: str, value: object) -> None:
    print(f"  {label:<44} {value}")


def print_report(report: dict[str, Any]) -> None:
    print("\n=== soak report ===")
    _print_events(report)
    _print_faults(report)
    _print_bridge(report)
    print("  result:", "PASS" if report["ok"] else "FAIL")
    for failure in report["failures"]:
        print("   -", failure)
    sys.stdout.flush()


def _print_events(report: dict[str, Any]) -> None:
    _line("duration (emitting)", f"{report['duration_s']} s at {report['rate_target_per_s']}/s")
    _line("events sent (written to the bridge's socket)", report["events_sent"])
    _line("events not sent (no reader client)", report["events_not_sent_no_reader_client"])
    _line("received by the subscriber (unique)", report["received_unique"])
    _line("lost", report["lost"])
    _line("  of which exposed to a broker SIGKILL", report["lost_exposed_to_broker_sigkill"])
    _line("  of which never left the simulator (RST)", report["lost_unsent_by_simulator_at_rst"])
    _line("  of which lost by the bridge", report["lost_by_bridge"])
    _line("duplicated (extra copies)", report["duplicated"])
    _line("late-marked", report["late_marked"])
    _line(
        "seq conflicts / seq not increasing",
        (f"{report['seq_conflicts']} / {report['seq_not_increasing_with_counter']}"),
    )
    _line("out-of-order first copies", report["out_of_order_first_copies"])


def _print_faults(report: dict[str, Any]) -> None:
    _line(
        "broker restarts (SIGTERM + SIGKILL)",
        f"{report['broker_restarts']} ({report['broker_restarts_sigterm']} + "
        f"{report['broker_restarts_sigkill']})",
    )
    _line(
        "reader drops (FIN + RST)",
        f"{report['reader_drops']} ({report['reader_drops_fin']} + {report['reader_drops_rst']})",
    )
    _line(
        "RST drops that had to wait for unsent bytes",
        f"{report['rst_drops_with_unsent_bytes']} (max {report['rst_unsent_bytes_max']} bytes, "
        f"{report['rst_wait_ms_max']} ms)",
    )


def _print_bridge(report: dict[str, Any]) -> None:
    _line("drain", f"{report['drain_s']} s, complete: {report['drained']}")
    _line(
        "bridge RSS start / end / peak (kB)",
        (
            f"{report['bridge_rss_start_kb']} / {report['bridge_rss_end_kb']} / "
            f"{report['bridge_rss_peak_kb']}"
        ),
    )
    _line("bridge RSS growth", f"{report['bridge_rss_growth_pct']} %")
    _line(
        "bridge CPU (total / after warm-up)",
        (f"{report['bridge_cpu_s']} s / {report['bridge_cpu_s_after_warmup']} s"),
    )
    _line("bridge exit status after SIGTERM", report["bridge_exit_code"])
    _line("bridge log ERROR/traceback lines", report["bridge_log_problems"])
    _line("work directory (logs)", report["workdir"])
