"""The bridge's tasks and loop callbacks, started so that none of them can die in silence.

A task that raises, or ends while the bridge is not stopping, is logged with its traceback
and reported to ``on_fatal(name)``; so is a callback the loop runs for a socket (paho's
reads and writes, the reader's). The bridge then names it in ``/healthz`` and, with one
reader, the process exits non-zero so that its supervisor (Docker, systemd, Kubernetes)
restarts it: keeping a broken part's work undone while the process looks healthy would pile
up events with nobody told.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)

Fatal = Callable[[str], None]


def watched_task(
    name: str,
    coroutine: Coroutine[Any, Any, None],
    on_fatal: Fatal,
    stopping: Callable[[], bool],
) -> asyncio.Task[None]:
    """Run ``coroutine`` as a task whose end is fatal unless ``stopping()``."""
    task = asyncio.get_running_loop().create_task(coroutine, name=name)

    def ended(done: asyncio.Task[None]) -> None:
        if stopping():
            return
        if done.cancelled():
            log.critical("internal task %s was cancelled although the bridge is not stopping", name)
        elif (error := done.exception()) is not None:
            log.critical("internal task %s died", name, exc_info=error)
        else:
            log.critical("internal task %s ended although the bridge is not stopping", name)
        on_fatal(name)

    task.add_done_callback(ended)
    return task


def guarded(name: str, callback: Callable[[], None], on_fatal: Fatal) -> Callable[[], None]:
    """``callback`` for the loop to call (a socket became readable): an exception is fatal
    instead of being logged by asyncio and the callback called again and again."""

    def run() -> None:
        try:
            callback()
        except Exception:
            log.critical("%s failed", name, exc_info=True)
            on_fatal(name)

    return run


def fatal_exception_handler(
    on_fatal: Fatal,
) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """The loop's handler for an exception nothing caught (a callback of ours that raised):
    logged with its traceback, and fatal - the callback's work is not done any more."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        log.critical("event loop: %s", context.get("message", "unhandled error"), exc_info=error)
        on_fatal("loop")

    return handle
