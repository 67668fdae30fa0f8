"""Settings (README, Configuration): the example file, secrets, derived values, validation,
structure.

No broker here: settings are built in-process with ``_env_file=None`` / ``env_file=None`` and an
environment cleared of BRIDGE_ variables.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from bridge.commands import FIELDS
from bridge.config import (
    ConfigError,
    Secret,
    Settings,
    env_names,
    load_run_settings,
    load_settings,
)
from bridge.environment import env_file_to_read, unknown_variables
from tests.support import run_fresh

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.env"
_ASSIGNMENT = re.compile(r"(BRIDGE_[A-Z0-9_]+)=(.*)")


pytestmark = pytest.mark.usefixtures("clean_env")  # conftest: no BRIDGE_* variable, no .env


def settings(**values: Any) -> Settings:
    return load_settings(env_file=None, **values)


def problems(**values: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        settings(**values).check_run()
    return caught.value.lines


# -- config.example.env --------------------------------------------------------------------


def example_lines() -> list[str]:
    return EXAMPLE.read_text(encoding="utf-8").splitlines()


def example_assignments() -> list[tuple[str, str]]:
    found = [_ASSIGNMENT.fullmatch(line) for line in example_lines()]
    return [(match[1], match[2]) for match in found if match]


def test_example_lists_every_setting_once():
    names = [name for name, _ in example_assignments()]
    assert len(names) == len(set(names)), "a variable is listed twice"
    assert set(names) == set(env_names())


def test_example_lines_are_comments_blanks_or_assignments():
    strays = [
        line
        for line in example_lines()
        if line.strip() and not line.startswith("#") and not _ASSIGNMENT.fullmatch(line)
    ]
    assert strays == []


@pytest.mark.parametrize(
    ("name", "raw"), [pytest.param(name, raw, id=name) for name, raw in example_assignments()]
)
def test_example_default_is_the_settings_default(name: str, raw: str):
    field = name.removeprefix("BRIDGE_").lower()
    default = Settings.model_fields[field].default
    if raw == "":
        assert default is None, f"{name}= is empty but the default is {default!r}"
        return
    assert default is not None, f"{name}={raw} but the default is None (not set)"
    parsed = getattr(settings(**{field: raw}), field)
    assert parsed == default


def test_example_file_loads_to_the_defaults():
    assert Settings(_env_file=EXAMPLE) == Settings(_env_file=None)  # type: ignore[call-arg]


def test_every_example_variable_has_a_comment_above_it():
    """Variables may share one comment when they sit right under it as a group."""
    lines = example_lines()
    uncommented = []
    for number, line in enumerate(lines):
        if not _ASSIGNMENT.fullmatch(line):
            continue
        above = number - 1
        while above >= 0 and _ASSIGNMENT.fullmatch(lines[above]):
            above -= 1
        comment = lines[above] if above >= 0 else ""
        if not comment.startswith("# ") or comment.startswith("# ---"):
            uncommented.append(line)
    assert uncommented == []


# -- secrets --------------------------------------------------------------------------------

SECRET = "hunter2-c0rrect-h0rse"


def test_password_not_in_repr_or_str_of_settings_or_mqtt_options():
    configured = settings(reader_host="10.0.0.1", mqtt_username="u", mqtt_password=SECRET)
    options = configured.mqtt()
    assert options.password is not None
    assert options.password.get_secret_value() == SECRET  # really configured
    for text in (repr(configured), str(configured), repr(options), str(options)):
        assert SECRET not in text


def test_password_not_in_config_error_lines(tmp_path: Path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    lines = problems(
        reader_host="10.0.0.1",
        reader_port=0,
        mqtt_password=SECRET,
        mqtt_password_file=str(secret_file),
    )
    assert lines
    assert not [line for line in lines if SECRET in line]


def test_mistyped_password_not_echoed():
    with pytest.raises(ConfigError) as caught:
        settings(mqtt_password=["not", SECRET])
    assert any("BRIDGE_MQTT_PASSWORD" in line for line in caught.value.lines)
    assert not [line for line in caught.value.lines if SECRET in line]


@pytest.mark.parametrize("ending", ["\n", "\r\n", ""])
def test_password_file_read_without_trailing_newline(tmp_path: Path, ending: str):
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + ending, newline="")
    password = settings(mqtt_username="u", mqtt_password_file=str(secret_file)).mqtt().password
    assert isinstance(password, Secret)
    assert password.get_secret_value() == SECRET


def test_password_and_password_file_together_refused(tmp_path: Path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    lines = problems(
        reader_host="10.0.0.1",
        mqtt_username="u",  # without it, that is a second problem (below)
        mqtt_password=SECRET,
        mqtt_password_file=str(secret_file),
    )
    assert len(lines) == 1
    assert SECRET not in lines[0]
    assert "BRIDGE_MQTT_PASSWORD_FILE" in lines[0]
    assert "BRIDGE_MQTT_PASSWORD" in lines[0].replace("BRIDGE_MQTT_PASSWORD_FILE", "")


@pytest.mark.parametrize("source", ["password", "password-file"])
def test_password_without_user_name_refused(tmp_path: Path, source: str):
    """MQTT sends a password only with a user name: paho would drop it without a word."""
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    given = (
        {"mqtt_password": SECRET} if source == "password" else {"mqtt_password_file": secret_file}
    )
    (line,) = problems(reader_host="10.0.0.1", **given)
    variable = "BRIDGE_MQTT_PASSWORD_FILE" if source == "password-file" else "BRIDGE_MQTT_PASSWORD"
    assert line.startswith(f"{variable}:")
    assert "BRIDGE_MQTT_USERNAME" in line
    assert SECRET not in line
    assert settings(reader_host="10.0.0.1", mqtt_username="u", **given).mqtt().username == "u"


def test_missing_password_file_refused(tmp_path: Path):
    with pytest.raises(ConfigError) as caught:
        settings(mqtt_password_file=str(tmp_path / "absent"))
    assert len(caught.value.lines) == 1
    assert caught.value.lines[0].startswith("BRIDGE_MQTT_PASSWORD_FILE")


# -- derived values ------------------------------------------------------------------------


def test_device_id_derived_from_reader_ip():
    configured = settings(reader_host="192.168.1.50")
    assert configured.resolved_device_id() == "192-168-1-50"
    assert configured.topics().event == "springcard/springcore/192-168-1-50/rdr/evt"


@pytest.mark.parametrize(
    "host", ["reader.example.com", "fe80::1%eth0", "2001:db8::7", "door#1", "a/b+c", "-x-"]
)
def test_device_id_derived_from_any_host_is_one_safe_topic_level(host: str):
    device_id = settings(reader_host=host).resolved_device_id()
    assert re.fullmatch(r"[A-Za-z0-9_-]+", device_id), device_id


HOST_SETTINGS = [
    pytest.param("reader_host", "BRIDGE_READER_PORT", id="reader"),
    pytest.param("mqtt_host", "BRIDGE_MQTT_PORT", id="mqtt"),
    pytest.param("http_host", "BRIDGE_HTTP_PORT", id="http"),
]


@pytest.mark.parametrize(("field", "port_variable"), HOST_SETTINGS)
@pytest.mark.parametrize(
    ("value", "host", "port"),
    [
        pytest.param("tcp://10.0.0.5:4000", "10.0.0.5", "4000", id="tcp-url"),
        pytest.param("mqtt://broker.local:1883", "broker.local", "1883", id="mqtt-url"),
        pytest.param("mqtts://broker.local", "broker.local", None, id="url-without-port"),
        pytest.param("10.0.0.5:4000", "10.0.0.5", "4000", id="host-port"),
        pytest.param("reader.local:4000", "reader.local", "4000", id="name-port"),
        pytest.param("[::1]:4000", "::1", "4000", id="bracketed-v6-port"),
        pytest.param("[fe80::1]", "fe80::1", None, id="bracketed-v6"),
    ],
)
def test_host_with_a_port_or_as_a_url_says_what_to_write(
    field: str, port_variable: str, value: str, host: str, port: str | None
):
    variable = "BRIDGE_" + field.upper()
    with pytest.raises(ConfigError) as caught:
        settings(**{field: value})
    (line,) = caught.value.lines
    assert line.startswith(f"{variable}: ")
    assert repr(value) in line
    if port is None:
        assert line.endswith(f"write {variable}={host}")
    else:
        assert line.endswith(f"write {variable}={host} and {port_variable}={port}")


@pytest.mark.parametrize(("field", "port_variable"), HOST_SETTINGS)
@pytest.mark.parametrize("value", ["::1", "fe80::1", "fe80::1%eth0", "10.0.0.5", "reader-4.lan"])
def test_bare_hosts_and_ipv6_literals_accepted(field: str, port_variable: str, value: str):
    assert getattr(settings(**{field: value}), field) == value


def test_url_with_credentials_never_echoes_them():
    with pytest.raises(ConfigError) as caught:
        settings(mqtt_host=f"mqtt://bridge:{SECRET}@broker.local:1883")
    (line,) = caught.value.lines
    assert SECRET not in line
    assert "write BRIDGE_MQTT_HOST=broker.local and BRIDGE_MQTT_PORT=1883" in line
    assert "BRIDGE_MQTT_USERNAME" in line


def test_run_settings_check_the_reader_host_too():
    with pytest.raises(ConfigError) as caught:
        load_run_settings(env_file=None, reader_host="10.0.0.5:4000")
    (line,) = caught.value.lines
    assert line.startswith("BRIDGE_READER_HOST: ")


def test_configured_device_id_wins():
    assert settings(reader_host="10.0.0.1", device_id="door-4").resolved_device_id() == "door-4"


@pytest.mark.parametrize("prefix", ["a/+/b", "a/#", "site one/readers", "+", "#"])
def test_topic_prefix_with_wildcards_or_spaces_refused(prefix: str):
    with pytest.raises(ConfigError) as caught:
        settings(topic_prefix=prefix)
    assert len(caught.value.lines) == 1
    assert caught.value.lines[0].startswith("BRIDGE_TOPIC_PREFIX")


def test_multi_level_topic_prefix_accepted():
    configured = settings(reader_host="10.0.0.1", topic_prefix="site1/building-2/readers")
    assert configured.topics().status == "site1/building-2/readers/10-0-0-1/status"


@pytest.mark.parametrize("device_id", ["a/b", "+", "#", "door 4", "x#"])
def test_device_id_with_wildcards_slash_or_spaces_refused(device_id: str):
    with pytest.raises(ConfigError) as caught:
        settings(device_id=device_id)
    assert len(caught.value.lines) == 1
    assert caught.value.lines[0].startswith("BRIDGE_DEVICE_ID")


def test_default_client_id_is_stable_and_per_device():
    first = settings(reader_host="10.0.0.7").mqtt().client_id
    assert first == settings(reader_host="10.0.0.7").mqtt().client_id
    assert "10-0-0-7" in first
    assert first != settings(reader_host="10.0.0.8").mqtt().client_id
    assert settings(device_id="door-4").mqtt().client_id != first
    assert settings(mqtt_client_id="mine").mqtt().client_id == "mine"


def test_mqtt_port_defaults_to_1883_or_8883_with_tls():
    assert settings().mqtt().port == 1883
    assert settings(mqtt_tls=True).mqtt().port == 8883
    assert settings(mqtt_tls=True, mqtt_port=9883).mqtt().port == 9883
    assert settings(mqtt_port=1884).mqtt().port == 1884


def test_command_fields_normalised_to_reader_spelling():
    configured = settings(command_fields=" sequence, LEDS ,buzzer,")
    assert configured.command_fields == "Sequence,Leds,Buzzer"
    assert configured.commands().allowed_fields == {"Sequence", "Leds", "Buzzer"}


def test_default_command_fields_are_all_fields():
    assert settings().commands().allowed_fields == set(FIELDS)


def test_unknown_command_field_refused():
    with pytest.raises(ConfigError) as caught:
        settings(command_fields="Sequence,Door")
    assert len(caught.value.lines) == 1
    assert caught.value.lines[0].startswith("BRIDGE_COMMAND_FIELDS")
    assert "Door" in caught.value.lines[0]


@pytest.mark.parametrize(("given", "level"), [("debug", "DEBUG"), ("Warning", "WARNING")])
def test_log_level_case_insensitive(given: str, level: str):
    assert settings(log_level=given).log_level == level


def test_log_format_case_insensitive():
    assert settings(log_format="JSON").log_format == "json"


def test_unknown_log_level_refused_naming_variable_and_value():
    with pytest.raises(ConfigError) as caught:
        settings(log_level="LOUD")
    assert len(caught.value.lines) == 1
    assert caught.value.lines[0].startswith("BRIDGE_LOG_LEVEL")
    assert "loud" in caught.value.lines[0].lower()


def test_config_error_line_names_variable_value_and_expectation():
    with pytest.raises(ConfigError) as caught:
        settings(reader_port=70000)
    (line,) = caught.value.lines
    assert line.startswith("BRIDGE_READER_PORT")
    assert "70000" in line
    assert "65535" in line


def test_outbox_is_bounded_in_megabytes_on_disk_or_in_memory_never_by_count():
    on_disk = settings(spool_path="/data/spool.db").outbox()
    assert (on_disk.spool_path, on_disk.max_bytes) == (Path("/data/spool.db"), 256 * 1024 * 1024)
    assert settings(spool_max_mb="0.5").outbox().max_bytes == 512 * 1024
    in_memory = settings(spool_path="none", memory_max_mb="8").outbox()
    assert (in_memory.spool_path, in_memory.max_bytes) == (None, 8 * 1024 * 1024)
    assert in_memory.max_age == 7 * 86400
    assert problems(spool_max_mb="0") == [
        "BRIDGE_SPOOL_MAX_MB: Input should be greater than 0, got '0'"
    ]


@pytest.mark.parametrize(
    ("values", "live"),
    [
        ({}, 3.0),  # Home Assistant discovery (on by default) reads bridge/live
        ({"ha_discovery": "false"}, None),
        ({"ha_discovery": "false", "live_topic": "true", "live_max_age": "1.5"}, 1.5),
    ],
)
def test_bridge_live_is_on_with_discovery_or_when_asked(values: dict[str, str], live: object):
    assert settings(**values).live_max_age_or_none() == live


def test_every_setting_has_a_one_line_description():
    missing = [name for name, info in Settings.model_fields.items() if not info.description]
    assert missing == []
    multi_line = [
        name for name, info in Settings.model_fields.items() if "\n" in str(info.description)
    ]
    assert multi_line == []


# -- unknown variables ----------------------------------------------------------------------


def test_unknown_names_in_environment_and_file_get_a_hint_each(tmp_path: Path):
    env_file = tmp_path / "bridge.env"
    env_file.write_text("BRIDGE_OUTBOX_SIZE=10\nBRIDGE_READER_PORT=4000\nOTHER=1\n")
    environ = {
        "BRIDGE_READER_KEEPALIVEE": "10",
        "bridge_reader_host": "10.0.0.1",  # pydantic-settings reads names in any case
        "BRIDGE_ZZZZZZZZZZZZ": "1",
        "PATH": "/bin",
    }
    lines = unknown_variables(environ, env_file)
    assert len(lines) == 3, lines
    keepalive, zzz, outbox = lines
    assert keepalive.startswith("BRIDGE_READER_KEEPALIVEE (in the environment)")
    assert keepalive.endswith("did you mean BRIDGE_READER_KEEPALIVE?")
    assert zzz.startswith("BRIDGE_ZZZZZZZZZZZZ (in the environment) is ignored")
    assert "did you mean" not in zzz
    assert outbox.startswith(f"BRIDGE_OUTBOX_SIZE (in {env_file})")
    assert "BRIDGE_SPOOL_MAX_MB" in outbox


def test_no_warning_when_every_name_is_a_setting():
    assert unknown_variables(dict.fromkeys(env_names(), "x"), None) == []


def test_explicit_env_file_must_exist_the_default_need_not(clean_env: Path):
    assert env_file_to_read(None) is None
    (clean_env / ".env").write_text("BRIDGE_READER_PORT=4000\n")
    assert env_file_to_read(None) == Path(".env")
    assert env_file_to_read(".env") == Path(".env")  # named explicitly, and there
    with pytest.raises(ConfigError) as caught:
        env_file_to_read("missing.env")
    (line,) = caught.value.lines
    assert line.startswith("--env-file: missing.env ")
    with pytest.raises(ConfigError):
        env_file_to_read(str(clean_env))  # a directory


# -- structure ------------------------------------------------------------------------------


def test_pure_modules_import_no_socket_and_no_paho():
    probe = (
        "import sys, bridge.protocol, bridge.commands; "
        "print(sorted(m for m in sys.modules if m == 'socket' or m.split('.')[0] == 'paho'))"
    )
    assert run_fresh(probe) == "[]"


# -- answers at the edge (README, When the broker is down) ----------------------------------


def test_local_answers_default_to_always_with_a_reply_and_unanswered_with_an_allow_file(
    tmp_path: Path,
):
    allowed = tmp_path / "allowed"
    allowed.write_text("04A1\n")
    assert settings(reader_host="r").local() is None
    reply = settings(reader_host="r", local_reply="ACCEPT").local()
    assert reply is not None
    assert (reply.reply, reply.when, reply.after) == ("accept", "always", 1.5)
    allow = settings(reader_host="r", local_allow_file=allowed).local()
    assert allow is not None
    assert (allow.reply, allow.allow_file, allow.when) == (None, allowed, "unanswered")


def test_a_local_reply_with_an_allow_file_or_without_sequence_is_a_start_up_error(tmp_path: Path):
    allowed = tmp_path / "allowed"
    allowed.write_text("04A1\n")
    lines = problems(
        reader_host="r", local_reply="deny", local_allow_file=allowed, command_fields="Leds"
    )
    assert lines[0].startswith("BRIDGE_LOCAL_REPLY: set together with BRIDGE_LOCAL_ALLOW_FILE")
    assert lines[1].startswith("BRIDGE_COMMAND_FIELDS: must include Sequence")


def test_a_bad_allow_file_stops_the_start_naming_lines_not_their_contents(tmp_path: Path):
    allowed = tmp_path / "allowed"
    allowed.write_bytes(b"04A1\nmrs-smith\n")
    assert problems(reader_host="r", local_allow_file=allowed) == [
        f"BRIDGE_LOCAL_ALLOW_FILE: {allowed}: line 2: not a tag id (hex digits expected)"
    ]
    allowed.write_bytes(b"04A1\n\xff\n")
    assert problems(reader_host="r", local_allow_file=allowed) == [
        f"BRIDGE_LOCAL_ALLOW_FILE: {allowed} is not UTF-8 text"
    ]
    with pytest.raises(ConfigError) as caught:
        settings(reader_host="r", local_allow_file=tmp_path / "missing")
    assert caught.value.lines[0].startswith("BRIDGE_LOCAL_ALLOW_FILE: must name a readable file")
