"""What the subscriber records: every received event matched to its phase; no I/O."""

from __future__ import annotations

import threading
from array import array
from dataclasses import dataclass, field

from benchlib.event import parse_event, render_event


@dataclass
class Phase:
    """Events ``first_id`` .. ``first_id + capacity - 1`` sent to one path's topic."""

    name: str
    path: str
    topic: bytes
    first_id: int
    capacity: int
    latency: array[int] = field(init=False)  # ns per event, -1 = not received
    sent: int = 0
    received: int = 0
    duplicates: int = 0
    mismatched: int = 0  # payload not byte-for-byte what was written
    unparseable: int = 0
    out_of_range: int = 0
    first_write: float = 0.0  # time.perf_counter()
    last_write: float = 0.0
    last_write_ns: int = 0
    last_receive_ns: int = 0

    def __post_init__(self) -> None:
        self.latency = array("q", [-1]) * self.capacity

    def lost(self) -> int:
        return self.sent - self.received

    def sorted_latencies(self) -> list[int]:
        return sorted(x for x in self.latency[: self.sent] if x >= 0)


class Recorder:
    """Matches every received event to its phase; called from the subscriber's thread."""

    def __init__(self) -> None:
        self.active: dict[bytes, Phase] = {}
        self.strays = 0  # events on no active phase's topic (late ones of a finished phase)
        self.progress = threading.Event()  # set after every received batch

    def record(self, topic: bytes, payload: bytes, now: int) -> None:
        phase = self.active.get(topic)
        if phase is None:
            self.strays += 1
            return
        try:
            number, sent = parse_event(payload)
        except ValueError:
            phase.unparseable += 1
            return
        index = number - phase.first_id
        if not 0 <= index < phase.capacity:
            phase.out_of_range += 1
            return
        if phase.latency[index] >= 0:
            phase.duplicates += 1
            return
        if payload != render_event(number, sent):
            phase.mismatched += 1
        phase.latency[index] = max(0, now - sent)
        phase.received += 1
        phase.last_receive_ns = now
