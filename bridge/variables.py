"""The bridge's settings as variables: each ``BRIDGE_`` name with its default, its type and
its check, read from the environment, a ``.env`` file and flags by pydantic-settings. What
they become for each layer (``bridge.options``) is ``bridge.config``'s job, not this module's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bridge.address import host_problem
from bridge.commands import FIELDS
from bridge.local import When
from bridge.options import LogFormat, LogLevel
from bridge.shard import Shard

ENV_PREFIX = "BRIDGE_"
MB = 1024 * 1024
"""Bytes in the MB of BRIDGE_SPOOL_MAX_MB and BRIDGE_MEMORY_MAX_MB (a mebibyte)."""
SECRET_FIELDS = frozenset({"mqtt_password"})
_TOPIC_LEVEL = re.compile(r"[^/+#\s\x00]+")
DEVICE_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")

Delimiter = Literal["none", "lf", "crlf", "nul"]
DELIMITER_BYTES: dict[str, bytes] = {"none": b"", "lf": b"\n", "crlf": b"\r\n", "nul": b"\x00"}


class ExplainedError(ValueError):
    """A validator's complete line: variable, value and fix (no ", got ..." appended)."""


class Variables(BaseSettings):
    """Every setting of the bridge, as a variable: its name, default, type and check;
    ``config.example.env`` lists them all (a test checks). What the settings make of them
    is :class:`bridge.config.Settings`'s."""

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
