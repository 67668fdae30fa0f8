"""The readers file of a fleet (``BRIDGE_READERS_FILE``, README, Fleet): read, checked, and turned
into one :class:`BridgeOptions` per reader.

A reader's setting comes from its own ``[[reader]]`` table, else from ``[defaults]``, else
from the environment / ``.env`` / flags, which also give every shared setting (broker, TLS,
spool, HTTP, logs). Every problem of the file is found before anything starts and reported on
one line that names the reader (its number in the file and its id) and the key; the caller
exits with status 2. No I/O happens here but reading the file.
"""

from __future__ import annotations

import difflib
import functools
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from bridge.config import ENV_PREFIX, Settings, default_state_dir, describe_error
from bridge.options import BridgeOptions, ConfigError, FleetOptions, OutboxOptions
from bridge.shard import Shard

SHARED = frozenset(
    {
        *(f"mqtt_{name}" for name in ("host", "port", "protocol", "keepalive", "qos", "tls")),
        *(f"mqtt_{name}" for name in ("ca_file", "cert_file", "key_file", "tls_insecure")),
        "spool_path",
        "spool_max_mb",
        "memory_max_mb",
        "outbox_max_age",
        "http_port",
        "http_host",
        "log_level",
        "log_format",
        "readers_file",
        "shard",
    }
)
"""Settings shared by every reader of a process: only the environment, ``.env`` and flags
give them (README, Fleet: broker, TLS, spool, HTTP and logs)."""
PER_READER = frozenset(Settings.model_fields) - SHARED
"""The keys a ``[[reader]]`` or ``[defaults]`` table may hold: each setting's variable name
without ``BRIDGE_``, in lower case."""
FLEET_SPOOL = "spool-fleet.db"
"""The shared spool's file name in the state directory when BRIDGE_SPOOL_PATH is not set."""


@dataclass(frozen=True)
class Reader:
    """One reader of the file: its place in it, and its checked options."""

    number: int  # 1 for the first [[reader]] table
    options: BridgeOptions

    @property
    def device_id(self) -> str:
        return self.options.topics.device_id


def fleet_options(base: Settings) -> FleetOptions:
    """The fleet of ``base.readers_file`` that this process serves (its shard), or
    :class:`ConfigError` listing every problem of the file."""
    assert base.readers_file is not None, "only for a fleet"
    readers = load_fleet(base)
    return FleetOptions(
        readers=tuple(reader.options for reader in in_shard(readers, base.shard)),
        outbox=shared_outbox(base),
        http=base.http(),
        log_level=base.log_level,
        log_format=base.log_format,
        source=base.readers_file,
        shard=base.shard,
    )


def shared_outbox(base: Settings) -> OutboxOptions:
    """The fleet's one spool (FLEET_SPOOL in the state directory unless BRIDGE_SPOOL_PATH
    says otherwise) and its byte bound, which every reader shares."""
    outbox = base.outbox()
    if base.spool_path is None:
        return outbox.for_fleet(default_state_dir() / FLEET_SPOOL)
    return outbox.for_fleet(outbox.spool_path)


def load_fleet(base: Settings) -> list[Reader]:
    """Every reader of ``base.readers_file`` (all of them, whatever the shard: every replica
    checks the whole file), or :class:`ConfigError` listing every problem."""
    assert base.readers_file is not None, "only for a fleet"
    lines = _shared_problems(base)
    document = _read(base.readers_file)
    defaults, tables = _tables(document, lines)
    outbox = shared_outbox(base)
    readers: list[Reader] = []
    for number, table in enumerate(tables, 1):
        reader = _reader(base, outbox, number=number, defaults=defaults, table=table, lines=lines)
        if reader is not None:
            readers.append(reader)
    lines += _duplicates(readers)
    if not tables and not lines:
        lines.append(f"BRIDGE_READERS_FILE: {base.readers_file} lists no [[reader]] table")
    if lines:
        raise ConfigError(lines)
    return readers


def in_shard(readers: Iterable[Reader], shard: str | None) -> list[Reader]:
    """The readers that this process serves under BRIDGE_SHARD (all without one)."""
    if shard is None:
        return list(readers)
    chosen = Shard.parse(shard)
    return [reader for reader in readers if chosen.holds(reader.device_id)]


def _shared_problems(base: Settings) -> list[str]:
    if base.reader_host is not None:
        return [
            "BRIDGE_READER_HOST: set together with BRIDGE_READERS_FILE; give each reader's "
            "reader_host in the file and remove BRIDGE_READER_HOST"
        ]
    return []


