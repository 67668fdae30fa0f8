"""The bridge's parts for one reader on one event loop - its session, the health listener, the
keepalive sweep - and :class:`Bridge`, the same running in a thread of its own for programs
that are not asyncio (the tests, an embedding application).

``bridge.runner`` runs an :class:`App` in the main thread's loop. Nothing here imports
pydantic (the bridge gets checked :class:`BridgeOptions`) nor, unless the health listener is
on, prometheus_client.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from bridge import logs
from bridge.delivery import Delivery
from bridge.fleet import Fleet
from bridge.loops import fatal_exception_handler
from bridge.mqtt import MqttLink, Sweep
from bridge.options import BridgeOptions, FleetOptions
from bridge.reader import ReaderLink
from bridge.session import Session
from bridge.worker import CommandWorker

if TYPE_CHECKING:  # imported when the listener starts: prometheus_client adds ~1 MB of RSS
    from bridge.health import HealthServer, Snapshot

_T = TypeVar("_T")


class HasBridgeOptions(Protocol):
    """What builds :class:`BridgeOptions`: ``bridge.config.Settings``, typed without pydantic."""

    def bridge_options(self) -> BridgeOptions: ...


class App:
    """The readers' sessions - one from the environment, or a fleet's - and what the process
    serves around them. Build it in the running loop (a bad spool or HTTP port raises
    ``ConfigError`` from :meth:`start`)."""

    def __init__(self, options: BridgeOptions | FleetOptions, on_fatal: Callable[[str], None]):
        self.options = options
        self._on_fatal = on_fatal
        self.sweep = Sweep()
        self.sweep.on_sweep.append(logs.flush_throttles)  # repeated warnings' summaries
        self.fleet: Fleet | None = None
        self.http: HealthServer | None = None

    @property
    def is_fleet(self) -> bool:
        return isinstance(self.options, FleetOptions)

    def readers(self) -> list[BridgeOptions]:
        options = self.options
        return list(options.readers) if isinstance(options, FleetOptions) else [options]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(fatal_exception_handler(self._on_fatal))
        if self.options.http is not None:
            from bridge.health import HealthServer  # noqa: PLC0415 - see the TYPE_CHECKING import

            self.http = HealthServer(self.options.http, self)
            await self.http.start()  # first: a port already in use stops us before anything
        shared = self.options.outbox if isinstance(self.options, FleetOptions) else None
        self.fleet = Fleet(self.sweep, self._on_fatal, shared, isolate=self.is_fleet)
        self.sweep.on_sweep.append(self.fleet.settle)
        await self.fleet.apply(self.readers())

    async def reload(self, options: FleetOptions) -> None:
        """Serve ``options``' readers now (SIGHUP): only the readers that changed restart.
        The shared settings (spool, HTTP, logs) keep their values until a restart."""
        assert self.fleet is not None, "started first"
        self.options = replace(options, outbox=self.fleet.shared_options or options.outbox)
        await self.fleet.apply(self.readers())

    async def stop(self, timeout: float = 3.0) -> None:
        if self.http is not None:
            await self.http.stop()
        if self.fleet is not None:
            await self.fleet.stop(timeout)

    def abort(self) -> None:
        if self.fleet is not None:
            self.fleet.abort()

    @property
    def session(self) -> Session | None:
        """The one reader's session (one reader from the environment)."""
        if self.fleet is None or self.is_fleet:
            return None
        return next(iter(self.fleet.sessions.values()), None)

    # -- what the health listener reads (bridge.health.Observed) -----------------------------

    def dead_loops(self) -> list[str]:
        """The parts whose death makes the process unhealthy: with one reader, any of its
        parts; in a fleet, a reader's death restarts it alone (:meth:`restarting`)."""
        if self.fleet is None:
            return ["session"]
        if self.is_fleet:
            return []
        return [part for parts in self.fleet.dead_parts().values() for part in parts]

    def restarting(self) -> list[str]:
        if self.fleet is None or not self.is_fleet:
            return []
        dead = self.fleet.dead_parts()
        return [f"{device} ({', '.join(parts)})" for device, parts in sorted(dead.items())]

    def snapshots(self) -> dict[str, Snapshot]:
        assert self.fleet is not None, "started first"
        restarts = self.fleet.restarts
        return {
            device: replace(session.snapshot(), restarts=restarts.get(device, 0))
            for device, session in self.fleet.sessions.items()
        }

    def snapshot(self) -> Snapshot:
        """The one reader's snapshot (one reader from the environment)."""
        (state,) = self.snapshots().values()
        return state


