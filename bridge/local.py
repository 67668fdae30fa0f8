"""Answers at the edge (README, When the broker is down): which events are reads, what an
allow list says about a tag, and which reads the bridge answers itself, and when.

No I/O happens here: no socket, no file, no clock, no logging. The allow list arrives as text
and the times as numbers (``time.monotonic()`` seconds), so every rule is tested exhaustively;
``bridge.answerer`` does the reading, the timing and the sending.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Generic, Literal, TypeVar

When = Literal["always", "offline", "unanswered"]
WHEN: Final = ("always", "offline", "unanswered")
REPLIES: Final = ("accept", "deny", "wink")

_HEX = re.compile(r"[0-9A-F]+")
T = TypeVar("T")


def is_read(fields: Mapping[str, object]) -> bool:
    """A read is an event whose ``Move`` is absent or contains ``Insert`` (``Insert,Remove``:
    the tag came and went between two polls); a ``Remove`` is not one. Older firmware says
    ``State`` (docs/reader-protocol.md §2)."""
    move = fields.get("Move", fields.get("State"))
    if move is None:
        return True
    return isinstance(move, str) and "Insert" in move.split(",")


def tag_of(fields: Mapping[str, object]) -> str | None:
    """The event's ``TagId`` (``TagUid`` on older firmware), as the reader sent it."""
    tag = fields.get("TagId", fields.get("TagUid"))
    return tag if isinstance(tag, str) else None


def normal_tag(text: str) -> str | None:
    """``text`` as upper-case hex, or ``None`` if it is not hex digits."""
    tag = text.strip().upper()
    return tag if _HEX.fullmatch(tag) else None


@dataclass(frozen=True)
class AllowList:
    """The tags that get ``accept``; any other read gets ``deny``."""

    tags: frozenset[str]

    def answer(self, tag: str | None) -> str:
        allowed = tag is not None and normal_tag(tag) in self.tags
        return "accept" if allowed else "deny"


class AllowListError(ValueError):
    """The text is not an allow list; the message names lines by number, never their
    contents (the file says who may enter)."""


def parse_allow_list(text: str) -> AllowList:
    """One ``TagId`` per line, hex in any case; blank lines and ``#`` comments (whole-line or
    after a tag) are ignored. :class:`AllowListError` names every line that is not a tag."""
    tags: set[str] = set()
    bad: list[int] = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        tag = normal_tag(entry)
        if tag is None:
            bad.append(number)
        else:
            tags.add(tag)
    if bad:
        shown = ", ".join(str(n) for n in bad[:10]) + (", ..." if len(bad) > 10 else "")
        plural = "s" if len(bad) > 1 else ""
        raise AllowListError(f"line{plural} {shown}: not a tag id (hex digits expected)")
    return AllowList(frozenset(tags))


class Edge(Generic[T]):
    """When the bridge answers a read itself (``BRIDGE_LOCAL_WHEN``):

    * ``always``: every read, at once;
    * ``offline``: a read made while the broker session is down, at once;
    * ``unanswered``: a read after which no command reached the reader within ``after``
      seconds - answered at ``read time + after``.

    A read comes with an item of the caller's; :meth:`read` says whether to answer it now,
    :meth:`due` hands out the unanswered reads whose time has come, in order."""

    def __init__(self, when: When, after: float) -> None:
        self.when = when
        self.after = after
        self._waiting: deque[tuple[float, T]] = deque()  # (read at, item), oldest first

    def read(self, item: T, at: float, broker_up: bool) -> bool:
        """A read at ``at``: True to answer it now; else it may wait for :meth:`due`."""
        if self.when == "always":
            return True
        if self.when == "offline":
            return not broker_up
        self._waiting.append((at, item))
        return False

    def command_reached(self, at: float) -> int:
        """A command (not a local answer) reached the reader at ``at``: every read made up to
        then has its answer. How many reads waited for one."""
        answered = 0
        while self._waiting and self._waiting[0][0] <= at:
            self._waiting.popleft()
            answered += 1
        return answered

    def due(self, now: float) -> list[tuple[float, T]]:
        """The reads (read at, item) left unanswered for ``after`` seconds at ``now``, oldest
        first; they are forgotten here."""
        reads = []
        while self._waiting and self._waiting[0][0] + self.after <= now:
            reads.append(self._waiting.popleft())
        return reads

    def next_due(self) -> float | None:
        """When the oldest waiting read falls due, or ``None``."""
        return self._waiting[0][0] + self.after if self._waiting else None

    def waiting(self) -> int:
        return len(self._waiting)
