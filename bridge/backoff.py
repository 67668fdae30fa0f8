"""Capped exponential backoff with jitter, for reconnecting to the reader and to the broker.

No I/O happens here, and no clock: the caller waits.
"""

from __future__ import annotations

import random


class Backoff:
    """Each delay is drawn from [d/2, d], where d doubles from ``initial`` up to ``maximum``:
    a fleet of bridges that lost the same broker does not come back in one instant."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * (2**self._attempt))
        self._attempt = min(self._attempt + 1, 32)
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._attempt = 0
