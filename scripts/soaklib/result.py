"""The typed records of a run: resource samples, the faults injected, what a broker SIGKILL or
a reader RST exposed, and what the end of the run measured; values only, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Sample:
    t: float
    rss_kb: int
    cpu_s: float
    threads: int
    fds: int
    spool_bytes: int
    sent: int
    received: int


@dataclass
class Fault:
    t: float
    kind: str  # broker-sigterm, broker-sigkill, reader-fin, reader-rst
    detail: str = ""


@dataclass
class KillWindow:
    t: float
    outstanding: int = 0  # sent and not received at the kill
    # ... and newer than anything received: the broker may have acknowledged them and not
    # delivered them yet. Older outstanding ones were skipped before the kill (delivery is
    # in order), so a kill cannot excuse them.
    exposed: list[int] = field(default_factory=list)


@dataclass
class ResetDrop:
    t: float
    unsent_bytes: int  # in the simulator's send queue when the emitter was paused
    waited_ms: float  # until the kernel had sent them (Nagle holds small segments back)
    still_unsent_bytes: int  # at the RST: these never left the simulator's host
    discarded: list[int] = field(default_factory=list)  # the events those bytes held


@dataclass
class Ending:
    """What the end of a run measured."""

    emitted_for: float
    drained: bool = False
    drain_seconds: float = 0.0
    rss_start: int = 0
    rss_end: int = 0
    rss_peak: int = 0
    cpu_start: float = 0.0
    cpu_end: float = 0.0
    exit_code: int | None = None
