"""``run`` hands checked options to a fresh interpreter (``bridge.runner``) that never loads
pydantic; what it must still do: bridge events, keep the secret out of argv, stop cleanly.

Memory itself is not asserted here (``scripts/bench.py`` measures it); these tests check the
structure that keeps it low: which modules load, and that the exec really happened.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from bridge.simulator import Simulator
from tests.support import (
    bridge_command,
    bridge_env,
    free_port,
    local_env,
    reaped,
    run_fresh,
    start_logged,
)

if TYPE_CHECKING:  # conftest is pytest's to import; only its types are needed here
    from tests.support import Broker, Subscriber

READY = {"State": "online,ready"}
OFFLINE = {"State": "offline"}
HEAVY = ("pydantic", "pydantic_core", "pydantic_settings", "prometheus_client", "argparse")


def test_runner_and_app_import_no_pydantic_no_prometheus_no_cli():
    probe = (
        "import sys, bridge.runner, bridge.app; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} "
        "or m in ('bridge.cli', 'bridge.config', 'bridge.health')))"
    )
    assert run_fresh(probe) == "[]"


# -- the runner on its own -------------------------------------------------------------------


def run_runner(*args: str, pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.runner", *args],
        env=bridge_env(),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        pass_fds=pass_fds,
    )


def test_runner_without_a_descriptor_prints_its_usage_and_exits_2():
    result = run_runner()
    assert result.returncode == 2
    assert result.stderr.startswith("usage: python -m bridge.runner --options-fd FD")


def test_runner_given_garbage_on_its_descriptor_exits_2_without_traceback():
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "wb") as pipe:
        pipe.write(b'{"topics": 1}')
    try:
        result = run_runner("--options-fd", str(read_fd), pass_fds=(read_fd,))
    finally:
        os.close(read_fd)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"springcore-bridge: no options on descriptor {read_fd}: ")
    assert "options: expected the fields" in result.stderr


def test_runner_given_a_closed_descriptor_exits_2():
    result = run_runner("--options-fd", "1000")
    assert result.returncode == 2
    assert "springcore-bridge: no options on descriptor 1000: " in result.stderr
    assert "Traceback" not in result.stderr


# -- run, through the exec -------------------------------------------------------------------


def run_cli(cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        bridge_command("run"),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def fd_targets(pid: int) -> list[str]:
    """What each open descriptor of ``pid`` points to (one may close while we look)."""
    targets = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            targets.append(os.readlink(fd))
        except FileNotFoundError:
            continue
    return targets


def test_settings_too_large_for_the_pipe_exit_2_before_the_exec(tmp_path: Path):
    env = bridge_env(reader_host="127.0.0.1", reader_location="x" * 70_000)
    result = run_cli(tmp_path, env)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("springcore-bridge: settings: their ")
    assert line.endswith(" bytes do not fit a pipe; shorten the longest value")


def test_a_port_in_use_after_the_exec_exits_2_naming_the_setting(tmp_path: Path):
    """The runner reports what only starting finds out as ``run`` reports bad settings."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = bridge_env(
            reader_host="127.0.0.1",
            reader_port=str(free_port()),
            mqtt_host="127.0.0.1",
            mqtt_port=str(free_port()),
            http_port=str(port),
            spool_path="none",
        )
        result = run_cli(tmp_path, env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    problems = [line for line in result.stderr.splitlines() if line.startswith("springcore-")]
    assert len(problems) == 1, result.stderr
    assert problems[0].startswith("springcore-bridge: BRIDGE_HTTP_HOST/BRIDGE_HTTP_PORT: ")
    assert f"127.0.0.1:{port}" in problems[0]


@pytest.mark.integration
def test_run_execs_into_a_runner_without_pydantic_that_bridges_and_stops_on_sigterm(
    broker: Broker,
    simulator: Simulator,
    subscribe: Callable[..., Subscriber],
    device_id: str,
    tmp_path: Path,
):
    password = f"pw-{uuid.uuid4().hex}"
    secret_file = tmp_path / "secret"
    secret_file.write_text(password + "\n")
    base = f"springcard/springcore/{device_id}"
    sub = subscribe(f"{base}/#")
    env = local_env(
        simulator.port,
        broker.port,
        device_id,
        mqtt_username="bridge-user",  # the password is sent only with a user name
        mqtt_password_file=secret_file,
    )
    log = tmp_path / "bridge.log"
    # A decoy package in the working directory: the console script never loads it, nor may
    # the interpreter it execs (``python -m`` would put the working directory first).
    (tmp_path / "bridge").mkdir()
    (tmp_path / "bridge" / "__init__.py").write_text("raise SystemExit('decoy loaded')\n")
    console_script = Path(sys.executable).with_name("springcore-bridge")
    process = start_logged([str(console_script), "run"], tmp_path, env, log)
    with reaped(process):
        sub.wait_for(lambda m: m.topic == f"{base}/status" and m.json() == READY, timeout=15)
        event = simulator.factory.make("nfc")
        simulator.emit(event)
        delivered = sub.next(topic=f"{base}/rdr/evt")
        proc = Path(f"/proc/{process.pid}")
        argv = (proc / "cmdline").read_bytes().split(b"\0")
        comm = (proc / "comm").read_text()
        found = subprocess.run(
            ["pgrep", "-f", f"^springcore-bridge {device_id}$"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        environ = (proc / "environ").read_bytes()
        maps = (proc / "maps").read_text()
        descriptors = fd_targets(process.pid)
        process.send_signal(signal.SIGTERM)
        status = process.wait(5)
    assert json.loads(delivered.payload) == event
    # Same PID, new program: the exec happened (the decoy package in the working directory
    # was not loaded), and pydantic's native code is not mapped.
    assert "pydantic_core" not in maps
    # ps and pgrep show what runs, not "python3 -P -c import sys...".
    assert argv[0] == f"springcore-bridge {device_id}".encode(), argv
    assert comm == "springcore-brid\n"  # the kernel keeps 15 characters of it
    assert found == [str(process.pid)]
    # The options came through the pipe only, and the runner closed it once read.
    assert password.encode() not in b"\0".join(argv) + environ
    assert [target for target in descriptors if target.startswith("pipe:")] == []
    assert status == 0, log.read_text()
    assert sub.next(topic=f"{base}/status").json() == OFFLINE
    assert simulator.wait_no_client(5)
    output = log.read_text()
    assert "Traceback" not in output
    assert password not in output


@pytest.mark.integration
def test_run_simulate_bridges_its_own_reader_in_one_process_and_stops_on_sigterm(
    broker: Broker, subscribe: Callable[..., Subscriber], device_id: str, tmp_path: Path
):
    base = f"springcard/springcore/{device_id}"
    sub = subscribe(f"{base}/#")
    env = bridge_env(mqtt_host="127.0.0.1", mqtt_port=str(broker.port))
    log = tmp_path / "demo.log"
    command = bridge_command("run", "--simulate", "--device-id", device_id)
    process = start_logged(command, tmp_path, env, log)
    with reaped(process):
        sub.wait_for(lambda m: m.topic == f"{base}/status" and m.json() == READY, timeout=15)
        event = sub.next(topic=f"{base}/rdr/evt", timeout=10)  # the demo reads every 3 s
        argv = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        process.send_signal(signal.SIGTERM)
        status = process.wait(5)
    assert isinstance(event.json(), dict)
    assert b"bridge.runner" not in argv  # the demo keeps its simulator: no exec
    assert status == 0, log.read_text()
    assert sub.next(topic=f"{base}/status").json() == OFFLINE
    assert "Traceback" not in log.read_text()
