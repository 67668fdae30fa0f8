"""Realistic READER EVENTs for the tags a simulated reader sees (NFC, BLE, UHF); no I/O here.

Fields, their order and their spelling follow docs/reader-protocol.md §2; ``Uptime`` counts from the
factory's creation on the clock it is given, so a test can drive it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Final

PROFILES: Final = ("nfc", "ble", "uhf")

Clock = Callable[[], float]
"""Seconds on a monotonic clock (``time.monotonic``), or a test's fake one."""


class EventFactory:
    """Builds realistic READER EVENTs (key order as the reader sends them)."""

    def __init__(self, rng: random.Random | None = None, clock: Clock = time.monotonic) -> None:
        self._rng = rng or random.Random()  # noqa: S311 - test data
        self._boot = self._rng.randint(1, 999)
        self._clock = clock
        self._started = clock()

    def _hex(self, size: int) -> str:
        return "".join(f"{self._rng.randrange(256):02X}" for _ in range(size))

    def _uptime(self) -> str:
        return f"{self._boot}:{self._clock() - self._started:.3f}"

    def removal(self, insert: dict[str, object]) -> dict[str, object]:
        """The Remove event of the tag that ``insert`` put on the reader: the same fields
        in the same order, ``Move`` Remove and its own ``Uptime``, taken now."""
        return dict(insert, Move="Remove", Uptime=self._uptime())

    def make(
        self, profile: str, move: str | None = None, tag_id: str | None = None
    ) -> dict[str, object]:
        event: dict[str, object]
        if profile == "ble":
            event = {
                "Interface": "bluetooth",
                "Protocol": self._rng.choice(["BLE", "iBeacon", "Eddystone"]),
                "Template": 0,
                "TagId": tag_id or self._hex(6),
                "RSSI": -self._rng.randint(40, 95),
                "TagData": self._hex(25),
            }
        elif profile == "uhf":
            event = {
                "Interface": "900",
                "Protocol": "UHF-EPC",
                "Template": 1,
                "TagId": tag_id or "E280" + self._hex(10),
                "RSSI": -self._rng.randint(30, 80),
            }
        else:
            uid = tag_id or "04" + self._hex(6)
            event = {
                "Interface": "13.56",
                "Protocol": "NFC-A",
                "Template": 1,
                "TagId": uid,
                "TagData": "00" + uid,
            }
        if move:
            event["Move"] = move
        event["Uptime"] = self._uptime()
        return event
