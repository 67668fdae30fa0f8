"""The soak's own exceptions; neither is a finding about the bridge.

Exception
 ├── SoakError           the soak could not be set up or run (exit status 2)
 └── StopRequestedError  SIGTERM or SIGINT to the soak itself (exit status 130)
"""

from __future__ import annotations


class SoakError(Exception):
    """The soak could not be set up or run (not a finding about the bridge)."""


class StopRequestedError(Exception):
    """SIGTERM or SIGINT to the soak itself."""
