"""The events the reader double writes, byte for byte as the bridge must publish them; no I/O."""

from __future__ import annotations

import time
from typing import Final

PREFIX: Final = "springcard/springcore"
SEPARATOR: Final = b"\r\n"
COMMAND: Final = b'{"Sequence":"60"}'

# One event: an NFC read as the reader sends it, plus BenchT (its write time).
_HEAD: Final = b'{"Interface":"13.56","Protocol":"NFC-A","Template":1,"TagId":"'
_MID: Final = b'","TagData":"00'
_TAIL: Final = b'","Uptime":"%b","BenchT":"%d"}'
TAG_KEY: Final = b'"TagId":"'
TIME_KEY: Final = b'"BenchT":"'
_BOOT: Final = 417  # the reader's boot counter, the first part of Uptime
_T0: Final = time.time_ns()


def _tail(t_ns: int) -> bytes:
    uptime = b"%d:%.3f" % (_BOOT, (t_ns - _T0) / 1e9)
    return _TAIL % (uptime, t_ns)


def render_event(number: int, t_ns: int) -> bytes:
    """The event numbered ``number`` written at ``t_ns``, as the bridge must publish it."""
    tag = b"%014X" % number
    return _HEAD + tag + _MID + tag + _tail(t_ns)


def render_batch(first: int, count: int, t_ns: int) -> bytes:
    """Events ``first`` .. ``first + count - 1``, all written at ``t_ns``, CR LF after each."""
    tail = _tail(t_ns) + SEPARATOR
    parts = []
    for number in range(first, first + count):
        tag = b"%014X" % number
        parts.append(_HEAD + tag + _MID + tag + tail)
    return b"".join(parts)


def parse_event(payload: bytes) -> tuple[int, int]:
    """The event's number (its tag id) and the write time (``BenchT``) of an event as the
    reader double wrote it, found without a JSON decode; ``ValueError`` if it is not one."""
    i = payload.find(TAG_KEY)
    j = payload.find(TIME_KEY, i + 1)
    k = payload.find(b'"', j + len(TIME_KEY))
    if i < 0 or j < 0 or k < 0:
        raise ValueError("not a reader double's event")
    number = int(payload[i + len(TAG_KEY) : i + len(TAG_KEY) + 14], 16)
    return number, int(payload[j + len(TIME_KEY) : k])
