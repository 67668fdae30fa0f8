"""Which readers of a fleet file a process serves under ``BRIDGE_SHARD=K/N`` (README, Fleet).

A reader belongs to shard ``crc32(device id, UTF-8) mod N``: stable across processes,
machines and Python versions (Python's own ``hash()`` of a string is salted per process),
so N replicas of a Kubernetes StatefulSet given the same file split the fleet between them
without talking to each other, every reader in exactly one replica. Changing N moves most
readers to another replica (README, Fleet: resharding). No I/O happens here.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

_SHARD = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (``0 <= index < count``)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"K/N"``; ``ValueError`` saying what is expected otherwise."""
        match = _SHARD.fullmatch(text)
        if match is None:
            raise ValueError("must be K/N, e.g. 0/3 for the first of three shards")
        index, count = int(match[1]), int(match[2])
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"must be K/N with 0 <= K < N, got {index}/{count}")
        return cls(index, count)

    def holds(self, device_id: str) -> bool:
        return shard_of(device_id, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(device_id: str, count: int) -> int:
    """The shard, among ``count``, that serves the reader ``device_id``."""
    return zlib.crc32(device_id.encode("utf-8")) % count
