"""The long-running bridge process: the bridge's parts on one event loop in the main thread,
until SIGTERM or SIGINT (a clean stop, exit 0) or until one of its parts dies (exit 70).

``springcore-bridge run`` checks the settings (``bridge.cli``) and calls :func:`serve` in the
same process. Until issue 11 it re-executed itself without pydantic to save ~15 MB of RSS;
with every part on one loop the whole process holds about 40 MB, under the 45 MB the project
allows a one-reader bridge, and one path for the settings is worth more than those 15 MB.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import signal
import sys
from collections.abc import Callable

import setproctitle

from bridge.app import App
from bridge.options import BridgeOptions, ConfigError, FleetOptions

log = logging.getLogger("bridge")

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
EXIT_FATAL = 70
"""Exit status after a part of the bridge died (EX_SOFTWARE): the supervisor restarts it."""
GC_YOUNG = 20_000
"""Net allocations of tracked objects between two collections of the youngest generation
(CPython's default: 700). Every QoS 1 message in flight holds 12 tracked objects in paho (its
MQTTMessageInfo's Condition and the bound methods it copies, the properties): with a window of
100 per reader, a fleet of 10 flooding readers keeps 12,000 of them alive for the ~0.2 s a
message is in flight, so at the default thresholds nearly all of them were traversed in
generation 0, again in generation 1, and promoted into generation 2, triggering a full
collection about once a second - 9.4 % of the fleet bridge's CPU in a 10-reader flood against
3.1 % for a one-reader bridge (gc.callbacks, issue 12). The bridge makes few cycles; they wait
at most this many allocations (a few MB)."""


def print_problems(error: ConfigError) -> None:
    """One line per problem on stderr, no traceback (README, Configuration); the caller
    exits with 2."""
    for line in error.lines:
        print(f"springcore-bridge: {line}", file=sys.stderr)


Reload = Callable[[], FleetOptions]
"""Reads the readers file again (SIGHUP); ``ConfigError`` if it is bad."""


def serve(options: BridgeOptions | FleetOptions, reload: Reload | None = None) -> int:
    """Run the bridge until SIGTERM or SIGINT, then stop it (offline published, sockets
    closed): 0. If a part it cannot do without dies first: EXIT_FATAL, without a goodbye to
    the broker, whose last will then says ``offline,dead``. A spool or HTTP port that cannot
    be used raises :class:`ConfigError` before anything runs. A fleet (``reload`` given)
    re-reads its file on SIGHUP."""
    if isinstance(options, FleetOptions):
        name_process(f"fleet {options.source}" + (f" {options.shard}" if options.shard else ""))
        raise_file_limit(len(options.readers))
    else:
        name_process(options.topics.device_id)
    tune_gc()
    return asyncio.run(_serve(options, reload))


def tune_gc() -> None:
    """Move what start-up made (modules, settings) out of the collector's sight for good
    (``gc.freeze``: a full collection no longer walks it) and collect the young generation
    every GC_YOUNG allocations instead of every 700."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, 10, 10)


async def _serve(options: BridgeOptions | FleetOptions, reload: Reload | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    failed: list[str] = []

    def on_signal(signum: signal.Signals) -> None:
        log.info("received %s, stopping", signum.name)
        stop.set()

    def on_fatal(name: str) -> None:
        failed.append(name)
        stop.set()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    app = App(options, on_fatal)
    await app.start()
    if reload is not None:
        reloads = Reloads(app, reload)
        loop.add_signal_handler(signal.SIGHUP, reloads.request)
    await stop.wait()
    if failed:
        log.critical(
            "%s died: exiting with status %d so that the bridge is restarted",
            ", ".join(sorted(set(failed))),
            EXIT_FATAL,
        )
        app.abort()
        return EXIT_FATAL
    await app.stop()
    log.info("stopped")
    return 0


def name_process(what: str) -> None:
    """``ps`` and ``pgrep -f`` show ``springcore-bridge <device id>`` (or ``fleet <file>``),
    not the interpreter's command line (the kernel's short name becomes "springcore-brid")."""
    setproctitle.setproctitle(f"springcore-bridge {what}")


class Reloads:
    """SIGHUP: read the readers file again and apply it, one reload at a time (a signal
    that comes during one is served by another right after). A bad file is logged and the
    running readers are kept (README, Fleet)."""

    def __init__(self, app: App, reload: Reload) -> None:
        self._app = app
        self._reload = reload
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def request(self) -> None:
        log.info("received SIGHUP: reading the readers file again")
        if self._task is not None:
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="reload")

    async def _run(self) -> None:
        try:
            while True:
                self._again = False
                await self._once()
                if not self._again:
                    return
        finally:
            self._task = None

    async def _once(self) -> None:
        try:
            # Off the loop: checking a thousand readers takes a few tenths of a second,
            # which the readers' events must not wait for.
            options = await asyncio.to_thread(self._reload)
        except ConfigError as error:
            for line in error.lines:
                log.error("reload: %s", line)
            log.error("reload: the file has problems; the running readers are kept as they are")
            return
        except Exception:  # a bug must not take the running fleet down with it
            log.exception("reload failed; the running readers are kept as they are")
            return
        await self._app.reload(options)


FDS_PER_READER = 3
"""Open files a fleet's reader takes: its reader socket, its broker socket, and one spare
(a reconnection opens the new socket before the old one is gone)."""
FDS_BASE = 64
"""Open files the process takes besides its readers (spool, HTTP, executor, logs)."""


def raise_file_limit(readers: int) -> int:
    """Raise the soft open-file limit as far as the hard one allows; log how many readers it
    admits (and an ERROR if that is fewer than the fleet has). The readers admitted."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
    admitted = max(0, (soft - FDS_BASE) // FDS_PER_READER)
    log.info("open-file limit %d: room for about %d readers (%d here)", soft, admitted, readers)
    if admitted < readers:
        log.error(
            "the open-file limit %d is too low for %d readers: raise it (ulimit -n, "
            "LimitNOFILE= in systemd, --ulimit nofile= in Docker) or split the fleet "
            "(BRIDGE_SHARD)",
            soft,
            readers,
        )
    return admitted


def hold_stop_signals() -> None:
    """Block SIGTERM/SIGINT before any thread starts (threads inherit the mask), for a
    program of threads (``simulate``) that then takes them with :func:`wait_stop_signal`."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def wait_stop_signal() -> None:
    signum = signal.sigwait(STOP_SIGNALS)
    log.info("received %s, stopping", signal.Signals(signum).name)
