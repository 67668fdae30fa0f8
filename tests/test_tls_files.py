"""TLS files that cannot be used stop ``run`` and ``check`` at start: exit 2, one line naming
the variable, no traceback (README, Configuration) - never a crash loop under ``docker --restart``.

The bridge runs as a user runs it, a subprocess. An unreadable file needs a user that cannot
read it: the tests run as root in CI, and root reads a file of mode 000. So, as root, the
bridge is started as ``nobody`` with ``setpriv`` (util-linux, on every Debian), the file lying
in a directory anyone may enter; as another user the mode alone is enough.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.config import ConfigError, load_settings
from bridge.tls import client_context
from tests.pki import Certs, openssl
from tests.support import bridge_command, bridge_env, free_port

NOBODY = 65534
COMMANDS = [pytest.param(("run",), id="run"), pytest.param(("check",), id="check")]


@pytest.fixture
def not_pem(tmp_path: Path) -> Path:
    path = tmp_path / "not-pem.txt"
    path.write_text("this is not a certificate\n")
    return path


@pytest.fixture
def encrypted_key(tmp_path: Path, certs: Certs) -> Path:
    _, key = certs.pair("client")
    path = tmp_path / "encrypted.key"
    openssl("pkey", "-in", key, "-aes256", "-passout", "pass:secret", "-out", path)
    return path


def run_bridge(
    args: tuple[str, ...], cwd: Path, user: list[str] | None = None, **values: str
) -> subprocess.CompletedProcess[str]:
    """The bridge with TLS towards ports where nothing listens: it must stop at the settings."""
    settings = {
        "reader_host": "127.0.0.1",
        "reader_port": str(free_port()),
        "mqtt_host": "127.0.0.1",
        "mqtt_port": str(free_port()),
        "mqtt_tls": "true",
        **values,
    }
    return subprocess.run(
        [*(user or []), *bridge_command(*args)],
        cwd=cwd,
        env=bridge_env(**settings),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        start_new_session=True,  # no controlling terminal: OpenSSL could not prompt on it
    )


def the_line(result: subprocess.CompletedProcess[str], variable: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert variable in lines[0], lines
    return lines[0]


@pytest.mark.parametrize("args", COMMANDS)
def test_ca_file_not_pem_exits_2_naming_it(tmp_path: Path, args, not_pem: Path):
    line = the_line(run_bridge(args, tmp_path, mqtt_ca_file=str(not_pem)), "BRIDGE_MQTT_CA_FILE")
    assert str(not_pem) in line
    assert "PEM" in line


@pytest.mark.parametrize("args", COMMANDS)
def test_cert_file_not_pem_exits_2_naming_it(tmp_path: Path, args, not_pem: Path, certs: Certs):
    _, key = certs.pair("client")
    result = run_bridge(
        args,
        tmp_path,
        mqtt_ca_file=str(certs.ca),
        mqtt_cert_file=str(not_pem),
        mqtt_key_file=str(key),
    )
    line = the_line(result, "BRIDGE_MQTT_CERT_FILE")
    assert str(not_pem) in line
    assert "BRIDGE_MQTT_KEY_FILE" not in line  # the key is fine: the certificate is not


@pytest.mark.parametrize("args", COMMANDS)
def test_key_file_not_pem_exits_2_naming_it(tmp_path: Path, args, not_pem: Path, certs: Certs):
    cert, _ = certs.pair("client")
    result = run_bridge(
        args,
        tmp_path,
        mqtt_ca_file=str(certs.ca),
        mqtt_cert_file=str(cert),
        mqtt_key_file=str(not_pem),
    )
    line = the_line(result, "BRIDGE_MQTT_KEY_FILE")
    assert str(not_pem) in line


@pytest.mark.parametrize("args", COMMANDS)
def test_key_of_another_certificate_exits_2_naming_both(tmp_path: Path, args, certs: Certs):
    cert, _ = certs.pair("client")
    _, other_key = certs.pair("server")
    result = run_bridge(
        args,
        tmp_path,
        mqtt_ca_file=str(certs.ca),
        mqtt_cert_file=str(cert),
        mqtt_key_file=str(other_key),
    )
    line = the_line(result, "BRIDGE_MQTT_KEY_FILE")
    assert str(other_key) in line
    assert "does not match" in line
    assert "BRIDGE_MQTT_CERT_FILE" in line


@pytest.mark.parametrize("args", COMMANDS)
def test_encrypted_key_refused_without_a_prompt(
    tmp_path: Path, args, certs: Certs, encrypted_key: Path
):
    cert, _ = certs.pair("client")
    result = run_bridge(
        args,
        tmp_path,
        mqtt_ca_file=str(certs.ca),
        mqtt_cert_file=str(cert),
        mqtt_key_file=str(encrypted_key),
    )
    line = the_line(result, "BRIDGE_MQTT_KEY_FILE")
    assert "passphrase" in line
    assert "PEM pass phrase" not in result.stdout + result.stderr  # OpenSSL's own prompt


# -- an unreadable file ------------------------------------------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory that ``nobody`` may enter (pytest's own tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="springcore-tls-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def as_unprivileged() -> list[str]:
    """The prefix that runs the bridge as a user who cannot read a file of mode 000."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("setpriv (util-linux) is needed to test an unreadable file as root")
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


@pytest.mark.parametrize("args", COMMANDS)
@pytest.mark.parametrize(
    "variable", ["BRIDGE_MQTT_CA_FILE", "BRIDGE_MQTT_CERT_FILE", "BRIDGE_MQTT_KEY_FILE"]
)
def test_unreadable_file_exits_2_naming_it(shared_dir: Path, args, variable: str, certs: Certs):
    cert, key = certs.pair("client")
    files = {"mqtt_ca_file": certs.ca, "mqtt_cert_file": cert, "mqtt_key_file": key}
    for name, source in files.items():
        copy = shared_dir / source.name
        shutil.copyfile(source, copy)
        copy.chmod(0o644)
        files[name] = copy
    locked = files[variable.removeprefix("BRIDGE_").lower()]
    locked.chmod(0o000)
    result = run_bridge(
        args, shared_dir, as_unprivileged(), **{name: str(path) for name, path in files.items()}
    )
    line = the_line(result, variable)
    assert str(locked) in line
    assert "ermission denied" in line


# -- the context itself, in-process --------------------------------------------------------------


@pytest.mark.usefixtures("clean_env")
def test_context_verifies_the_broker_unless_insecure(certs: Certs):
    secure = client_context(
        load_settings(env_file=None, mqtt_tls=True, mqtt_ca_file=certs.ca).mqtt()
    )
    assert secure.verify_mode == ssl.CERT_REQUIRED
    assert secure.check_hostname
    insecure = client_context(
        load_settings(env_file=None, mqtt_tls=True, mqtt_tls_insecure=True).mqtt()
    )
    assert insecure.verify_mode == ssl.CERT_NONE
    assert not insecure.check_hostname


@pytest.mark.usefixtures("clean_env")
def test_every_bad_file_is_one_line(not_pem: Path):
    configured = load_settings(
        env_file=None,
        reader_host="10.0.0.1",
        mqtt_tls=True,
        mqtt_ca_file=not_pem,
        mqtt_cert_file=not_pem,
        mqtt_key_file=not_pem,
    )
    with pytest.raises(ConfigError) as caught:
        configured.check_run()
    variables = sorted(line.split(":")[0] for line in caught.value.lines)
    assert variables == ["BRIDGE_MQTT_CA_FILE", "BRIDGE_MQTT_CERT_FILE"]  # the key: once its
    # certificate is right
