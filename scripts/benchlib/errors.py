"""The benchmark's own exceptions; neither is a finding about the bridge.

Exception
 ├── BenchError          the benchmark could not be set up or run (exit status 2)
 └── StopRequestedError  SIGTERM or SIGINT to the benchmark itself (exit status 130)
"""

from __future__ import annotations


class BenchError(Exception):
    """The benchmark could not be set up or run (not a finding about the bridge)."""


class StopRequestedError(Exception):
    """SIGTERM or SIGINT to the benchmark itself."""
