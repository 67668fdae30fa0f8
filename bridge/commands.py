"""Validates MQTT command payloads and translates them into the reader's canonical JSON.

No I/O happens here. Every form the README's Commands section accepts becomes a
:class:`Command` whose ``encode()`` is the one compact object sent to the reader; everything
else raises :class:`CommandError` with a sentence a person can act on, and nothing is
forwarded.

Canonical form (what the reader gets), field order fixed as below:

* ``Sequence``: two upper-case hex digits (a JSON integer is decimal, as the reader defines
  it, so ``96`` becomes ``"60"``; a string is hex; ``wink``/``accept``/``deny`` are names);
* ``Leds``: eight upper-case hex digits;
* ``RgbColor``: six upper-case hex digits (0-FFFFFF); ``RgbMode``: two (00-FF);
* ``Buzzer``: four upper-case hex digits, milliseconds 0-65535 (``100`` becomes ``"0064"``);
* ``Relay``: its semantics are not documented (docs/reader-protocol.md §3), so it is passed through
  as given: ``true``/``false``, an integer 0-65535, or an upper-cased hex string of 1-4 digits;
* ``Relays``: a list of 1-8 such values.

The reader reads a JSON integer as decimal and a string as hex, so the hex strings above
mean exactly what the sender meant.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

MAX_PAYLOAD: Final = 1024
"""Largest command payload accepted, in bytes (README, Commands)."""

SEQUENCE_NAMES: Final = {"wink": "0E", "accept": "60", "deny": "61"}

FIELDS: Final = ("Sequence", "Leds", "RgbColor", "RgbMode", "Buzzer", "Relay", "Relays")
"""Every READER COMMAND field, in the order they are sent."""

_EXCLUSIVE_WITH_SEQUENCE: Final = ("Leds", "RgbColor", "RgbMode", "Buzzer")
_SCCMD_KEYS: Final = {"SEQ": "Sequence", "LEDS": "Leds", "BUZZ": "Buzzer"}
_HEX = re.compile(r"[0-9A-Fa-f]+")
_WORD = re.compile(r"[A-Za-z]+")
_MAX_RELAYS: Final = 8
_MAX_TRANSACTION: Final = 128
_JSON_LITERALS: Final = ("null", "true", "false")
_JSON_TYPES: Final = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}

Transaction = str | int | float | None
Value = str | int | bool | list[str | int | bool]


class CommandError(ValueError):
    """A command payload that must not reach the reader; ``str()`` says why."""

    def __init__(self, message: str, transaction: Transaction = None) -> None:
        super().__init__(message)
        self.transaction = transaction


@dataclass(frozen=True)
class Command:
    """A validated command in the reader's spelling, ready to send."""

    fields: tuple[tuple[str, Value], ...]
    transaction: Transaction = None

    def as_dict(self) -> dict[str, Value]:
        return dict(self.fields)

    def encode(self) -> bytes:
        """The compact JSON object sent to the reader (no delimiter)."""
        return json.dumps(self.as_dict(), separators=(",", ":")).encode()


def parse_command(payload: bytes, allowed: frozenset[str] = frozenset(FIELDS)) -> Command:
    """Validate one MQTT payload; raise :class:`CommandError` if it must not be forwarded.

    ``allowed`` names the fields this site lets through (a subset of :data:`FIELDS`).
    """
    if len(payload) > MAX_PAYLOAD:
        raise CommandError(f"command is {len(payload)} bytes; the limit is {MAX_PAYLOAD} bytes")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise CommandError(f"command is not valid UTF-8 (byte {exc.start})") from None
    if not text:
        raise CommandError(
            "command is empty (as when a retained message is cleared): nothing sent; "
            "send JSON, $SCCMD text, or wink/accept/deny"
        )
    if text.startswith("$"):
        command = _parse_sccmd(text)
    elif _WORD.fullmatch(text) and text not in _JSON_LITERALS:
        command = _parse_word(text)
    else:
        command = _parse_json(text)
    unwanted = [name for name, _ in command.fields if name not in allowed]
    if unwanted:
        raise CommandError(
            f"field {unwanted[0]} is disabled on this bridge (BRIDGE_COMMAND_FIELDS)",
            command.transaction,
        )
    return command


