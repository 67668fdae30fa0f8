"""Settings from the environment, a ``.env`` file and command-line flags (README, Configuration).

Each layer gets only its own group (:class:`ReaderOptions`, :class:`MqttOptions`, ..., defined
in ``bridge.options`` without pydantic); ``run`` gets them all as one :class:`BridgeOptions`.
A bad value becomes :class:`ConfigError` whose lines each name the variable, the value and
what is expected; secrets are never echoed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

from bridge.address import host_problem
from bridge.commands import FIELDS
from bridge.discovery import Discovery
from bridge.local import AllowListError, When, parse_allow_list
from bridge.options import (
    BridgeOptions,
    CommandOptions,
    ConfigError,
    HttpOptions,
    LocalOptions,
    LogFormat,
    LogLevel,
    MqttOptions,
    OutboxOptions,
    ReaderOptions,
    Secret,
)
from bridge.shard import Shard
from bridge.tls import client_context
from bridge.topics import Identity, Topics

# The option values live in bridge.options, which the runner loads without pydantic; they are
# re-exported here, where callers have always imported them from.
__all__ = [
    "DELIMITER_BYTES",
    "ENV_PREFIX",
    "BridgeOptions",
    "CommandOptions",
    "ConfigError",
    "HttpOptions",
    "MqttOptions",
    "OutboxOptions",
    "ReaderOptions",
    "RunSettings",
    "Secret",
    "Settings",
    "default_state_dir",
    "describe_error",
    "env_names",
    "load_run_settings",
    "load_settings",
]

ENV_PREFIX = "BRIDGE_"
MB = 1024 * 1024
"""Bytes in the MB of BRIDGE_SPOOL_MAX_MB and BRIDGE_MEMORY_MAX_MB (a mebibyte)."""
SECRET_FIELDS = frozenset({"mqtt_password"})
_TOPIC_LEVEL = re.compile(r"[^/+#\s\x00]+")
_DEVICE_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")

Delimiter = Literal["none", "lf", "crlf", "nul"]
DELIMITER_BYTES: dict[str, bytes] = {"none": b"", "lf": b"\n", "crlf": b"\r\n", "nul": b"\x00"}


class Settings(BaseSettings):
    """Every setting of the bridge; ``config.example.env`` lists them all (a test checks)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        extra="ignore",
        validate_default=True,
        env_ignore_empty=True,  # BRIDGE_X= (as in config.example.env) means "not set"
    )

    # Each description is the field's comment in config.example.env, in one line: the flags'
    # --help shows it with the default.
    reader_host: str | None = Field(
        None, description="reader IP address or host name; required by run and check"
    )
    reader_port: int = Field(4000, ge=1, le=65535, description="reader TCP port")
    reader_connect_timeout: float = Field(
        5.0, gt=0, le=120, description="seconds one connection attempt to the reader may take"
    )
    reader_keepalive: float = Field(
        30.0, ge=2, le=3600, description="seconds within which a dead reader host is noticed"
    )
    reader_backoff_max: float = Field(
        30.0, ge=1, le=3600, description="longest delay in seconds between reconnection attempts"
    )
    reader_max_object: int = Field(
        65536, ge=1024, le=1 << 20, description="largest event accepted from the reader, bytes"
    )
    reader_serial: str | None = Field(None, description="reader serial number, published in meta")
    reader_product: str | None = Field(None, description="reader product name, published in meta")
    reader_location: str | None = Field(None, description="reader location, published in meta")
    device_id: str | None = Field(
        None, description="{id} in topics; unset = derived from the reader host"
    )
    topic_prefix: str = Field("springcard/springcore", description="{prefix} in topics")

    mqtt_host: str = Field("localhost", min_length=1, description="broker host name or address")
    mqtt_port: int | None = Field(
        None, ge=1, le=65535, description="broker port; unset = 1883, or 8883 with TLS"
    )
    mqtt_username: str | None = Field(None, description="broker user name; unset = anonymous")
    mqtt_password: SecretStr | None = Field(
        None, description="broker password, never shown; prefer BRIDGE_MQTT_PASSWORD_FILE"
    )
    mqtt_password_file: Path | None = Field(
        None, description="file holding the broker password (trailing newline ignored)"
    )
    mqtt_client_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="MQTT client id, unique per bridge; unset = springcore-bridge-{id}",
    )
    mqtt_protocol: Literal["5", "3.1.1"] = Field("5", description="MQTT version: 5 or 3.1.1")
    mqtt_keepalive: int = Field(
        30, ge=5, le=3600, description="seconds between MQTT keepalive pings"
    )
    mqtt_qos: Literal[0, 1, 2] = Field(
        1, description="QoS for events and the command subscription: 0, 1 or 2"
    )
    mqtt_tls: bool = Field(False, description="connect to the broker with TLS")
    mqtt_ca_file: Path | None = Field(
        None, description="CA certificate (PEM) to verify the broker; unset = the system's CAs"
    )
    mqtt_cert_file: Path | None = Field(
        None, description="client certificate (PEM), for brokers that require one"
    )
    mqtt_key_file: Path | None = Field(
        None, description="private key (PEM, unencrypted) of the client certificate"
    )
    mqtt_tls_insecure: bool = Field(
        False, description="do not verify the broker's certificate (logs a warning; tests only)"
    )
    spool_path: str | None = Field(
        None,
        description="SQLite file holding events until the broker acknowledges them; "
        "unset = spool-{id}.db in the state directory; none = memory only",
    )
    spool_max_mb: float = Field(
        256.0,
        gt=0,
        le=1_000_000,
        description="megabytes of events the spool holds at most; when full, the oldest go",
    )
    memory_max_mb: float = Field(
        32.0,
        gt=0,
        le=100_000,
        description="with BRIDGE_SPOOL_PATH=none: megabytes of events held in memory at most",
    )
    outbox_max_age: float = Field(
        7 * 86400.0, gt=0, description="seconds an undelivered event is kept at most (7 days)"
    )
    live_topic: bool = Field(
        False,
        description="also publish timely events on {prefix}/{id}/bridge/live "
        "(always on with BRIDGE_HA_DISCOVERY)",
    )
    live_max_age: float = Field(
        3.0,
        gt=0,
        le=3600,
        description="seconds: an event older than this when published is not live",
    )

    command_timeout: float = Field(
        2.0,
        gt=0,
        le=60,
        description="seconds after which a command that cannot reach the reader is dropped",
    )
    command_gap: float = Field(
        0.05, ge=0, le=5, description="seconds left between two commands written to the reader"
    )
    command_delimiter: Delimiter = Field(
        "none", description="written after each command: none, lf, crlf or nul"
    )
    command_fields: str = Field(
        ",".join(FIELDS),
        description="command fields forwarded, comma-separated; "
        "remove Relay,Relays to keep relay control off MQTT",
    )
    command_rate: float = Field(
        10.0, ge=0, le=1000, description="commands per second forwarded on average; 0 = no limit"
    )
    command_burst: int = Field(
        10, ge=1, le=1000, description="commands that may arrive at once before the rate limit"
    )

    local_reply: Literal["off", "accept", "deny", "wink"] = Field(
        "off",
        description="answer every read (not a Remove) with this sequence: off, accept, deny "
        "or wink (README, When the broker is down)",
    )
    local_allow_file: Path | None = Field(
        None,
        description="file of allowed TagIds, one per line: listed tags get accept, other reads "
        "deny; re-read when it changes; keep it mode 0600",
    )
    local_when: When | None = Field(
        None,
        description="when to answer reads locally: always, offline (broker session down) or "
        "unanswered (no command within BRIDGE_LOCAL_AFTER); default unanswered with an "
        "allow file, else always",
    )
    local_after: float = Field(
        1.5,
        gt=0,
        le=60,
        description="seconds a read waits for a command before its local answer (unanswered)",
    )

    ha_discovery: bool = Field(True, description="publish Home Assistant MQTT discovery configs")
    ha_discovery_prefix: str = Field(
        "homeassistant", description="Home Assistant's discovery prefix"
    )

    http_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="port of the HTTP listener (/healthz, /readyz, /metrics); unset = off",
    )
    http_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="address the HTTP listener binds to; 0.0.0.0 = reachable from other hosts",
    )

    readers_file: Path | None = Field(
        None,
        description="TOML file listing the readers of a fleet, served by one process "
        "(README, Fleet); unset = one reader, BRIDGE_READER_HOST",
    )
    shard: str | None = Field(
        None,
        description="K/N: with BRIDGE_READERS_FILE, serve only the readers of shard K of N "
        "(CRC32 of the device id); unset = all",
    )

    log_level: LogLevel = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: LogFormat = Field(
        "text", description="text (human-readable) or json (one object per line)"
    )

    @field_validator(
        "log_level", "log_format", "command_delimiter", "local_reply", "local_when", mode="before"
    )
    @classmethod
    def _fold_case(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        return (
            value.upper()
            if value.lower() in {"debug", "info", "warning", "error"}
            else value.lower()
        )

    @field_validator("mqtt_qos", mode="before")
    @classmethod
    def _qos_number(cls, value: object) -> object:
        return int(value) if isinstance(value, str) and value.strip().isdigit() else value

    @field_validator("topic_prefix", "ha_discovery_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        levels = value.split("/")
        if not all(_TOPIC_LEVEL.fullmatch(level) for level in levels):
            raise ValueError("must be topic levels separated by '/', without + # or spaces")
        return value

    @field_validator("device_id")
    @classmethod
    def _check_device_id(cls, value: str | None) -> str | None:
        if value is not None and not _TOPIC_LEVEL.fullmatch(value):
            raise ValueError("must be one topic level: no '/', '+', '#' or spaces")
        return value

    @field_validator("reader_host", "mqtt_host", "http_host")
    @classmethod
    def _check_host(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            variable = ENV_PREFIX + str(info.field_name).upper()
            port_variable = variable.removesuffix("_HOST") + "_PORT"
            problem = host_problem(variable, port_variable, value)
            if problem:
                raise ExplainedError(problem)
        return value

    @field_validator(
        "mqtt_password_file",
        "mqtt_ca_file",
        "mqtt_cert_file",
        "mqtt_key_file",
        "readers_file",
        "local_allow_file",
    )
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError("must name a readable file")
        return value

    @field_validator("shard")
    @classmethod
    def _check_shard(cls, value: str | None) -> str | None:
        if value is not None:
            Shard.parse(value)  # its ValueError says what is expected
        return value

    @field_validator("command_fields")
    @classmethod
    def _check_fields(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        known = {name.lower(): name for name in FIELDS}
        unknown = [name for name in names if name.lower() not in known]
        if unknown:
            raise ValueError(f"unknown field {unknown[0]!r}; known fields: {','.join(FIELDS)}")
        return ",".join(known[name.lower()] for name in names)

    # -- derived values ---------------------------------------------------------------

    def resolved_device_id(self) -> str:
        if self.device_id:
            return self.device_id
        host = self.reader_host or "reader"
        return _DEVICE_ID_UNSAFE.sub("-", host).strip("-") or "reader"

    def topics(self) -> Topics:
        return Topics(self.topic_prefix, self.resolved_device_id())

    def identity(self) -> Identity:
        return Identity(
            reader_host=self.reader_host or "",
            serial_number=self.reader_serial,
            product_name=self.reader_product,
            location=self.reader_location,
        )

    def discovery(self) -> Discovery | None:
        if not self.ha_discovery:
            return None
        return Discovery(self.ha_discovery_prefix, self.topics(), self.identity())

    def reader(self) -> ReaderOptions:
        if not self.reader_host:
            raise ConfigError(
                ["BRIDGE_READER_HOST: required: the reader's IP address or host name"]
            )
        return ReaderOptions(
            host=self.reader_host,
            port=self.reader_port,
            connect_timeout=self.reader_connect_timeout,
            keepalive=self.reader_keepalive,
            backoff_max=self.reader_backoff_max,
            max_object=self.reader_max_object,
            device_id=self.resolved_device_id(),
        )

    def commands(self) -> CommandOptions:
        return CommandOptions(
            timeout=self.command_timeout,
            gap=self.command_gap,
            delimiter=DELIMITER_BYTES[self.command_delimiter],
            allowed_fields=frozenset(self.command_fields.split(",")) - {""},
            rate=self.command_rate,
            burst=self.command_burst,
        )

    def mqtt(self) -> MqttOptions:
        return MqttOptions(
            host=self.mqtt_host,
            port=self.mqtt_port or (8883 if self.mqtt_tls else 1883),
            client_id=self.mqtt_client_id or f"springcore-bridge-{self.resolved_device_id()}",
            username=self.mqtt_username,
            password=self._password(),
            protocol=self.mqtt_protocol,
            keepalive=self.mqtt_keepalive,
            qos=self.mqtt_qos,
            tls=self.mqtt_tls,
            ca_file=self.mqtt_ca_file,
            cert_file=self.mqtt_cert_file,
            key_file=self.mqtt_key_file,
            tls_insecure=self.mqtt_tls_insecure,
        )

    def http(self) -> HttpOptions | None:
        """The health and metrics listener, or ``None`` when BRIDGE_HTTP_PORT is not set."""
        if self.http_port is None:
            return None
        return HttpOptions(self.http_host, self.http_port)

    def outbox(self) -> OutboxOptions:
        if self.spool_path is None:
            path: Path | None = default_state_dir() / f"spool-{self.resolved_device_id()}.db"
        elif self.spool_path.lower() == "none":
            path = None
        else:
            path = Path(self.spool_path)
        megabytes = self.memory_max_mb if path is None else self.spool_max_mb
        return OutboxOptions(path, int(megabytes * MB), self.outbox_max_age)

    def live_max_age_or_none(self) -> float | None:
        """The age limit of ``bridge/live``, or ``None`` when that topic is off: it is on
        with Home Assistant discovery (whose tag scanner and triggers use it) or when asked."""
        return self.live_max_age if self.ha_discovery or self.live_topic else None

    def local(self) -> LocalOptions | None:
        """The local answers, or ``None`` when neither BRIDGE_LOCAL_REPLY nor
        BRIDGE_LOCAL_ALLOW_FILE asks for them; the allow file is read once here, so that a
        bad one stops the start (later, a bad one keeps the last good list)."""
        reply = None if self.local_reply == "off" else self.local_reply
        allow = self.local_allow_file
        if reply is None and allow is None:
            return None
        lines = []
        if reply is not None and allow is not None:
            lines.append(
                "BRIDGE_LOCAL_REPLY: set together with BRIDGE_LOCAL_ALLOW_FILE; choose one: "
                "the same answer for every read, or the allow file's accept and deny"
            )
        if "Sequence" not in self.commands().allowed_fields:
            lines.append(
                "BRIDGE_COMMAND_FIELDS: must include Sequence for the local answers "
                "(BRIDGE_LOCAL_REPLY / BRIDGE_LOCAL_ALLOW_FILE)"
            )
        if allow is not None and (problem := allow_file_problem(allow)):
            lines.append(f"BRIDGE_LOCAL_ALLOW_FILE: {problem}")
        if lines:
            raise ConfigError(lines)
        when = self.local_when or ("always" if allow is None else "unanswered")
        return LocalOptions(reply, allow, when, self.local_after)

    def _password(self) -> Secret | None:
        problems = self._credential_problems()
        if problems:
            raise ConfigError(problems)
        if self.mqtt_password_file is None:
            if self.mqtt_password is None:
                return None
            return Secret(self.mqtt_password.get_secret_value())
        try:
            text = self.mqtt_password_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                [f"BRIDGE_MQTT_PASSWORD_FILE: cannot read {self.mqtt_password_file}: {exc}"]
            ) from None
        except UnicodeDecodeError:  # its message quotes a byte of the secret: never print it
            raise ConfigError(
                [f"BRIDGE_MQTT_PASSWORD_FILE: {self.mqtt_password_file} is not UTF-8 text"]
            ) from None
        return Secret(text.rstrip("\r\n"))

    def _credential_problems(self) -> list[str]:
        """A password twice, or a password without a user name: MQTT sends a password only
        with a user name (MQTT 5 §3.1.2.9), and paho would drop it without a word."""
        given = [
            variable
            for variable, value in (
                ("BRIDGE_MQTT_PASSWORD", self.mqtt_password),
                ("BRIDGE_MQTT_PASSWORD_FILE", self.mqtt_password_file),
            )
            if value is not None
        ]
        lines = []
        if len(given) == 2:
            lines.append(
                "BRIDGE_MQTT_PASSWORD_FILE: set either it or BRIDGE_MQTT_PASSWORD, not both"
            )
        if given and not self.mqtt_username:
            lines.append(
                f"{given[0]}: set, but BRIDGE_MQTT_USERNAME is not, and MQTT sends a password only "
                f"with a user name: set BRIDGE_MQTT_USERNAME too, or remove {given[0]}"
            )
        return lines

    def check_run(self) -> LocalOptions | None:
        """Raise :class:`ConfigError` listing every problem that stops ``run`` (and ``check``),
        the TLS files included: each is loaded as the connection will load it. Returns the
        local answers' options, so that their allow file is read once at start."""
        lines: list[str] = []
        local = None
        for build in (self.reader, self._tls_context, self.commands):
            try:
                build()
            except ConfigError as exc:
                lines += exc.lines
        try:
            local = self.local()
        except ConfigError as exc:
            lines += exc.lines
        if (self.mqtt_cert_file is None) != (self.mqtt_key_file is None):
            lines.append("BRIDGE_MQTT_CERT_FILE / BRIDGE_MQTT_KEY_FILE: set both or neither")
        if (
            self.mqtt_ca_file or self.mqtt_cert_file or self.mqtt_tls_insecure
        ) and not self.mqtt_tls:
            lines.append("BRIDGE_MQTT_TLS: must be true when a CA, certificate or insecure is set")
        if not self.commands().allowed_fields:
            lines.append("BRIDGE_COMMAND_FIELDS: empty; name at least one command field")
        if lines:
            raise ConfigError(lines)
        return local

    def _tls_context(self) -> None:
        """Build the MQTT options and, with TLS on, their TLS context (then dropped)."""
        options = self.mqtt()
        if options.tls:
            client_context(options)

    def bridge_options(self) -> BridgeOptions:
        """Everything ``run`` needs, checked first by :meth:`check_run` (its ConfigError)."""
        local = self.check_run()
        return BridgeOptions(
            topics=self.topics(),
            identity=self.identity(),
            reader=self.reader(),
            mqtt=self.mqtt(),
            commands=self.commands(),
            outbox=self.outbox(),
            http=self.http(),
            discovery=self.discovery(),
            live_max_age=self.live_max_age_or_none(),
            log_level=self.log_level,
            log_format=self.log_format,
            local=local,
        )


class RunSettings(Settings):
    """The settings of ``run``: the reader host (or, for a fleet, the readers file) is
    required, and reported with the rest."""

    @field_validator("readers_file")
    @classmethod
    def _reader_or_fleet(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        # reader_host is validated first (declared first): absent from info.data if it
        # failed, which is reported already.
        if value is None and "reader_host" in info.data and not info.data["reader_host"]:
            raise ExplainedError(
                "BRIDGE_READER_HOST: required, and not set: the reader's IP address or host "
                "name (or BRIDGE_READERS_FILE, to bridge a fleet of readers)"
            )
        return value


def allow_file_problem(path: Path) -> str | None:
    """Why the allow file at ``path`` cannot be used, or ``None``. Its contents are never
    quoted: it says who may enter."""
    try:
        parse_allow_list(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    except UnicodeDecodeError:
        return f"{path} is not UTF-8 text"
    except AllowListError as exc:
        return f"{path}: {exc}"
    return None


def default_state_dir() -> Path:
    """systemd's $STATE_DIRECTORY, else $XDG_STATE_HOME/springcore-bridge, else ~/.local/state/."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "springcore-bridge"


def load_settings(env_file: str | Path | None = ".env", **overrides: object) -> Settings:
    """Build :class:`Settings`; flags (``overrides``) win over the environment and ``.env``."""
    return _load(Settings, env_file, overrides)


def load_run_settings(env_file: str | Path | None = ".env", **overrides: object) -> Settings:
    """:func:`load_settings` for ``run``: a missing reader host is one of the problems listed."""
    return _load(RunSettings, env_file, overrides)


def _load(
    kind: type[Settings], env_file: str | Path | None, overrides: dict[str, object]
) -> Settings:
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return kind(_env_file=env_file, **given)  # type: ignore[call-arg,arg-type]
    except ValidationError as exc:
        raise ConfigError([describe_error(error) for error in exc.errors()]) from None


def describe_error(error: ErrorDetails, file_keys: Collection[str] = ()) -> str:
    """One line for one of pydantic's errors, naming the variable (or, for a value from a
    fleet's readers file, its key there: ``file_keys``)."""
    name = str(error["loc"][0]) if error["loc"] else "?"
    variable = name if name in file_keys else ENV_PREFIX + name.upper()
    if error["type"] == "missing":  # its "input" is every other setting: never print it
        return f"{variable}: required, and not set"
    message = error["msg"].removeprefix("Value error, ")
    if isinstance(error.get("ctx", {}).get("error"), ExplainedError):
        return message  # the whole line already
    if name in SECRET_FIELDS:
        return f"{variable}: {message}"
    return f"{variable}: {message}, got {error['input']!r}"


class ExplainedError(ValueError):
    """A validator's complete line: variable, value and fix (no ", got ..." appended)."""


def env_names() -> list[str]:
    """Every environment variable the settings read, in declaration order."""
    return [ENV_PREFIX + name.upper() for name in Settings.model_fields]
