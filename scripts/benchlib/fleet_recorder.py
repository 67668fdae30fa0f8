"""What the fleet benchmark's subscribers record: each simulated reader's events by its own
counter, the latencies of the current window, and every reader's status; no I/O.

Every reader of the fleet numbers its events from 0 in ``TagId`` (the payload is
:func:`benchlib.event.render_event`'s, ``BenchT`` its write time), so a reader's events must
arrive as an unbroken run of counters: one that is missing after the drain is lost, wherever
it was lost. The subscriber's thread calls :meth:`FleetRecorder.record` and
:meth:`StatusBoard.record`; the benchmark's main thread reads the counts.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

from benchlib.event import PREFIX, parse_event, render_event


def event_topic(device: str) -> bytes:
    return f"{PREFIX}/{device}/rdr/evt".encode()


def status_topic(device: str) -> bytes:
    return f"{PREFIX}/{device}/status".encode()


READY = "online,ready"


@dataclass(eq=False)
class Track:
    """One simulated reader's events: ``sent`` written (also the next event's counter),
    ``seen[n]`` 1 once event ``n`` arrived."""

    device: str
    sent: int = 0
    received: int = 0
    duplicates: int = 0
    mismatched: int = 0  # arrived, but not byte for byte what was written
    unwritten: int = 0  # due while the reader had no client: not written, not numbered
    seen: bytearray = field(default_factory=bytearray)

    @property
    def topic(self) -> bytes:
        return event_topic(self.device)

    def arrive(self, number: int) -> bool:
        """Mark event ``number`` arrived; False if it had already."""
        if number >= len(self.seen):
            self.seen.extend(bytes(max(number + 1 - len(self.seen), 4096)))
        if self.seen[number]:
            self.duplicates += 1
            return False
        self.seen[number] = 1
        self.received += 1
        return True

    def missing(self, start: int = 0, end: int | None = None) -> int:
        """Events numbered ``start`` .. ``end - 1`` (default: all written) not arrived."""
        end = self.sent if end is None else end
        known = min(end, len(self.seen))
        absent = max(0, end - max(known, start))  # beyond what ever arrived
        return absent + (self.seen.count(0, start, known) if known > start else 0)


class FleetRecorder:
    """Every received event matched to its reader by topic and to its number by ``TagId``."""

    def __init__(self) -> None:
        self.tracks: dict[bytes, Track] = {}
        self.latencies: list[int] = []  # ns, of every event since the last take_latencies()
        self.strays = 0  # events on the topic of no reader being measured
        self.unparseable = 0
        self.last_receive_ns = 0
        self.progress = threading.Event()

    def watch(self, tracks: list[Track]) -> None:
        self.tracks.update((track.topic, track) for track in tracks)

    def forget(self, tracks: list[Track]) -> None:
        for track in tracks:
            self.tracks.pop(track.topic, None)

    def take_latencies(self) -> list[int]:
        """The latencies recorded since the last call, sorted."""
        taken, self.latencies = self.latencies, []
        taken.sort()
        return taken

    def record(self, topic: bytes, payload: bytes, now: int) -> None:
        track = self.tracks.get(topic)
        if track is None:
            self.strays += 1
            return
        try:
            number, sent = parse_event(payload)
        except ValueError:
            self.unparseable += 1
            return
        if not track.arrive(number):
            return
        if payload != render_event(number, sent):
            track.mismatched += 1
        self.latencies.append(max(0, now - sent))
        self.last_receive_ns = now


class StatusBoard:
    """Every reader's last ``status`` (``{"State": ...}``, retained) and when it first became
    ``online,ready`` since :meth:`expect`; how often a ready reader left that state."""

    def __init__(self) -> None:
        self.state: dict[bytes, str] = {}
        self.ready_ns: dict[bytes, int] = {}
        self.left_ready: dict[bytes, int] = {}
        self._expected: set[bytes] = set()
        self.progress = threading.Event()

    def expect(self, devices: list[str]) -> None:
        """Start timing these readers afresh (what a former process left retained is past)."""
        topics = [status_topic(device) for device in devices]
        self._expected.update(topics)
        for topic in topics:
            self.ready_ns.pop(topic, None)
            self.left_ready.pop(topic, None)

    def ready(self, devices: list[str]) -> int:
        return sum(status_topic(device) in self.ready_ns for device in devices)

    def flaps(self, devices: list[str]) -> int:
        return sum(self.left_ready.get(status_topic(device), 0) for device in devices)

    def last_ready_ns(self, devices: list[str]) -> int | None:
        times = [self.ready_ns.get(status_topic(device)) for device in devices]
        return None if None in times else max(t for t in times if t is not None)

    def record(self, topic: bytes, payload: bytes, now: int) -> None:
        try:
            state = str(json.loads(payload)["State"])
        except (ValueError, KeyError, TypeError):
            state = payload.decode(errors="replace")
        before = self.state.get(topic)
        self.state[topic] = state
        if topic not in self._expected:
            return
        if state == READY:
            self.ready_ns.setdefault(topic, now)
        elif before == READY and topic in self.ready_ns:
            self.left_ready[topic] = self.left_ready.get(topic, 0) + 1
        self.progress.set()
