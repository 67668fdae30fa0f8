"""The validated options each layer of the bridge gets, and their JSON form for the runner.

Nothing here validates settings or imports pydantic: ``bridge.config`` checks the settings and
builds these values; ``bridge.runner`` receives them as JSON in a process that never loads
pydantic (see its docstring for why). No I/O happens here.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Literal

from bridge.discovery import Discovery
from bridge.topics import Identity, Topics

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["text", "json"]


class ConfigError(Exception):
    """Bad settings; ``lines`` holds one human-readable line per problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class OptionsError(ValueError):
    """Options JSON that does not describe a :class:`BridgeOptions` (a bug, not a setting)."""


class Secret:
    """A string that ``repr`` and ``str`` never show: pydantic's ``SecretStr`` without pydantic.

    ``len`` and truthiness follow the value, as ``SecretStr``'s do, so an empty password is
    falsy and is not sent (``bridge.mqtt`` tests ``if options.password``).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        # Plain comparison: this equality serves tests and dataclass equality, not login checks.
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ReaderOptions:
    host: str
    port: int
    connect_timeout: float
    keepalive: float
    backoff_max: float
    max_object: int
    device_id: str = ""  # only to label log lines


@dataclass(frozen=True)
class CommandOptions:
    timeout: float
    gap: float
    delimiter: bytes
    allowed_fields: frozenset[str]
    rate: float
    burst: int


@dataclass(frozen=True)
class MqttOptions:
    host: str
    port: int
    client_id: str
    username: str | None
    password: Secret | None
    protocol: Literal["5", "3.1.1"]
    keepalive: int
    qos: Literal[0, 1, 2]
    tls: bool
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    tls_insecure: bool


@dataclass(frozen=True)
class HttpOptions:
    host: str
    port: int


@dataclass(frozen=True)
class OutboxOptions:
    spool_path: Path | None  # None: held in memory only
    max_bytes: int  # what the spool (or, without one, memory) holds at most
    max_age: float  # seconds an undelivered event is kept at most


@dataclass(frozen=True)
class BridgeOptions:
    """All that ``bridge.app.Bridge`` and the runner read; built by ``Settings.bridge_options``."""

    topics: Topics
    identity: Identity
    reader: ReaderOptions
    mqtt: MqttOptions
    commands: CommandOptions
    outbox: OutboxOptions
    http: HttpOptions | None  # None: no health and metrics listener
    discovery: Discovery | None  # None: no Home Assistant discovery
    live_max_age: float | None  # None: no bridge/live topic; else its age limit, seconds
    log_level: LogLevel
    log_format: LogFormat

    def to_json(self) -> bytes:
        """The options as JSON, secret included: hand it only to a pipe, never to argv or a log."""
        return json.dumps(_encode(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> BridgeOptions:
        """The inverse of :meth:`to_json`; :class:`OptionsError` names the first bad field."""
        try:
            decoded = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise OptionsError(f"options: not JSON: {exc}") from None
        options = _decode(cls, decoded, "options")
        assert isinstance(options, cls)  # _decode builds the dataclass it is given
        return options


# -- the JSON codec: driven by the dataclasses' own field types, so it follows new fields ------

# How the types that JSON lacks are written: bytes as hex (a delimiter may be a NUL byte),
# paths as strings, sets as sorted lists, a secret as its plain value.


def _encode(value: object) -> object:
    if isinstance(value, Secret):
        return value.get_secret_value()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, frozenset):
        return sorted(value)
    if is_dataclass(value) and not isinstance(value, type):
        return {field.name: _encode(getattr(value, field.name)) for field in fields(value)}
    return value  # str, int, float, bool, None: JSON's own


def _decode(kind: object, value: object, where: str) -> object:
    """``value`` (decoded JSON) as an instance of the annotation ``kind``."""
    origin = typing.get_origin(kind)
    if origin in (types.UnionType, typing.Union):
        if value is None:
            return None  # every union here is "X | None"
        (inner,) = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        return _decode(inner, value, where)
    if origin is Literal:
        if value not in typing.get_args(kind):
            raise OptionsError(f"{where}: expected one of {typing.get_args(kind)}, got {value!r}")
        return value
    if origin is frozenset:
        items = _expect(list, value, where)
        return frozenset(_expect(str, item, where) for item in items)
    if isinstance(kind, type) and is_dataclass(kind):
        return _decode_dataclass(kind, _expect(dict, value, where), where)
    return _decode_scalar(kind, value, where)


def _decode_scalar(kind: object, value: object, where: str) -> object:
    if kind is bytes:
        try:
            return bytes.fromhex(_expect(str, value, where))
        except ValueError:
            raise OptionsError(f"{where}: expected hexadecimal bytes, got {value!r}") from None
    if kind is Path:
        return Path(_expect(str, value, where))
    if kind is Secret:
        return Secret(_expect(str, value, where))  # the value is not echoed on purpose
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # json.dumps writes 30.0 as 30.0, but a hand-made 30 is fine too
    if kind in (str, int, float, bool):
        assert isinstance(kind, type)
        # bool is an int to isinstance: refuse it where a number is meant.
        if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
            return value
        raise OptionsError(f"{where}: expected {kind.__name__}, got {_shown(value, where)}")
    raise OptionsError(f"{where}: no JSON form for the type {kind!r}")


def _decode_dataclass(kind: type, value: dict[object, object], where: str) -> object:
    hints = typing.get_type_hints(kind)
    names = [field.name for field in fields(kind)]
    if set(value) != set(names):
        given = sorted(map(str, value))
        raise OptionsError(f"{where}: expected the fields {sorted(names)}, got {given}")
    return kind(**{name: _decode(hints[name], value[name], f"{where}.{name}") for name in names})


_T = typing.TypeVar("_T")


def _expect(kind: type[_T], value: object, where: str) -> _T:
    if not isinstance(value, kind):
        raise OptionsError(f"{where}: expected {kind.__name__}, got {_shown(value, where)}")
    return value


def _shown(value: object, where: str) -> str:
    """A wrong value for the error message, unless it may be the secret."""
    return "a value not shown" if where.endswith(".password") else repr(value)
