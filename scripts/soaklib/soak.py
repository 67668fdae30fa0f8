"""One soak run: the set-up, the loop of faults and samples until the time is up, the drain and
the tear-down; what it records goes to :mod:`soaklib.report`, which judges it."""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

from bridge.simulator import Simulator
from soaklib.emitter import Emitter
from soaklib.errors import SoakError
from soaklib.fault import drop_client, excused, kill_window, wait_unsent
from soaklib.ledger import Ledger
from soaklib.process import BridgeProcess, Broker
from soaklib.result import Ending, Fault, KillWindow, ResetDrop, Sample
from soaklib.subscriber import Subscriber


@dataclass
class Schedule:
    """When each periodic step of the loop is due next, in s since the start."""

    sample: float
    restart: float
    drop: float
    progress: float


class Soak:
    """One soak: its processes, the ledger, and what the run recorded (samples, faults,
    failures)."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.ledger = Ledger()
        self.broker = Broker(workdir, args.broker_persistence, args.autosave_interval)
        self.simulator: Simulator | None = None
        self.subscriber: Subscriber | None = None
        self.bridge: BridgeProcess | None = None
        self.emitter: Emitter | None = None
        self.samples: list[Sample] = []
        self.faults: list[Fault] = []
        self.kill_windows: list[KillWindow] = []
        self.reset_drops: list[ResetDrop] = []
        self.failures: list[str] = []
        self.started = time.monotonic()
        self._restarts = 0
        self._drops = 0

    # -- set-up and tear-down -------------------------------------------------------------

    def setup(self) -> None:
        self.broker.start()
        self.simulator = Simulator("127.0.0.1", 0, b"\r\n").start()
        self.subscriber = Subscriber(self.broker.port, self.ledger, f"soak-sub-{os.getpid()}")
        self.subscriber.start()
        self.bridge = BridgeProcess(self.workdir, self.simulator.port, self.broker.port)
        if not self.simulator.wait_client(30):
            raise SoakError(f"the bridge did not connect to the simulator; see {self.bridge.log}")
        self.emitter = Emitter(self.simulator, self.ledger, self.args.rate)

    def cleanup(self) -> None:
        """Everything down, whatever happened; the bridge first (it may hold the emitter)."""
        if self.bridge is not None and self.bridge.alive():
            self.bridge.stop(timeout=5)
        if self.emitter is not None:
            self.emitter.stop(timeout=5)
        if self.subscriber is not None:
            self.subscriber.close()
        if self.simulator is not None:
            self.simulator.stop()
        self.broker.stop()

    def parts(self) -> tuple[BridgeProcess, Emitter, Subscriber]:
        if self.bridge is None or self.emitter is None or self.subscriber is None:
            raise SoakError("setup() first")
        return self.bridge, self.emitter, self.subscriber

    # -- the run ----------------------------------------------------------------------------

    def run(self) -> Ending:
        bridge, emitter, _ = self.parts()
        emitter.start()
        self.started = time.monotonic()
        warm = self._loop()
        end = Ending(emitted_for=time.monotonic() - self.started)
        if not emitter.stop():
            self.failures.append("the emitter thread did not stop (blocked in a write)")
        # A run shorter than the warm-up is measured from its end.
        end.rss_start, end.cpu_start = warm or (bridge.rss_kb(), bridge.cpu_seconds())
        drain_started = time.monotonic()
        end.drained = self._drain(self.args.drain_timeout)
        end.drain_seconds = time.monotonic() - drain_started
        self._sample(time.monotonic() - self.started)
        end.rss_end, end.cpu_end, end.rss_peak = (
            bridge.rss_kb(),
            bridge.cpu_seconds(),
            bridge.hwm_kb(),
        )
        end.exit_code = self._stop_bridge()
        return end

    def _stop_bridge(self) -> int | None:
        """SIGTERM to the bridge if it still runs; its exit status either way."""
        bridge, _, _ = self.parts()
        if not bridge.alive():
            return bridge.process.returncode
        exit_code = bridge.stop(timeout=self.args.stop_timeout)
        if exit_code != 0:
            self.failures.append(f"the bridge exited with status {exit_code} after SIGTERM")
        return exit_code

    def _loop(self) -> tuple[int, float] | None:
        """Faults and samples until the time is up; RSS and CPU after the warm-up."""
        args = self.args
        bridge, _, _ = self.parts()
        warm: tuple[int, float] | None = None
        due = Schedule(
            sample=0.0,
            restart=args.broker_restart_every or float("inf"),
            drop=args.reader_drop_every or float("inf"),
            progress=args.progress,
        )
        while (elapsed := time.monotonic() - self.started) < args.minutes * 60:
            if not bridge.alive():
                self.failures.append(
                    f"the bridge exited with status {bridge.process.returncode} "
                    f"after {elapsed:.0f} s"
                )
                break
            if warm is None and elapsed >= args.warmup:
                warm = bridge.rss_kb(), bridge.cpu_seconds()
            self._steps(elapsed, due)
            if self._emitter_stalled(elapsed):
                break
            time.sleep(0.2)
        return warm

    def _steps(self, elapsed: float, due: Schedule) -> None:
        """The periodic steps that are due: a sample, a broker restart, a drop, a progress line."""
        args = self.args
        if elapsed >= due.sample:
            self._sample(elapsed)
            due.sample += args.sample_every
        if elapsed >= due.restart:
            self._restart_broker(elapsed)
            due.restart += args.broker_restart_every
        if elapsed >= due.drop:
            self._drop_reader(elapsed)
            due.drop += args.reader_drop_every
        if elapsed >= due.progress:
            self._progress(elapsed)
            due.progress += args.progress

    def _emitter_stalled(self, elapsed: float) -> bool:
        _, emitter, _ = self.parts()
        if time.monotonic() - emitter.stats.last_progress <= 10:
            return False
        self.failures.append(
            f"the emitter made no progress for 10 s at {elapsed:.0f} s: "
            "the bridge stopped reading the reader socket?"
        )
        return True

    def _sample(self, elapsed: float) -> None:
        bridge, emitter, subscriber = self.parts()
        self.samples.append(
            Sample(
                t=round(elapsed, 1),
                rss_kb=bridge.rss_kb(),
                cpu_s=round(bridge.cpu_seconds(), 2),
                threads=bridge.threads(),
                fds=bridge.open_fds(),
                spool_bytes=bridge.spool_bytes(),
                sent=emitter.stats.sent,
                received=subscriber.received_unique(),
            )
        )

    def _progress(self, elapsed: float) -> None:
        bridge, emitter, subscriber = self.parts()
        sent, received = emitter.stats.sent, subscriber.received_unique()
        print(
            f"[{elapsed:7.0f} s] sent {sent} (not sent {emitter.stats.not_sent}), "
            f"received {received}, outstanding {sent - received}, "
            f"duplicates {subscriber.stats.duplicates}, late {subscriber.stats.late}, "
            f"restarts {self._restarts}, drops {self._drops}, "
            f"bridge RSS {bridge.rss_kb()} kB, CPU {bridge.cpu_seconds():.1f} s",
            flush=True,
        )

    # -- the faults -------------------------------------------------------------------------

    def _restart_broker(self, elapsed: float) -> None:
        self._restarts += 1
        every = self.args.sigkill_every
        kill = bool(every) and self._restarts % every == 0
        if kill:
            _, _, subscriber = self.parts()
            self.kill_windows.append(kill_window(self.ledger, subscriber, elapsed))
        self.broker.stop(kill=kill)
        time.sleep(self.args.broker_down)
        self.broker.start()
        kind = "broker-sigkill" if kill else "broker-sigterm"
        self.faults.append(Fault(round(elapsed, 1), kind, f"down {self.args.broker_down:g} s"))

    def _drop_reader(self, elapsed: float) -> None:
        simulator = self.simulator
        assert simulator is not None
        self._drops += 1
        reset = self._drops % 2 == 0
        if not reset:  # a FIN follows the data in flight: nothing to take care of
            self._drop_now(simulator, elapsed, reset)
            return
        # An RST discards what the simulator's kernel has not sent yet - events the bridge
        # never saw. Pause the events and let those bytes go first, then reset.
        _, emitter, _ = self.parts()
        if not emitter.pause():
            self.failures.append(f"could not pause the emitter for the RST at {elapsed:.0f} s")
            return
        try:
            self.reset_drops.append(wait_unsent(simulator, self.ledger, emitter, elapsed))
            self._drop_now(simulator, elapsed, reset)
        finally:
            emitter.resume()

    def _drop_now(self, simulator: Simulator, elapsed: float, reset: bool) -> None:
        if not drop_client(simulator, reset):
            self.failures.append(f"reader drop at {elapsed:.0f} s blocked for 5 s")
        self.faults.append(Fault(round(elapsed, 1), "reader-rst" if reset else "reader-fin"))

    # -- the end ----------------------------------------------------------------------------

    def _drain(self, timeout: float) -> bool:
        """Wait for every event but the excused ones; then a little for those too."""
        _, emitter, subscriber = self.parts()
        events = excused(self.kill_windows, self.reset_drops)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.ledger.lock:
                missing = sum(1 for c in events if not self.ledger.received[c])
                received = subscriber.stats.unique
            if received + missing >= emitter.stats.sent:
                if missing:
                    time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
                return True
            time.sleep(0.2)
        return False
