"""The long-running bridge process: the bridge's parts on one event loop in the main thread,
until SIGTERM or SIGINT (a clean stop, exit 0) or until one of its parts dies (exit 70).

``springcore-bridge run`` checks the settings (``bridge.cli``) and calls :func:`serve` in the
same process. Until issue 11 it re-executed itself without pydantic to save ~15 MB of RSS;
with every part on one loop the whole process holds about 40 MB, under the 45 MB the project
allows a one-reader bridge, and one path for the settings is worth more than those 15 MB.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import setproctitle

from bridge.app import App
from bridge.options import BridgeOptions, ConfigError

log = logging.getLogger("bridge")

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
EXIT_FATAL = 70
"""Exit status after a part of the bridge died (EX_SOFTWARE): the supervisor restarts it."""


def print_problems(error: ConfigError) -> None:
    """One line per problem on stderr, no traceback (README, Configuration); the caller
    exits with 2."""
    for line in error.lines:
        print(f"springcore-bridge: {line}", file=sys.stderr)


def serve(options: BridgeOptions) -> int:
    """Run the bridge until SIGTERM or SIGINT, then stop it (offline published, sockets
    closed): 0. If one of its parts dies first: EXIT_FATAL, without a goodbye to the broker,
    whose last will then says ``offline,dead``. A spool or HTTP port that cannot be used
    raises :class:`ConfigError` before anything runs."""
    name_process(options.topics.device_id)
    return asyncio.run(_serve(options))


async def _serve(options: BridgeOptions) -> int:
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


def name_process(device_id: str) -> None:
    """``ps`` and ``pgrep -f`` show ``springcore-bridge <device id>``, not the interpreter's
    command line (the kernel's short name becomes "springcore-brid")."""
    setproctitle.setproctitle(f"springcore-bridge {device_id}")


def hold_stop_signals() -> None:
    """Block SIGTERM/SIGINT before any thread starts (threads inherit the mask), for a
    program of threads (``simulate``) that then takes them with :func:`wait_stop_signal`."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def wait_stop_signal() -> None:
    signum = signal.sigwait(STOP_SIGNALS)
    log.info("received %s, stopping", signal.Signals(signum).name)
