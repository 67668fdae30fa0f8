"""The readers a process bridges, one :class:`Session` each, on one event loop (README, Fleet).

:meth:`Fleet.apply` makes the running set match a list of readers: readers added start,
readers removed stop (their ``offline`` published), readers whose options changed restart,
and every other reader keeps its connections untouched - the same call starts a fleet and
reloads it on SIGHUP. A fleet's readers share one spool file (one table keyed by reader and
``seq``: each reader's rows in order, with its own ``seq``), one group commit and one byte bound
(:class:`bridge.outbox.Pool`).

Isolation: when a part of one reader's session dies, that session alone is aborted (its MQTT
last will says ``offline,dead``), logged with the traceback, shown in ``/healthz`` and
restarted after a delay that doubles up to RESTART_MAX. With one reader from the environment
(``isolate=False``) the death goes to ``on_fatal`` instead: the process exits and its
supervisor restarts it, as before there were fleets.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from dataclasses import dataclass, field

from bridge import logs
from bridge.answerer import AllowFiles
from bridge.loops import Fatal
from bridge.mqtt import Sweep
from bridge.options import BridgeOptions, ConfigError, OutboxOptions
from bridge.outbox import MemoryOutbox, Outbox, Pool
from bridge.session import Session, open_outbox
from bridge.spool import Spool, SpoolError
from bridge.spool_outbox import CommitGroup, SpoolOutbox

log = logging.getLogger(__name__)

RESTART_FIRST = 1.0
"""Seconds before a failed reader's first restart."""
RESTART_MAX = 60.0
"""Seconds between restarts of a reader that keeps failing, at most."""


class SharedOutboxes:
    """The spool file (or, without one, the memory bound) that a fleet's readers share."""

    def __init__(self, options: OutboxOptions) -> None:
        self.options = options
        self.pool = Pool(options.max_bytes)
        self.spool = None if options.spool_path is None else Spool.open(options.spool_path)
        self.group = None if self.spool is None else CommitGroup(self.spool)

    def outbox(self, device_id: str) -> Outbox:
        max_bytes, max_age = self.options.max_bytes, self.options.max_age
        if self.spool is None:
            return MemoryOutbox(max_bytes, max_age, self.pool)
        return SpoolOutbox(
            self.spool, max_bytes, max_age, reader=device_id, pool=self.pool, group=self.group
        )

    async def close(self) -> None:
        """After the readers: what they put last, the last checkpoint, the file."""
        if self.group is not None:
            self.group.commit()  # what the last readers put, if they did not close first
            await self.group.checkpoints.close()
        self.abort()

    def abort(self) -> None:
        if self.group is not None:
            self.group.checkpoints.cancel()
        if self.spool is not None:
            self.spool.close()


@dataclass
class Failure:
    """A reader whose session died: what died, since when, how often in a row."""

    parts: list[str]
    at: float = field(default_factory=time.monotonic)
    count: int = 1
    timer: asyncio.TimerHandle | None = None


