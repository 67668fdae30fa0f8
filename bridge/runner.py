"""The long-running bridge process: checked options from a pipe, then the bridge until a signal.

It must not import pydantic, argparse or ``bridge.cli``: ``springcore-bridge run`` checks the
settings with pydantic-settings (README, Configuration), writes them as :class:`BridgeOptions` JSON
into a pipe and replaces itself (:func:`exec_runner`, ``os.execv``) with a fresh interpreter running
``bridge.runner`` with ``--options-fd N`` that reads them from the pipe and runs the bridge.

Why (issue 5: "RSS under 40 MB"): the settings are read once, but what pydantic-settings imports
stays resident, and Python can neither unload modules nor hand their memory back. Measured
right after import in a fresh interpreter (VmRSS, this 2-core x86-64 VM, Python 3.11): Python
alone 10.9 MB, ``import paho.mqtt.client`` 21.8, ``import pydantic_settings`` 34.4 (~230
modules, asyncio among them, and pydantic_core's shared object), ``import prometheus_client``
23.4, ``import bridge.app`` 41.5 before this module existed and 26.4 after. An idle ``run``
connected to a broker and a reader (5 s after an event) held 42.0 MB in one process; after the
exec it holds 27.0 MB (27.9 with the health listener).

The secret travels only through the pipe, never in argv (every user can read
/proc/PID/cmdline) nor in an added environment variable. ``exec`` keeps the PID, so Docker's
SIGTERM reaches the bridge; it also keeps the signal mask and pending signals, so a SIGTERM
that arrives during the hand-over stays pending and still means a clean stop. ``run
--simulate``, a demo with its simulated reader in the same process, calls :func:`serve` there
without the exec.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

import setproctitle

from bridge import logs
from bridge.options import BridgeOptions, ConfigError, OptionsError

log = logging.getLogger("bridge")

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
FATAL_SIGNAL = signal.SIGUSR2
"""Sent to the main thread by a dying thread of the bridge; it then exits with EXIT_FATAL."""
EXIT_FATAL = 70
"""Exit status after an internal loop died (EX_SOFTWARE): the supervisor restarts the bridge."""
OPTIONS_FLAG = "--options-fd"
_BOOT = "import sys; sys.path.insert(0, sys.argv.pop(1)); import bridge.runner as r; r.launch()"


def hold_stop_signals() -> None:
    """Block SIGTERM/SIGINT before any thread starts (threads inherit the mask).

    They then stay pending until :func:`wait_stop_signal` takes them with ``sigwait``: no
    handler runs in the middle of other code, so none can deadlock on a lock it interrupted,
    and a signal that arrives during start-up still means a clean stop.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS | {FATAL_SIGNAL})


def wait_stop_signal(failed: list[str] | None = None) -> bool:
    """Wait for SIGTERM or SIGINT (True), or for a thread's death reported in ``failed``
    (False); a FATAL_SIGNAL from outside, with nothing in ``failed``, is ignored."""
    while True:
        signum = signal.sigwait(STOP_SIGNALS | {FATAL_SIGNAL})
        if signum != FATAL_SIGNAL:
            log.info("received %s, stopping", signal.Signals(signum).name)
            return True
        if failed:
            return False


def print_problems(error: ConfigError) -> None:
    """One line per problem on stderr, no traceback (README, Configuration); the caller exits
    with 2."""
    for line in error.lines:
        print(f"springcore-bridge: {line}", file=sys.stderr)


def serve(options: BridgeOptions) -> int:
    """Run a bridge until SIGTERM or SIGINT, then stop it (offline published, sockets
    closed): 0. If one of its threads dies first: EXIT_FATAL, without a goodbye to the
    broker, whose last will then says ``offline,dead``."""
    from bridge.app import Bridge  # noqa: PLC0415 - paho stays out of bridge.cli's imports

    hold_stop_signals()
    main = threading.get_ident()
    failed: list[str] = []

    def on_fatal(name: str) -> None:  # in the dying thread
        failed.append(name)
        signal.pthread_kill(main, FATAL_SIGNAL)

    bridge = Bridge(options, on_fatal=on_fatal)
    name_process(options.topics.device_id)
    bridge.start()
    if wait_stop_signal(failed):
        bridge.stop()
        return 0
    log.critical(
        "internal loop(s) %s died: exiting with status %d so that the bridge is restarted",
        ", ".join(failed),
        EXIT_FATAL,
    )
    bridge.abort()
    return EXIT_FATAL


def name_process(device_id: str) -> None:
    """``ps`` and ``pgrep -f`` show ``springcore-bridge <device id>``, not the interpreter's
    command line (the kernel's short name becomes "springcore-brid")."""
    setproctitle.setproctitle(f"springcore-bridge {device_id}")


def exec_runner(options: BridgeOptions) -> NoReturn:
    """Replace this process (same PID) by ``python -m bridge.runner``, given ``options``."""
    data = options.to_json()
    read_fd, write_fd = os.pipe()
    try:
        # All of it is written before the exec, so nothing may block: a pipe holds 64 KiB on
        # Linux, far more than the options take (about 1 KiB).
        os.set_blocking(write_fd, False)
        written = os.write(write_fd, data)
    except BlockingIOError:
        written = 0
    finally:
        os.close(write_fd)  # the runner reads to end-of-file (exec would close it too)
    if written != len(data):
        os.close(read_fd)
        raise ConfigError(
            [f"settings: their {len(data)} bytes do not fit a pipe; shorten the longest value"]
        )
    os.set_inheritable(read_fd, True)
    sys.stdout.flush()  # exec drops what Python still buffers
    sys.stderr.flush()
    # -P and an explicit path: the new interpreter loads this very package, never a
    # "bridge" directory that happens to sit in the working directory (-m would put it first).
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    argv = [sys.executable, "-P", "-c", _BOOT, root, OPTIONS_FLAG, str(read_fd)]
    os.execv(sys.executable, argv)  # noqa: S606 - no shell: this interpreter, fixed arguments


def read_options(fd: int) -> BridgeOptions:
    """The options :func:`exec_runner` wrote into ``fd``; the descriptor is closed."""
    with os.fdopen(fd, "rb") as pipe:
        return BridgeOptions.from_json(pipe.read())


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if len(arguments) != 2 or arguments[0] != OPTIONS_FLAG or not arguments[1].isdigit():
        print(
            f"usage: python -m bridge.runner {OPTIONS_FLAG} FD "
            "(started by 'springcore-bridge run', which writes the options into FD)",
            file=sys.stderr,
        )
        return 2
    try:
        options = read_options(int(arguments[1]))
    except (OSError, OptionsError) as exc:
        print(f"springcore-bridge: no options on descriptor {arguments[1]}: {exc}", file=sys.stderr)
        return 2
    logs.configure(options.log_level, options.log_format, options.topics.device_id)
    try:
        return serve(options)
    except ConfigError as exc:  # a spool that cannot be opened, a port already in use
        print_problems(exc)
        return 2


def launch() -> NoReturn:
    """The entry of the exec'd interpreter (and of ``python -m bridge.runner``)."""
    raise SystemExit(main())


if __name__ == "__main__":
    launch()
