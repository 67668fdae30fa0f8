"""The options handed to the bridge: their values and types, the secret, the Bridge's inputs.

No broker here: options are built from settings in-process with ``env_file=None`` and an
environment cleared of BRIDGE_ variables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge.app import Bridge
from bridge.config import ConfigError, load_settings
from bridge.options import BridgeOptions, Secret
from tests.pki import Certs

SECRET = 's3cret-\u00e9"\\-pass'  # JSON escapes: a quote, a backslash, non-ASCII


pytestmark = pytest.mark.usefixtures("clean_env")  # conftest: no BRIDGE_* variable, no .env


def options(**values: Any) -> BridgeOptions:
    return load_settings(env_file=None, **{"reader_host": "10.0.0.9", **values}).bridge_options()


@pytest.fixture
def tls_files(certs: Certs) -> dict[str, str]:
    """Real PEM files: the settings check loads them as the connection will."""
    cert, key = certs.pair("client")
    return {"mqtt_ca_file": str(certs.ca), "mqtt_cert_file": str(cert), "mqtt_key_file": str(key)}


# -- values and types ------------------------------------------------------------------------


def test_settings_become_options_of_the_right_types(tls_files: dict[str, str]):
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
    assert given.mqtt.password is not None
    assert given.mqtt.password.get_secret_value() == SECRET
    assert (given.mqtt.protocol, given.mqtt.qos) == ("3.1.1", 2)
    assert isinstance(given.commands.allowed_fields, frozenset)
    assert given.commands.allowed_fields == {"Sequence", "Leds"}
    assert given.commands.delimiter == b"\r\n"
    assert given.outbox.spool_path == Path("relative/spool.db")
    assert isinstance(given.mqtt.ca_file, Path)
    assert type(given.commands.gap) is float
    assert given.outbox.max_age == 1.5
    assert given.http is not None
    assert given.http.port == 9100
    assert given.discovery is not None
    assert given.discovery.topics == given.topics
    assert given.topics.base == "site/one/10-0-0-9"
    assert (given.log_level, given.log_format) == ("DEBUG", "json")


@pytest.mark.parametrize(
    ("name", "delimiter"), [("none", b""), ("lf", b"\n"), ("crlf", b"\r\n"), ("nul", b"\x00")]
)
def test_command_delimiter_names_become_bytes(name: str, delimiter: bytes):
    assert options(command_delimiter=name).commands.delimiter == delimiter


def test_unset_settings_are_none_options():
    given = options(spool_path="none", ha_discovery=False)
    assert given.http is None  # BRIDGE_HTTP_PORT not set
    assert given.discovery is None
    assert given.live_max_age is None  # no discovery, no BRIDGE_LIVE_TOPIC: no bridge/live
    assert given.outbox.spool_path is None
    assert given.mqtt.password is None
    assert given.mqtt.username is None
    assert given.identity.serial_number is None


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
