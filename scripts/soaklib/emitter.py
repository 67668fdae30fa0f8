"""The event source: a thread that writes one event with a fresh counter to the reader
simulator at a steady rate and notes each write in the ledger; it reads nothing back."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from bridge.simulator import PROFILES, Simulator
from soaklib.event import COUNTER_FIELD
from soaklib.ledger import NOT_SENT, SENT, Ledger


@dataclass
class EmitterStats:
    attempted: int = 0
    sent: int = 0
    not_sent: int = 0
    catch_ups: int = 0  # times the emitter fell over 1 s behind its schedule
    last_progress: float = 0.0


class Emitter:
    """Writes one event with a fresh ``SoakCounter`` every 1/rate s while a client is there."""

    def __init__(self, simulator: Simulator, ledger: Ledger, rate: float) -> None:
        self._sim = simulator
        self._ledger = ledger
        self._interval = 1.0 / rate
        self.stats = EmitterStats(last_progress=time.monotonic())
        self._stop = threading.Event()
        self._gate = threading.Lock()  # held around each write; pause() holds it
        self._resumed = False
        self._thread = threading.Thread(target=self._run, name="emitter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        self._stop.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def pause(self, timeout: float = 5.0) -> bool:
        """Wait for the write in progress, then hold the emitter until :meth:`resume`."""
        return self._gate.acquire(timeout=timeout)

    def resume(self) -> None:
        self._resumed = True  # the schedule restarts from now: no burst to catch up
        self._gate.release()

    def _run(self) -> None:
        start = time.monotonic()
        done = 0
        while not self._stop.is_set():
            due = start + done * self._interval
            now = time.monotonic()
            if due > now:
                if self._stop.wait(due - now):
                    return
            elif now - due > 1.0:  # fell behind (GIL, a slow write): do not burst to catch up
                self.stats.catch_ups += 1
                start = now - done * self._interval
            with self._gate:
                if self._resumed:
                    self._resumed = False
                    start = time.monotonic() - done * self._interval
                self._emit_one(PROFILES[done % len(PROFILES)])
            done += 1

    def _emit_one(self, profile: str) -> None:
        ledger = self._ledger
        counter = self.stats.attempted
        event = self._sim.factory.make(profile)
        event[COUNTER_FIELD] = counter
        with ledger.lock:
            ledger.grow(counter + 1)
        size = 0
        try:
            size = len(self._sim.emit(event))
        except OSError:  # no client connected (ConnectionError), or it went away mid-write
            state = NOT_SENT
            self.stats.not_sent += 1
        else:
            state = SENT
            self.stats.sent += 1
        with ledger.lock:
            ledger.state[counter] = state
            ledger.sent_at[counter] = time.monotonic()
            ledger.connection[counter] = self._sim.accepted
            ledger.size[counter] = size
        self.stats.attempted += 1
        self.stats.last_progress = time.monotonic()
