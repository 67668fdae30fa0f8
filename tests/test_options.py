"""The options handed to the bridge: their JSON round trip, the secret, and the Bridge's two inputs.

No broker here: options are built from settings in-process with ``env_file=None`` and an
environment cleared of BRIDGE_ variables.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bridge.app import Bridge
from bridge.config import ConfigError, load_settings
from bridge.options import BridgeOptions, OptionsError, Secret
from tests.pki import Certs

SECRET = 's3cret-\u00e9"\\-pass'  # JSON escapes: a quote, a backslash, non-ASCII


pytestmark = pytest.mark.usefixtures("clean_env")  # conftest: no BRIDGE_* variable, no .env


def options(**values: Any) -> BridgeOptions:
    return load_settings(env_file=None, **{"reader_host": "10.0.0.9", **values}).bridge_options()


def round_trip(given: BridgeOptions) -> BridgeOptions:
    return BridgeOptions.from_json(given.to_json())


@pytest.fixture
def tls_files(certs: Certs) -> dict[str, str]:
    """Real PEM files: the settings check loads them as the connection will."""
    cert, key = certs.pair("client")
    return {"mqtt_ca_file": str(certs.ca), "mqtt_cert_file": str(cert), "mqtt_key_file": str(key)}


# -- JSON round trip ---------------------------------------------------------------------------


def test_round_trip_keeps_every_value_and_type(tls_files: dict[str, str]):
    given = options(
        mqtt_username="bridge",
        mqtt_password=SECRET,
        mqtt_tls=True,
        mqtt_protocol="3.1.1",
        mqtt_qos="2",
        **tls_files,
        spool_path="relative/spool.db",
        command_delimiter="crlf",
        command_fields="Sequence,Leds",
        command_gap="0",
        outbox_max_age="1.5",
        http_port="9100",
        reader_serial="SN-1",
        reader_location="Door \u00e9 4",
        topic_prefix="site/one",
        ha_discovery_prefix="ha",
        log_level="debug",
        log_format="json",
    )
    back = round_trip(given)
    assert back == given
    assert back.mqtt.password is not None
    assert back.mqtt.password.get_secret_value() == SECRET
    # Equality alone would let a set pass for a frozenset, and 0 for 0.0.
    assert isinstance(back.commands.allowed_fields, frozenset)
    assert back.commands.allowed_fields == {"Sequence", "Leds"}
    assert back.commands.delimiter == b"\r\n"
    assert back.outbox.spool_path == Path("relative/spool.db")
    assert isinstance(back.mqtt.ca_file, Path)
    assert type(back.commands.gap) is float
    assert back.discovery is not None
    assert back.discovery.topics == back.topics
    assert (back.log_level, back.log_format) == ("DEBUG", "json")


@pytest.mark.parametrize(
    ("name", "delimiter"), [("none", b""), ("lf", b"\n"), ("crlf", b"\r\n"), ("nul", b"\x00")]
)
def test_round_trip_keeps_the_command_delimiter_bytes(name: str, delimiter: bytes):
    back = round_trip(options(command_delimiter=name))
    assert back.commands.delimiter == delimiter


def test_round_trip_keeps_none_values():
    given = options(spool_path="none", ha_discovery=False)
    assert given.http is None  # BRIDGE_HTTP_PORT not set
    assert given.discovery is None
    assert given.outbox.spool_path is None
    assert given.mqtt.password is None
    assert given.mqtt.username is None
    assert given.identity.serial_number is None
    assert round_trip(given) == given


def test_json_fits_a_pipe_with_room_to_spare():
    # exec_runner writes it all into a pipe (64 KiB) before the exec, without a reader yet.
    assert len(options(mqtt_username="u", mqtt_password=SECRET).to_json()) < 4096


def test_from_json_names_the_bad_field():
    document = json.loads(options().to_json())
    document["mqtt"]["port"] = "1883"
    with pytest.raises(OptionsError, match=r"options\.mqtt\.port: expected int, got '1883'"):
        BridgeOptions.from_json(json.dumps(document).encode())


def test_from_json_refuses_a_missing_or_unknown_field():
    document = json.loads(options().to_json())
    del document["reader"]["keepalive"]
    document["reader"]["keep_alive"] = 30.0
    with pytest.raises(OptionsError, match=r"options\.reader: expected the fields"):
        BridgeOptions.from_json(json.dumps(document).encode())


def test_from_json_refuses_a_value_outside_a_literal():
    document = json.loads(options().to_json())
    document["mqtt"]["qos"] = 3
    with pytest.raises(OptionsError, match=r"options\.mqtt\.qos"):
        BridgeOptions.from_json(json.dumps(document).encode())


def test_from_json_refuses_a_boolean_for_a_number():
    document = json.loads(options().to_json())
    document["reader"]["port"] = True
    with pytest.raises(OptionsError, match=r"options\.reader\.port: expected int"):
        BridgeOptions.from_json(json.dumps(document).encode())


def test_from_json_refuses_what_is_not_json():
    with pytest.raises(OptionsError, match="not JSON"):
        BridgeOptions.from_json(b"\xff{")


def test_from_json_error_never_shows_a_mistyped_password():
    document = json.loads(options(mqtt_username="u", mqtt_password=SECRET).to_json())
    document["mqtt"]["password"] = [SECRET]
    with pytest.raises(OptionsError) as caught:
        BridgeOptions.from_json(json.dumps(document).encode())
    assert "options.mqtt.password" in str(caught.value)
    assert SECRET not in str(caught.value)


# -- the secret ----------------------------------------------------------------------------------


def test_secret_not_in_repr_or_str_of_the_options():
    given = options(mqtt_username="u", mqtt_password=SECRET)
    assert given.mqtt.password is not None
    texts = [repr(given), str(given), repr(given.mqtt), str(given.mqtt)]
    texts += [repr(given.mqtt.password), str(given.mqtt.password), f"{given.mqtt.password}"]
    assert [text for text in texts if SECRET in text] == []
    assert "**********" in repr(given.mqtt)


def test_secret_from_a_password_file_not_in_repr(tmp_path: Path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    given = options(mqtt_username="u", mqtt_password_file=str(secret_file))
    assert given.mqtt.password == Secret(SECRET)
    assert SECRET not in repr(given)


def test_secret_compares_by_value_and_an_empty_one_is_falsy():
    # mqtt.py sends no password for a falsy one, as it did with pydantic's SecretStr.
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"
    assert not Secret("")
    assert Secret("a")


# -- what Bridge takes ---------------------------------------------------------------------------


def test_bridge_checks_settings_it_is_given():
    settings = load_settings(env_file=None, command_fields=",")
    with pytest.raises(ConfigError) as caught:
        Bridge(settings)
    assert sorted(line.split(":")[0] for line in caught.value.lines) == [
        "BRIDGE_COMMAND_FIELDS",
        "BRIDGE_READER_HOST",
    ]


def test_bridge_options_are_checked_like_run():
    with pytest.raises(ConfigError) as caught:
        options(mqtt_tls_insecure=True)
    assert caught.value.lines == [
        "BRIDGE_MQTT_TLS: must be true when a CA, certificate or insecure is set"
    ]
