"""``springcore-bridge check`` beyond the links: the spool and the HTTP listener's port.

Real things only: the bridge runs as a subprocess against the test's own Mosquitto and
simulator, a spool is held by a real ``SpoolOutbox`` (as a running bridge holds it), a port
by a real listening socket.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from bridge.simulator import Simulator
from bridge.spool_outbox import SpoolOutbox
from tests.support import bridge_command, bridge_env, free_port

if TYPE_CHECKING:  # conftest is pytest's to import; only its types are needed here
    from tests.support import Broker

pytestmark = [pytest.mark.integration]

Check = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def check(broker: Broker, simulator: Simulator, device_id: str, tmp_path: Path) -> Check:
    """``check`` with a reachable reader and broker, and the settings given on top."""

    def run(**values: str) -> subprocess.CompletedProcess[str]:
        settings = {
            "reader_host": "127.0.0.1",
            "reader_port": str(simulator.port),
            "mqtt_host": "127.0.0.1",
            "mqtt_port": str(broker.port),
            "device_id": device_id,
            **values,
        }
        return subprocess.run(
            bridge_command("check"),
            cwd=tmp_path,
            env=bridge_env(**settings),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    return run


def line_of(result: subprocess.CompletedProcess[str], subject: str) -> str:
    (line,) = [line for line in result.stdout.splitlines() if subject in line]
    return line


def test_everything_usable_exits_0_and_creates_nothing(check: Check, tmp_path: Path):
    spool = tmp_path / "state" / "spool.db"
    port = free_port()
    result = check(spool_path=str(spool), http_port=str(port))
    assert result.returncode == 0, result.stdout + result.stderr
    subjects = [line.split()[1] for line in result.stdout.splitlines()]
    assert subjects == ["reader", "broker", "spool", "http"]
    assert line_of(result, "spool").startswith(f"ok   spool {spool} ")
    assert line_of(result, "http").startswith(f"ok   http 127.0.0.1:{port} ")
    assert not spool.parent.exists()  # check creates nothing


def test_spool_none_is_reported_as_memory_only_and_no_http_line(check: Check):
    result = check(spool_path="none")
    assert result.returncode == 0, result.stdout + result.stderr
    line = line_of(result, "spool")
    assert line.startswith("ok   spool ")
    assert "memory only" in line
    assert "http" not in result.stdout


def test_spool_held_by_a_running_bridge_fails(check: Check, tmp_path: Path):
    spool = tmp_path / "spool.db"
    outbox = SpoolOutbox(spool, 1 << 20, 3600.0)  # holds the lock, as a running bridge does
    try:
        result = check(spool_path=str(spool))
    finally:
        outbox.close()
    assert result.returncode == 1
    line = line_of(result, "spool")
    assert line.startswith(f"FAIL spool {spool}: ")
    assert "in use by a running bridge" in line
    assert "BRIDGE_SPOOL_PATH" in line  # the hint
    assert line_of(result, "reader").startswith("ok ")  # only the spool failed
    assert line_of(result, "broker").startswith("ok ")


def test_spool_under_a_regular_file_fails(check: Check, tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    spool = blocker / "spool.db"
    result = check(spool_path=str(spool))
    assert result.returncode == 1
    line = line_of(result, "spool")
    assert line.startswith(f"FAIL spool {spool}: ")
    assert "not a writable directory" in line
    assert "BRIDGE_SPOOL_PATH" in line


def test_http_port_in_use_fails_with_a_hint(check: Check, tmp_path: Path):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        result = check(spool_path="none", http_port=str(port))
    assert result.returncode == 1
    line = line_of(result, "http")
    assert line.startswith(f"FAIL http 127.0.0.1:{port}: ")
    assert "in use" in line
    assert "a running bridge or another program" in line


def test_http_port_free_again_once_checked(check: Check):
    """The check binds and closes: the port is free for the bridge afterwards."""
    port = free_port()
    assert check(spool_path="none", http_port=str(port)).returncode == 0
    with socket.create_server(("127.0.0.1", port)):
        pass


def test_an_allow_file_is_checked_by_count_and_mode_never_by_content(check: Check, tmp_path: Path):
    allowed = tmp_path / "allowed"
    allowed.write_text("047DAE02C84080\n04A1  # the guard\n")
    allowed.chmod(0o640)
    result = check(spool_path="none", local_allow_file=str(allowed))
    assert result.returncode == 0, result.stdout + result.stderr
    line = line_of(result, "allow file")
    assert line == (
        f"ok   allow file {allowed} 2 tag(s); readable by other users (mode 640): chmod 600 it"
    )
    allowed.chmod(0o600)
    assert line_of(check(spool_path="none", local_allow_file=str(allowed)), "allow file") == (
        f"ok   allow file {allowed} 2 tag(s)"
    )
    assert "047DAE02C84080" not in result.stdout + result.stderr
