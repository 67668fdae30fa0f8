"""Percentiles and medians of the benchmark's samples; no I/O."""

from __future__ import annotations

import math
import statistics
from typing import TypeVar

Sample = TypeVar("Sample", int, float)


def percentile(ordered: list[Sample], q: float) -> Sample:
    """Nearest-rank percentile of an ascending list (the maximum when there are < 1/(1-q))."""
    if not ordered:
        raise ValueError("no samples")
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def median(values: list[float | None]) -> float | None:
    """The median of the values that exist (one value comes back as it is), None if none does."""
    present = [value for value in values if value is not None]
    if not present:
        return None
    middle = statistics.median(present)
    return middle if len(present) % 2 else round(middle, 6)


def ms(ns: float) -> float:
    return round(ns / 1e6, 3)
