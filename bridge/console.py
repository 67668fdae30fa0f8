"""The simulator's console: one line typed on its terminal, one action on the simulated reader.

It reads no terminal itself (``springcore-bridge simulate`` feeds it stdin), and a line it
cannot act on sends nothing: :class:`InputError` says why and which words work.
"""

from __future__ import annotations

import json
from typing import Final

from bridge.simulator import PROFILES, Simulator, TagNotOnReaderError

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