def _read(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigError([f"BRIDGE_READERS_FILE: cannot read {path}: {exc.strerror}"]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"BRIDGE_READERS_FILE: {path} is not valid TOML: {exc}"]) from None


def _tables(
    document: Mapping[str, object], lines: list[str]
) -> tuple[dict[str, object], list[dict[str, object]]]:
    """The ``[defaults]`` table and the ``[[reader]]`` tables; problems added to ``lines``."""
    for key in document:
        if key not in ("defaults", "reader"):
            lines.append(
                f"BRIDGE_READERS_FILE: unknown table or key {key!r} at the top level; "
                "expected [defaults] and [[reader]] tables"
            )
    defaults = document.get("defaults", {})
    if not isinstance(defaults, dict):
        lines.append("BRIDGE_READERS_FILE: defaults must be a table: [defaults]")
        defaults = {}
    lines += [f"[defaults]: {problem}" for problem in _key_problems(defaults)]
    tables = document.get("reader", [])
    if not isinstance(tables, list) or not all(isinstance(table, dict) for table in tables):
        lines.append("BRIDGE_READERS_FILE: each reader must be a [[reader]] table")
        tables = []
    return defaults, tables


def _key_problems(table: Mapping[str, object]) -> list[str]:
    problems = []
    for key in table:
        if key in PER_READER:
            continue
        if key in SHARED:
            why = f"is shared by every reader: set {ENV_PREFIX}{key.upper()} in the environment"
        else:
            nearest = difflib.get_close_matches(key, sorted(PER_READER), n=1)
            why = "unknown key" + (f"; did you mean {nearest[0]}?" if nearest else "")
        problems.append(f"{key}: {why}")
    return problems


def _reader(
    base: Settings,
    outbox: OutboxOptions,
    *,
    number: int,
    defaults: Mapping[str, object],
    table: Mapping[str, object],
    lines: list[str],
) -> Reader | None:
    name = _name(number, table)
    lines += [f"{name}: {problem}" for problem in _key_problems(table)]
    if "reader_host" not in table and "reader_host" not in defaults:
        lines.append(f"{name}: reader_host: required, and not set")
        return None
    given = {
        key: _value(value) for key, value in {**defaults, **table}.items() if key in PER_READER
    }
    try:
        settings = _values_only(type(base))(**{**base.model_dump(), **given})
        return Reader(number, settings.bridge_options().with_outbox(outbox))
    except ValidationError as exc:
        lines += [f"{name}: {describe_error(error, given)}" for error in exc.errors()]
    except ConfigError as exc:
        lines += [f"{name}: {_in_file_terms(line, given)}" for line in exc.lines]
    return None


@functools.cache
def _values_only(kind: type[Settings]) -> type[Settings]:
    """``kind`` validating the values it is given and reading nothing else: the environment
    and ``.env`` are in the base settings already, and reading them again for each of a
    thousand readers took 9 of the 10 s a file of a thousand readers took to load."""

    class ValuesOnly(kind):  # type: ignore[valid-type,misc]
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            **sources: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings,)

    return ValuesOnly


def _name(number: int, table: Mapping[str, object]) -> str:
    device = table.get("device_id") or table.get("reader_host")
    return f"[[reader]] #{number}" + (f" ({device})" if isinstance(device, str) else "")


def _value(value: object) -> object:
    """A TOML array becomes the comma-separated list the environment would give."""
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return value


def _in_file_terms(line: str, given: Mapping[str, object]) -> str:
    """``BRIDGE_X: ...`` about a key of the file becomes ``x: ...``."""
    variable, _, rest = line.partition(":")
    key = variable.removeprefix(ENV_PREFIX).lower()
    return f"{key}:{rest}" if key in given else line


def _duplicates(readers: list[Reader]) -> list[str]:
    lines = []
    seen: dict[object, Reader] = {}
    for reader in readers:
        options = reader.options
        for what, key in (
            ("device_id", options.topics.device_id),
            ("reader_host", (options.reader.host, options.reader.port)),
            ("mqtt_client_id", options.mqtt.client_id),
        ):
            first = seen.setdefault((what, key), reader)
            if first is not reader:
                lines.append(
                    f"[[reader]] #{reader.number} ({reader.device_id}): {what}: the same as "
                    f"[[reader]] #{first.number}'s ({_shown(key)}); each reader needs its own"
                )
                break  # the client id derives from the device id: one line says it
    return lines


def _shown(key: object) -> str:
    if isinstance(key, tuple):
        return f"{key[0]}:{key[1]}"
    return str(key)
