"""The validated options each part of the bridge gets: plain frozen values, one group per part.

Nothing here validates settings or imports pydantic: ``bridge.config`` checks the settings and
builds these values, so the bridge's parts (and their tests) take them without pydantic. No
I/O happens here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from bridge.discovery import Discovery
from bridge.local import When
from bridge.topics import Identity, Topics

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["text", "json"]


class ConfigError(Exception):
    """Bad settings; ``lines`` holds one human-readable line per problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


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
class LocalOptions:
    """Answers at the edge (README, When the broker is down): a fixed ``reply`` or an allow
    file's accept/deny, sent ``when`` the mode says."""

    reply: str | None  # accept, deny or wink; None: the allow file decides
    allow_file: Path | None
    when: When
    after: float  # seconds a read waits for a command (when = unanswered)


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
    shared: bool = False  # a fleet's: one spool file (or memory bound) for every reader

    def for_fleet(self, spool_path: Path | None) -> OutboxOptions:
        """The same bounds, shared by the readers of a fleet, in ``spool_path``."""
        return replace(self, spool_path=spool_path, shared=True)


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
    local: LocalOptions | None = None  # None: the bridge never answers a read itself

    def with_outbox(self, outbox: OutboxOptions) -> BridgeOptions:
        return replace(self, outbox=outbox)


@dataclass(frozen=True)
class FleetOptions:
    """A fleet (README, Fleet): its readers (those of this process's shard) and what they share;
    built by ``bridge.fleet_file``."""

    readers: tuple[BridgeOptions, ...]
    outbox: OutboxOptions  # shared: one spool file (or memory bound) for every reader
    http: HttpOptions | None
    log_level: LogLevel
    log_format: LogFormat
    source: Path  # the readers file
    shard: str | None  # "K/N", or None: every reader of the file