def _parse_word(text: str) -> Command:
    code = SEQUENCE_NAMES.get(text.lower())
    if code is None:
        raise CommandError(f"unknown command word {text!r}; known words: wink, accept, deny")
    return Command((("Sequence", code),))


def _parse_json(text: str) -> Command:
    duplicates: list[str] = []

    def keep_first(pairs: list[tuple[str, object]]) -> dict[str, object]:
        # Duplicates are refused after parsing, so that the transaction can still be echoed.
        result: dict[str, object] = {}
        for key, value in pairs:
            if key in result:
                duplicates.append(key)
            else:
                result[key] = value
        return result

    try:
        value = json.loads(text, object_pairs_hook=keep_first, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            raise CommandError("payload holds more than one JSON value; send one object") from None
        raise CommandError(f"invalid JSON: {exc.msg} at character {exc.pos}") from None
    except ValueError as exc:
        raise CommandError(f"invalid JSON: {exc}") from None
    except RecursionError:  # "[[[[..." under 1 KiB still nests deeper than json can follow
        raise CommandError("invalid JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise CommandError(f"command must be a JSON object, got {_JSON_TYPES[type(value)]}")
    transaction = _transaction(value)
    try:
        if duplicates:
            raise CommandError(f"key {duplicates[0]!r} appears twice in the command")
        return _build(value, transaction)
    except CommandError as exc:
        raise CommandError(str(exc), transaction) from None


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _transaction(obj: dict[str, object]) -> Transaction:
    keys = [k for k in obj if k.lower() == "transaction"]
    if not keys:
        return None
    if len(keys) > 1:
        raise CommandError("transaction appears twice (keys differ only in case)")
    value = obj.pop(keys[0])
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise CommandError("transaction must be a string or a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise CommandError("transaction must be a finite number")
    if isinstance(value, str) and len(value) > _MAX_TRANSACTION:
        raise CommandError(f"transaction is longer than {_MAX_TRANSACTION} characters")
    return value


def _build(obj: dict[str, object], transaction: Transaction) -> Command:
    by_name = {name.lower(): name for name in FIELDS}
    found: dict[str, object] = {}
    for key, value in obj.items():
        name = by_name.get(key.lower())
        if name is None:
            raise CommandError(f"unknown field {key!r}; known fields: {', '.join(FIELDS)}")
        if name in found:
            raise CommandError(f"field {name} appears twice (keys differ only in case)")
        found[name] = value
    if not found:
        raise CommandError(f"command has no field to send; use one of {', '.join(FIELDS)}")
    if "Sequence" in found:
        clash = [name for name in _EXCLUSIVE_WITH_SEQUENCE if name in found]
        if clash:
            raise CommandError(
                f"Sequence cannot be combined with {clash[0]} (the reader forbids it)"
            )
    fields = tuple((name, _CONVERTERS[name](found[name])) for name in FIELDS if name in found)
    return Command(fields, transaction)


def _hex_or_int(name: str, value: object, digits: int, maximum: int) -> str:
    """An integer (decimal) or a hex string of 1..digits digits, as ``digits`` hex digits."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _HEX.fullmatch(value) and len(value) <= digits:
        number = int(value, 16)
    else:
        raise CommandError(
            f"{name} must be an integer 0-{maximum} or a hex string of 1-{digits} digits, "
            f"got {_show(value)}"
        )
    if not 0 <= number <= maximum:
        raise CommandError(f"{name} must be between 0 and {maximum}, got {_show(value)}")
    return f"{number:0{digits}X}"


def _show(value: object) -> str:
    """A value as the sender wrote it (JSON), for error messages."""
    return json.dumps(value)


def _sequence(value: object) -> str:
    if isinstance(value, str) and value.lower() in SEQUENCE_NAMES:
        return SEQUENCE_NAMES[value.lower()]
    return _hex_or_int("Sequence", value, 2, 0xFF)


def _leds(value: object) -> str:
    if not (isinstance(value, str) and len(value) == 8 and _HEX.fullmatch(value)):
        raise CommandError(
            f"Leds must be exactly 8 hex digits (a byte per LED), got {_show(value)}"
        )
    return value.upper()


def _relay(value: object, name: str = "Relay") -> str | int | bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and 0 <= value <= 0xFFFF:
        return value
    if isinstance(value, str) and 1 <= len(value) <= 4 and _HEX.fullmatch(value):
        return value.upper()
    raise CommandError(
        f"{name} must be true/false, an integer 0-65535 or a hex string of 1-4 digits, "
        f"got {_show(value)}"
    )


def _relays(value: object) -> list[str | int | bool]:
    if not isinstance(value, list) or not 1 <= len(value) <= _MAX_RELAYS:
        raise CommandError(
            f"Relays must be a list of 1-{_MAX_RELAYS} relay values, got {_show(value)}"
        )
    return [_relay(item, f"Relays[{index}]") for index, item in enumerate(value)]


_CONVERTERS: Final[dict[str, Callable[[object], Value]]] = {
    "Sequence": _sequence,
    "Leds": _leds,
    "RgbColor": functools.partial(_hex_or_int, "RgbColor", digits=6, maximum=0xFFFFFF),
    "RgbMode": functools.partial(_hex_or_int, "RgbMode", digits=2, maximum=0xFF),
    "Buzzer": functools.partial(_hex_or_int, "Buzzer", digits=4, maximum=0xFFFF),
    "Relay": _relay,
    "Relays": _relays,
}


class RateLimit:
    """A token bucket: ``rate`` commands per second on average, ``burst`` at once.

    Pure: the caller passes the time (``time.monotonic()``). ``rate`` 0 means no limit.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._last: float | None = None

    def allow(self, now: float) -> bool:
        if self.rate <= 0:
            return True
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


# -- the $SCCMD text form ------------------------------------------------------------------


def _parse_sccmd(text: str) -> Command:
    """``$SCCMD;KEY=VALUE;...[*CC]``: values are hex; the checksum is optional.

    SpringCard's pages disagree on the XOR checksum's span: between ``$`` and ``*``
    exclusive, or inclusive. Either is accepted; anything else is refused.
    """
    if not text.isascii():
        raise CommandError("$SCCMD text must be ASCII")
    body, star, checksum = text.partition("*")
    if star:
        _check_sccmd_checksum(body, checksum)
    parts = body.split(";")
    if parts[0].upper() != "$SCCMD":
        raise CommandError(f"text command must start with $SCCMD, got {parts[0]!r}")
    found: dict[str, object] = {}
    for part in parts[1:]:
        key, equals, value = part.partition("=")
        name = _SCCMD_KEYS.get(key.strip().upper())
        if not equals or name is None:
            known = ", ".join(_SCCMD_KEYS)
            raise CommandError(f"$SCCMD item {part!r} is not KEY=VALUE with KEY one of {known}")
        if name in found:
            raise CommandError(f"$SCCMD key {key.strip().upper()} appears twice")
        if not _HEX.fullmatch(value.strip()):
            raise CommandError(f"$SCCMD value {part!r} must be hex digits")
        found[name] = value.strip()  # hex, like a JSON string value
    return _build(found, None)


def _check_sccmd_checksum(body: str, checksum: str) -> None:
    if not (len(checksum) == 2 and _HEX.fullmatch(checksum)):
        raise CommandError(f"$SCCMD checksum must be two hex digits after '*', got {checksum!r}")
    raw = body.encode("ascii")
    exclusive = functools.reduce(lambda acc, byte: acc ^ byte, raw[1:], 0)
    inclusive = exclusive ^ ord("$") ^ ord("*")
    if int(checksum, 16) not in (exclusive, inclusive):
        raise CommandError(
            f"$SCCMD checksum {checksum.upper()} is wrong (expected {exclusive:02X}, "
            f"or {inclusive:02X} counting '$' and '*'); fix it or leave it out"
        )
