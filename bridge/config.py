"""Settings from the environment, a ``.env`` file and command-line flags (README, Configuration).

Each layer gets only its own group (:class:`ReaderOptions`, :class:`MqttOptions`, ..., defined
in ``bridge.options`` without pydantic); ``run`` gets them all as one :class:`BridgeOptions`.
A bad value becomes :class:`ConfigError` whose lines each name the variable, the value and
what is expected; secrets are never echoed.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

from pydantic import ValidationError, ValidationInfo, field_validator
from pydantic_core import ErrorDetails

from bridge.discovery import Discovery
from bridge.local import AllowListError, parse_allow_list
from bridge.options import (
    BridgeOptions,
    CommandOptions,
    ConfigError,
    HttpOptions,
    LocalOptions,
    MqttOptions,
    OutboxOptions,
    ReaderOptions,
    Secret,
)
from bridge.tls import client_context
from bridge.topics import Identity, Topics
from bridge.variables import (
    DELIMITER_BYTES,
    DEVICE_ID_UNSAFE,
    ENV_PREFIX,
    MB,
    SECRET_FIELDS,
    ExplainedError,
    Variables,
)

# The option values live in bridge.options, which the runner loads without pydantic, and the
# variables in bridge.variables; they are re-exported here, where callers have always imported
# them from.
__all__ = [
    "DELIMITER_BYTES",
    "ENV_PREFIX",
    "MB",
    "SECRET_FIELDS",
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


class Settings(Variables):
    """Every setting of the bridge, and what each layer gets of them."""

    # -- derived values ---------------------------------------------------------------

    def resolved_device_id(self) -> str:
        if self.device_id:
            return self.device_id
        host = self.reader_host or "reader"
        return DEVICE_ID_UNSAFE.sub("-", host).strip("-") or "reader"

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

    def ignored_settings(self) -> list[str]:
        """Settings given that do nothing here, one line each: a WARNING, not an error,
        because in a fleet the same values are defaults that other readers use."""
        if self.local_when is not None and self.local_reply == "off" and not self.local_allow_file:
            return [
                f"BRIDGE_LOCAL_WHEN={self.local_when}: ignored, as neither BRIDGE_LOCAL_REPLY "
                "nor BRIDGE_LOCAL_ALLOW_FILE is set: the bridge answers no read itself"
            ]
        return []

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


def env_names() -> list[str]:
    """Every environment variable the settings read, in declaration order."""
    return [ENV_PREFIX + name.upper() for name in Settings.model_fields]
