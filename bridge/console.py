"""The ``simulate`` subcommand and the simulator's console: its flags checked, one reader
(with a console: one line typed on its terminal, one action on the simulated reader) or many
(``bridge.fleet_simulator``), until SIGTERM or SIGINT.

:func:`act` reads no terminal itself (:func:`run_simulator` feeds it stdin), and a line it
cannot act on sends nothing: :class:`InputError` says why and which words work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import threading
import typing
from typing import Final

from bridge import logs
from bridge.fleet_simulator import FleetSimulator, PortUnavailableError, run_until_signal
from bridge.options import LogLevel
from bridge.runner import hold_stop_signals, wait_stop_signal
from bridge.simulator import (
    PROFILES,
    SEPARATORS,
    Simulator,
    TagNotOnReaderError,
    describe_listen_error,
)

WORDS: Final = ("Enter", *PROFILES, "insert", "remove", "drop", "a JSON object")
"""What the console understands, as the user is told."""

HINT: Final = "type Enter (or nfc/ble/uhf, insert, remove, drop, or a JSON object) to send an event"


class InputError(ValueError):
    """A typed line the simulator cannot act on; nothing was sent."""


def act(simulator: Simulator, line: str, profiles: tuple[str, ...]) -> None:
    """Do what ``line`` says: Enter (an empty line) reads a tag of ``profiles[0]``, ``nfc``,
    ``ble`` or ``uhf`` one of that kind; ``insert`` puts a tag on the reader and ``remove``
    takes the last one inserted off; ``drop`` closes the client's connection; a JSON object
    is sent as typed. Socket errors (no client) are the caller's to report."""
    word = line.strip()
    if word.startswith("{"):
        _check_object(word)
        simulator.send_raw(word.encode() + simulator.separator)
    elif word == "drop":
        simulator.drop_client()
    elif word == "insert":
        simulator.insert(profiles[0])
    elif word == "remove":
        try:
            simulator.remove()
        except TagNotOnReaderError as exc:
            raise InputError(f"nothing to remove: {exc}; type insert first") from None
    elif word in ("", *PROFILES):
        simulator.emit(profile=word or profiles[0])
    else:
        raise InputError(f"unknown word {word!r}: type {', '.join(WORDS[:-1])} or {WORDS[-1]}")


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")  # Python's json takes NaN and Infinity; JSON does not


def _check_object(text: str) -> None:
    try:
        json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise InputError(f"not a JSON object: {exc.msg} at column {exc.colno}") from None
    except ValueError as exc:
        raise InputError(f"not a JSON object: {exc}") from None


def run_simulator(args: argparse.Namespace) -> int:
    """``simulate`` until SIGTERM/SIGINT: 0. A bad flag, or a port it cannot listen on, is
    one line on stderr and 2. ``--readers`` 2 or more: :func:`_run_fleet`."""
    try:
        port, interval, level = _simulator_flags(args)
        readers, rate = _fleet_flags(args, port)
        simulator = _listen(args, port) if readers == 1 else None
    except ValueError as exc:
        print(f"springcore-bridge simulate: {exc}", file=sys.stderr)
        return 2
    if simulator is None:
        return _run_fleet(args, port, readers, rate, level)
    hold_stop_signals()
    logs.configure(level, "text")
    profiles = PROFILES if args.profile == "mixed" else (args.profile,)
    simulator.start()
    if interval > 0:
        threading.Thread(
            target=simulator.run_timer, args=(interval, profiles, args.moves), daemon=True
        ).start()
    threading.Thread(target=_read_stdin, args=(simulator, profiles), daemon=True).start()
    print(HINT, file=sys.stderr)
    wait_stop_signal()
    simulator.stop()
    return 0


def _simulator_flags(args: argparse.Namespace) -> tuple[int, float, str]:
    """``--port``, ``--interval`` and ``--log-level``, checked; ValueError names the bad one."""
    text = args.port.strip()
    port = int(text) if text.isascii() and text.isdigit() else -1
    if not 0 <= port <= 65535:
        raise ValueError(
            f"--port must be a whole number from 0 to 65535 (0 = any free port), got {args.port!r}"
        )
    try:
        interval = float(args.interval)
    except ValueError:
        interval = -1.0
    if not (math.isfinite(interval) and interval >= 0):
        raise ValueError(f"--interval must be 0 (no timer) or more seconds, got {args.interval!r}")
    levels = typing.get_args(LogLevel)
    if args.log_level.upper() not in levels:
        raise ValueError(f"--log-level must be one of {', '.join(levels)}, got {args.log_level!r}")
    return port, interval, args.log_level.upper()


def _fleet_flags(args: argparse.Namespace, port: int) -> tuple[int, float]:
    """``--readers`` and ``--rate``, checked; ValueError names the bad one."""
    text = args.readers.strip()
    readers = int(text) if text.isascii() and text.isdigit() else 0
    if readers < 1:
        raise ValueError(f"--readers must be a whole number, 1 or more, got {args.readers!r}")
    if port and port + readers - 1 > 65535:
        raise ValueError(f"--port {port} and --readers {readers} go past port 65535")
    if readers == 1:
        if args.rate is not None:
            raise ValueError("--rate is for --readers 2 or more (one reader takes --interval)")
        return 1, 0.0
    if args.moves:
        raise ValueError("--moves is for one reader (--readers 1)")
    try:
        rate = float("1" if args.rate is None else args.rate)
    except ValueError:
        rate = -1.0
    if not (math.isfinite(rate) and rate >= 0):
        raise ValueError(f"--rate must be 0 (no events) or more a second, got {args.rate!r}")
    return readers, rate


def _run_fleet(args: argparse.Namespace, port: int, readers: int, rate: float, level: str) -> int:
    """``simulate --readers N``: N readers on one event loop (``bridge.fleet_simulator``)."""
    fleet = FleetSimulator(
        args.host,
        port,
        readers,
        rate,
        profiles=PROFILES if args.profile == "mixed" else (args.profile,),
        separator=SEPARATORS[args.separator],
        busy=args.busy,
    )
    logs.configure(level, "text")
    try:
        return asyncio.run(run_until_signal(fleet))
    except PortUnavailableError as exc:
        print(f"springcore-bridge simulate: {exc}", file=sys.stderr)
        return 2


def _listen(args: argparse.Namespace, port: int) -> Simulator:
    """A simulator bound to ``--host``:``port``; ValueError says why it cannot listen there."""
    try:
        return Simulator(args.host, port, SEPARATORS[args.separator], busy=args.busy)
    except OSError as exc:
        reason = describe_listen_error(exc)
        raise ValueError(f"cannot listen on {args.host}:{port}: {reason}") from None


def _read_stdin(simulator: Simulator, profiles: tuple[str, ...]) -> None:
    """On-demand events: one line, one action (``bridge.console``); a refused line says why."""
    for line in sys.stdin:
        try:
            act(simulator, line, profiles)
        except (InputError, OSError) as exc:
            print(f"not sent: {exc}", file=sys.stderr)
