"""``run``: the long-running process - one event loop in the main thread bridging a reader
until SIGTERM (``bridge.runner``). What it must do: bridge events, name itself for ``ps``,
keep the secret out of argv and the environment, do it all without a thread per part, stop
cleanly, and report what only starting finds out (a port in use) as a bad setting.
"""

from __future__ import annotations

import json
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


def threads_of(pid: int) -> list[str]:
    """The names of the threads of process ``pid`` (one may end while we look)."""
    names = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except FileNotFoundError:
            continue
    return names


def test_a_port_in_use_at_start_exits_2_naming_the_setting(tmp_path: Path):
    """``run`` reports what only starting finds out as it reports bad settings."""
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
def test_run_bridges_on_one_loop_names_itself_and_stops_on_sigterm(
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
    # A decoy package in the working directory: the console script never loads it.
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
        threads = threads_of(process.pid)
        process.send_signal(signal.SIGTERM)
        status = process.wait(5)
    assert json.loads(delivered.payload) == event
    # ps and pgrep show what runs, not "python3 .../springcore-bridge run".
    assert argv[0] == f"springcore-bridge {device_id}".encode(), argv
    assert comm == "springcore-brid\n"  # the kernel keeps 15 characters of it
    assert found == [str(process.pid)]
    assert password.encode() not in b"\0".join(argv) + environ
    # One event loop for the reader, the broker and the commands: besides the main thread,
    # one executor thread (paho's blocking connect ran there) and the SQLite worker (a
    # checkpoint ran there), both idle now. No paho thread, no thread per part.
    assert len(threads) <= 3, threads
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
        process.send_signal(signal.SIGTERM)
        status = process.wait(5)
    assert isinstance(event.json(), dict)
    assert status == 0, log.read_text()
    assert sub.next(topic=f"{base}/status").json() == OFFLINE
    assert "Traceback" not in log.read_text()
