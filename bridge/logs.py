"""Log output: human-readable text by default, or one JSON object per line; and throttling.

Nothing here formats secrets: settings are never logged whole. A warning that can repeat
without end (garbage from the reader, a broker that stays away, a flood of refused commands)
goes through a :class:`Throttle`: the first is logged at once, the repeats are counted and
summed up in one line per period.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}

SUMMARY_PERIOD = 60.0
"""Seconds between two summaries of a throttled message."""


class JsonFormatter(logging.Formatter):
    """time, level, logger, message, plus any ``extra=`` fields of the call."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        entry: dict[str, object] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


DEVICE: ContextVar[str | None] = ContextVar("device_id", default=None)
"""The reader whose work is running: a fleet starts each reader's session in a context
where it is set, and asyncio hands that context on to every task, timer and socket callback
the session creates, so its log lines name it without passing it around."""


class DeviceFilter(logging.Filter):
    """Gives every record a ``device_id``: the one the call passed in ``extra``, else the
    reader whose work is running (:data:`DEVICE`), else the process's own - so a line can
    always be told apart in a log of many bridges, or of a fleet."""

    def __init__(self, device_id: str) -> None:
        super().__init__()
        self.device_id = device_id

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "device_id"):
            record.device_id = DEVICE.get() or self.device_id
        return True


def configure(level: str, fmt: str, device_id: str | None = None, fleet: bool = False) -> None:
    """Log to stderr as ``fmt`` says. A fleet's text lines name the reader (``[door-1]``, or
    ``[fleet]`` for the process's own lines); JSON lines always carry ``device_id``."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
        if device_id is not None:
            handler.addFilter(DeviceFilter(device_id))
    elif fleet:
        handler.addFilter(DeviceFilter("fleet"))
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s [%(device_id)s]: %(message)s")
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


@dataclass
class _Repeats:
    since: float  # when the current period began (time.monotonic())
    count: int = 0  # repeats in it, not logged yet
    last: tuple[str, tuple[object, ...]] = ("", ())  # the latest repeat: message, arguments
    extra: dict[str, object] = field(default_factory=dict)


_THROTTLES: weakref.WeakSet[Throttle] = weakref.WeakSet()


def flush_throttles() -> None:
    """Log every throttle's due summary; called by a part that wakes up regularly anyway."""
    for throttle in list(_THROTTLES):
        throttle.flush()


class Throttle:
    """One logger's repeating warnings: the first of each kind at once, then at most one
    summary per ``period`` with the count and the latest of them.

    Summaries come with the next repeat once the period is over, or from :meth:`flush`,
    which whoever wakes up regularly anyway calls. Kinds are a few fixed keys chosen by the
    caller ("reader-garbage", "broker-connect"), so the table stays small. Any thread may
    call it (a lock guards the table; these are warnings, not the hot path).
    """

    def __init__(
        self,
        logger: logging.Logger,
        period: float = SUMMARY_PERIOD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.period = period
        self._clock = clock
        self._kinds: dict[str, _Repeats] = {}
        self._lock = threading.Lock()
        _THROTTLES.add(self)

    def warning(
        self, kind: str, message: str, *args: object, extra: dict[str, object] | None = None
    ) -> None:
        self.log(logging.WARNING, kind, message, *args, extra=extra)

    def log(
        self,
        level: int,
        kind: str,
        message: str,
        *args: object,
        extra: dict[str, object] | None = None,
    ) -> None:
        now = self._clock()
        with self._lock:
            repeats = self._kinds.get(kind)
            if repeats is None or (repeats.count == 0 and now - repeats.since >= self.period):
                self._kinds[kind] = _Repeats(since=now)
                self.logger.log(level, message, *args, extra=extra)
                return
            repeats.count += 1
            repeats.last = (message, args)
            repeats.extra = {"level": level, **(extra or {})}
            if now - repeats.since >= self.period:
                self._summarise(repeats, now)

    def reset(self, kind: str) -> None:
        """The condition ended (the link is back): sum up its repeats now, and log the
        next one at once."""
        with self._lock:
            repeats = self._kinds.pop(kind, None)
            if repeats is not None and repeats.count:
                self._summarise(repeats, self._clock())

    def flush(self) -> None:
        """Log the summaries whose period is over."""
        now = self._clock()
        with self._lock:
            for repeats in self._kinds.values():
                if repeats.count and now - repeats.since >= self.period:
                    self._summarise(repeats, now)

    def _summarise(self, repeats: _Repeats, now: float) -> None:
        message, args = repeats.last
        extra = dict(repeats.extra)
        level = extra.pop("level", logging.WARNING)
        assert isinstance(level, int)
        self.logger.log(
            level,
            message + " (%d time(s) in the last %.0f s)",
            *args,
            repeats.count,
            now - repeats.since,
            extra=extra or None,
        )
        repeats.since, repeats.count = now, 0