class Bridge:
    """One reader, one broker, on an event loop in a thread of its own: ``start()``, then
    ``stop()``, from any one thread. Takes checked options, or settings to check (a bad one
    raises ``ConfigError`` here, before anything starts). ``on_fatal(name)`` is called, in
    the loop's thread, when one of its parts dies."""

    def __init__(
        self,
        options: BridgeOptions | HasBridgeOptions,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        if not isinstance(options, BridgeOptions):
            options = options.bridge_options()
        self.options = options
        self.topics = options.topics
        self._loop = asyncio.new_event_loop()
        self.thread_name = f"bridge {options.topics.device_id}"
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=self.thread_name, daemon=True
        )
        self._app = App(options, on_fatal or (lambda name: None))
        self._connected = threading.Event()

    def start(self) -> None:
        self._thread.start()
        self.call(self._start())

    async def _start(self) -> None:
        await self._app.start()
        link = self.session.mqtt  # in the same step as the start: no connection yet
        link.on_connection.append(
            lambda up: self._connected.set() if up else self._connected.clear()
        )

    def stop(self, timeout: float = 3.0) -> None:
        """Stop reading, deliver what is pending, publish ``offline``; then end the loop."""
        if self._thread.is_alive():
            self.call(self._app.stop(timeout), timeout + 10)
            self._end_loop()

    def abort(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._app.abort)
            self._end_loop()

    def _end_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def call(self, coroutine: Coroutine[Any, Any, _T], timeout: float = 30.0) -> _T:
        """Run ``coroutine`` in the bridge's loop and wait for its result."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def ask(self, question: Callable[[], _T]) -> _T:
        """``question()`` answered in the bridge's loop (state is the loop's alone)."""

        async def answer() -> _T:
            return question()

        return self.call(answer())

    # -- what tests and embedders read ---------------------------------------------------

    @property
    def session(self) -> Session:
        session = self._app.session
        assert session is not None, "start() first"
        return session

    @property
    def reader(self) -> ReaderLink:
        return self.session.reader

    @property
    def commands(self) -> CommandWorker:
        return self.session.commands

    @property
    def mqtt(self) -> LinkView:
        return LinkView(self)

    @property
    def http(self) -> HealthServer | None:
        return self._app.http

    def wait_connected(self, timeout: float) -> bool:
        """Wait until the broker session is up."""
        return self._connected.wait(timeout)

    def dead_loops(self) -> list[str]:
        return self.ask(self._app.dead_loops)

    def is_alive(self) -> bool:
        return not self.dead_loops()

    def snapshot(self) -> Snapshot:
        return self.ask(self._app.snapshot)


class LinkView:
    """The MQTT side of a :class:`Bridge`, read in its loop."""

    def __init__(self, bridge: Bridge) -> None:
        self._bridge = bridge
        self._link: MqttLink = bridge.session.mqtt
        self._delivery: Delivery = bridge.session.delivery
        self.options = self._link.options
        self.is_v5 = self._link.is_v5

    def wait_connected(self, timeout: float) -> bool:
        return self._bridge.wait_connected(timeout)

    @property
    def is_connected(self) -> bool:
        return self._bridge.ask(lambda: self._link.is_connected)

    @property
    def backlog(self) -> int:
        """Events not yet acknowledged by the broker."""
        return self._bridge.ask(self._delivery.unacked)

    @property
    def dropped(self) -> dict[str, int]:
        return self._bridge.ask(lambda: self._delivery.dropped)

    @property
    def counters(self) -> MqttCounters:
        def read() -> MqttCounters:
            link, delivery = self._link, self._delivery
            return MqttCounters(
                delivery.published, delivery.rejected, link.connects, link.takeovers
            )

        return self._bridge.ask(read)


@dataclass(frozen=True)
class MqttCounters:
    published: int
    rejected: int
    connects: int
    takeovers: int
