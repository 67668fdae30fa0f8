"""The names the soak and the bridge share: the device, its event topic, and the field that
numbers every event; no I/O."""

from __future__ import annotations

from typing import Final

DEVICE_ID: Final = "soak"
PREFIX: Final = "springcard/springcore"
EVENT_TOPIC: Final = f"{PREFIX}/{DEVICE_ID}/rdr/evt"
COUNTER_FIELD: Final = "SoakCounter"