class Fleet:
    """The running sessions, by device id. Build it in the running loop."""

    def __init__(
        self, sweep: Sweep, on_fatal: Fatal, shared: OutboxOptions | None, isolate: bool
    ) -> None:
        self.sessions: dict[str, Session] = {}
        self.failures: dict[str, Failure] = {}
        self.restarts: dict[str, int] = {}  # per device id, since the process started
        self._sweep = sweep
        self._on_fatal = on_fatal
        self._isolate = isolate
        self._stopping = False
        self._allow = AllowFiles()  # readers naming one allow file share its list
        try:
            self._shared = None if shared is None else SharedOutboxes(shared)
        except SpoolError as exc:
            raise ConfigError([str(exc)]) from None

    @property
    def shared_options(self) -> OutboxOptions | None:
        return None if self._shared is None else self._shared.options

    async def apply(self, readers: list[BridgeOptions]) -> None:
        """Start, stop and restart sessions so that exactly ``readers`` run."""
        wanted = {options.topics.device_id: options for options in readers}
        going = [
            device
            for device, session in self.sessions.items()
            if wanted.get(device) != session.options
        ]
        await asyncio.gather(*(self._stop(device) for device in going))
        for device, options in wanted.items():
            if device not in self.sessions:
                self._start(options)
        if going or len(wanted) != len(readers):
            log.info("serving %d reader(s)", len(self.sessions))

    def _start(self, options: BridgeOptions) -> None:
        """Start the reader's session in a context of its own: every task, timer and socket
        callback it creates logs with its device id (``bridge.logs.DEVICE``)."""
        contextvars.copy_context().run(self._start_here, options)

    def _start_here(self, options: BridgeOptions) -> None:
        device = options.topics.device_id
        logs.DEVICE.set(device)
        if self._shared is None:
            outbox = open_outbox(options.outbox)
        else:
            outbox = self._shared.outbox(device)
        session = Session(
            options, self._sweep, lambda name: self._failed(device, name), outbox, self._allow
        )
        self.sessions[device] = session
        session.start()

    async def _stop(self, device: str, timeout: float = 3.0) -> None:
        session = self.sessions.pop(device)
        if not self._forget_failure(device):  # an aborted one has nothing left to stop
            await session.stop(timeout)

    def _failed(self, device: str, part: str) -> None:
        if not self._isolate or self._stopping:
            self._on_fatal(part)
            return
        session = self.sessions.get(device)
        failure = self.failures.get(device)
        if session is None or (failure is not None and failure.timer is not None):
            if failure is not None and part not in failure.parts:
                failure.parts.append(part)
            return  # already aborted; its restart is on the way
        count = 1 if failure is None else failure.count + 1
        delay = min(RESTART_MAX, RESTART_FIRST * 2 ** (count - 1))
        log.error(
            "reader %s: %s died; restarting this reader alone in %g s (the others go on)",
            device,
            part,
            delay,
        )
        session.abort()
        timer = asyncio.get_running_loop().call_later(delay, self._restart, device)
        self.failures[device] = Failure([part], count=count, timer=timer)

    def _restart(self, device: str) -> None:
        failure = self.failures[device]
        failure.timer = None
        old = self.sessions.pop(device)
        self.restarts[device] = self.restarts.get(device, 0) + 1
        log.info("reader %s: restarting (restart %d)", device, self.restarts[device])
        self._start(old.options)

    def _forget_failure(self, device: str) -> bool:
        """Forget the reader's failure; whether it was waiting for its restart (aborted)."""
        failure = self.failures.pop(device, None)
        if failure is None or failure.timer is None:
            return False
        failure.timer.cancel()
        return True

    def settle(self) -> None:
        """Forget the failures of readers that have run for RESTART_MAX since their restart:
        their next failure starts the delays from the first again."""
        now = time.monotonic()
        for device, failure in list(self.failures.items()):
            if failure.timer is None and now - failure.at > RESTART_MAX:
                del self.failures[device]

    async def stop(self, timeout: float = 3.0) -> None:
        """Stop every reader (each delivers what it holds and publishes ``offline``)."""
        self._stopping = True
        await asyncio.gather(*(self._stop(device, timeout) for device in list(self.sessions)))
        if self._shared is not None:
            await self._shared.close()

    def abort(self) -> None:
        self._stopping = True
        for session in self.sessions.values():
            session.abort()
        if self._shared is not None:
            self._shared.abort()

    def dead_parts(self) -> dict[str, list[str]]:
        """The parts that are not running, per device id: a reader waiting for its restart,
        or (with one reader) any part that died."""
        dead = {device: session.dead_loops() for device, session in self.sessions.items()}
        for device, failure in self.failures.items():
            if failure.timer is not None:
                dead[device] = failure.parts
        return {device: parts for device, parts in dead.items() if parts}
