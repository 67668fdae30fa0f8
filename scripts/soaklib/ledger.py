"""What happened to every event, by its counter: written, received, with which seq; it only
holds the facts, the emitter and the subscriber write them."""

from __future__ import annotations

import threading
from array import array
from typing import Final

MAX_COUNTER: Final = 100_000_000
"""A counter beyond this is garbage, not a reason to grow the ledger."""
NOT_SENT: Final = 1
SENT: Final = 2


class Ledger:
    """Per-counter facts, growing with the emitter; arrays, so hours of events stay small."""

    def __init__(self) -> None:
        self.state = bytearray()  # NOT_SENT / SENT, written by the emitter only
        self.sent_at = array("d")  # monotonic time of the write
        self.connection = array("I")  # simulator's accepted-client count at the write
        self.size = array("I")  # bytes written
        self.received = array("H")  # copies received, written by the subscriber only
        self.seq = array("q")  # seq of the first copy (0 = none)
        self.late = bytearray()  # 1 when the first copy was marked late
        self.lock = threading.Lock()

    def grow(self, size: int) -> None:
        """Room for counters below ``size`` (called under ``lock``)."""
        missing = size - len(self.state)
        if missing > 0:
            extra = max(missing, 4096)
            self.state.extend(bytes(extra))
            self.sent_at.extend([0.0] * extra)
            self.connection.extend([0] * extra)
            self.size.extend([0] * extra)
            self.received.extend([0] * extra)
            self.seq.extend([0] * extra)
            self.late.extend(bytes(extra))
