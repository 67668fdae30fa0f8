"""The bridge's threads, started so that none of them can die in silence.

A thread that raises, or returns while the bridge is not stopping, is logged with its
traceback and reported to ``on_fatal(name)``: the bridge then shows it in ``/healthz`` and
the process exits non-zero, so that its supervisor (Docker, systemd, Kubernetes) restarts
it. Keeping a broken thread's work undone while the process looks healthy would pile up
events with nobody told.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

Fatal = Callable[[str], None]


def watched_thread(
    name: str, target: Callable[[], None], on_fatal: Fatal, stopping: Callable[[], bool]
) -> threading.Thread:
    """A daemon thread running ``target``; its end is fatal unless ``stopping()``."""

    def run() -> None:
        try:
            target()
        except BaseException:
            log.critical("internal loop %s died", name, exc_info=True)
            on_fatal(name)
            return
        if not stopping():
            log.critical("internal loop %s ended although the bridge is not stopping", name)
            on_fatal(name)

    return threading.Thread(target=run, name=name, daemon=True)
