"""Topic names and the small retained payloads (status, meta) of the README's Topics section.

No I/O happens here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

from bridge import __version__

STATE_READY: Final = "online,ready"
STATE_OFFLINE: Final = "offline"
STATE_DEAD: Final = "offline,dead"


@dataclass(frozen=True)
class Topics:
    """The topics of one reader: ``{prefix}/{id}/...``."""

    prefix: str
    device_id: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device_id}"

    @property
    def event(self) -> str:
        return f"{self.base}/rdr/evt"

    @property
    def command(self) -> str:
        return f"{self.base}/rdr/cmd"

    @property
    def meta(self) -> str:
        return f"{self.base}/meta"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def result(self) -> str:
        return f"{self.base}/bridge/result"

    @property
    def live(self) -> str:
        """Timely events only: what automations that answer a person at the door read."""
        return f"{self.base}/bridge/live"


def status_payload(state: str) -> bytes:
    """``{"State": ...}`` as the reader's native MQTT mode publishes it."""
    return json.dumps({"State": state}, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Identity:
    """What the bridge knows about its reader, from configuration (none of it comes over TCP)."""

    reader_host: str
    serial_number: str | None = None
    product_name: str | None = None
    location: str | None = None


def meta_payload(identity: Identity) -> bytes:
    """A META object in the reader's own field names; ``BridgeVersion`` is the bridge's."""
    meta: dict[str, str] = {"VendorName": "SpringCard", "Protocol": "RDR/JSON"}
    if identity.product_name:
        meta["ProductName"] = identity.product_name
    if identity.serial_number:
        meta["SerialNumber"] = identity.serial_number
    if identity.location:
        meta["Location"] = identity.location
    meta["IpAddress"] = identity.reader_host
    meta["BridgeVersion"] = __version__
    return json.dumps(meta, separators=(",", ":")).encode()
