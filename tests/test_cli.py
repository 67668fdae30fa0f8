"""The ``springcore-bridge`` command line, run as a user runs it: a subprocess.

Every run gets an environment without the caller's BRIDGE_ variables and a temporary working
directory, so no stray ``.env`` is read.
"""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import IO, TYPE_CHECKING

import pytest

from bridge import __version__
from bridge.config import Settings, load_settings
from bridge.simulator import Simulator
from tests.support import REPO, bridge_command, bridge_env, free_port, reaped

if TYPE_CHECKING:  # conftest is pytest's to import; only its types are needed here
    from tests.support import Broker

READY = {"State": "online,ready"}


def run_cli(cwd: Path, *args: str, **values: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        bridge_command(*args),
        cwd=cwd,
        env=bridge_env(**values),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def problem_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# -- version and help --------------------------------------------------------------------


def test_version_prints_version_and_exits_0(tmp_path: Path):
    result = run_cli(tmp_path, "--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"springcore-bridge {__version__}"


def test_help_names_the_subcommands(tmp_path: Path):
    result = run_cli(tmp_path, "--help")
    assert result.returncode == 0
    for word in ("run", "simulate", "--version"):
        assert word in result.stdout


def test_run_help_lists_a_flag_for_every_setting(tmp_path: Path):
    result = run_cli(tmp_path, "run", "--help")
    assert result.returncode == 0
    flags = ["--" + name.replace("_", "-") for name in Settings.model_fields]
    assert [flag for flag in flags if flag not in result.stdout] == []
    assert "--env-file" in result.stdout
    assert "--no-mqtt-tls" in result.stdout  # booleans can be switched off again


def example_defaults() -> dict[str, str]:
    """``BRIDGE_NAME`` -> its default as config.example.env writes it ("" = unset)."""
    lines = (REPO / "config.example.env").read_text(encoding="utf-8").splitlines()
    found = (line.partition("=") for line in lines if line.startswith("BRIDGE_"))
    return {name: value for name, _, value in found}


@pytest.mark.parametrize("command", ["run", "check", "ha-remove", "health"])
def test_help_shows_each_setting_with_its_meaning_and_default(tmp_path: Path, command: str):
    result = subprocess.run(
        bridge_command(command, "--help"),
        cwd=tmp_path,
        env={**bridge_env(), "COLUMNS": "1000"},  # one line per flag: no hyphen wrapped
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    defaults = example_defaults()
    assert set(defaults) == {"BRIDGE_" + name.upper() for name in Settings.model_fields}
    missing = []
    for name, info in Settings.model_fields.items():
        variable = "BRIDGE_" + name.upper()
        if name == "mqtt_password":  # a secret: no value, not even the (empty) default
            shown = f"({variable})"
        else:
            shown = f"(default: {defaults[variable] or 'unset'}; {variable})"
        flag = "--" + name.replace("_", "-")
        if f"{flag}" not in text or f"{info.description} {shown}" not in text:
            missing.append((flag, f"{info.description} {shown}"))
    assert missing == []


def test_simulate_help_lists_its_flags(tmp_path: Path):
    result = run_cli(tmp_path, "simulate", "--help")
    assert result.returncode == 0
    for flag in ("--port", "--host", "--interval", "--profile", "--moves", "--separator"):
        assert flag in result.stdout


# -- bad settings --------------------------------------------------------------------------

VALID = {"reader_host": "127.0.0.1", "mqtt_host": "127.0.0.1"}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param({"reader_port": "0"}, {"BRIDGE_READER_PORT": "0"}, id="reader-port-0"),
        pytest.param({"mqtt_qos": "7"}, {"BRIDGE_MQTT_QOS": "7"}, id="qos-7"),
        pytest.param({"log_level": "LOUD"}, {"BRIDGE_LOG_LEVEL": "loud"}, id="log-level"),
        pytest.param({"reader_host": ""}, {"BRIDGE_READER_HOST": ""}, id="no-reader-host"),
        pytest.param(
            {"reader_port": "0", "mqtt_qos": "7", "log_level": "LOUD", "mqtt_keepalive": "1"},
            {
                "BRIDGE_READER_PORT": "0",
                "BRIDGE_MQTT_QOS": "7",
                "BRIDGE_LOG_LEVEL": "loud",
                "BRIDGE_MQTT_KEEPALIVE": "1",
            },
            id="several",
        ),
    ],
)
def test_bad_setting_exits_2_with_one_line_per_problem(
    tmp_path: Path, changes: dict[str, str], expected: dict[str, str]
):
    settings = {**VALID, "mqtt_port": str(free_port()), **changes}
    result = run_cli(tmp_path, "run", **{k: v for k, v in settings.items() if v})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = problem_lines(result.stderr)
    assert len(lines) == len(expected), lines
    for variable, value in expected.items():
        naming = [line for line in lines if variable in line]
        assert len(naming) == 1, (variable, lines)
        assert value.lower() in naming[0].lower(), (value, naming)


def test_missing_password_file_exits_2_naming_it(tmp_path: Path):
    missing = tmp_path / "no-such-secret"
    result = run_cli(tmp_path, "run", **VALID, mqtt_username="u", mqtt_password_file=str(missing))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = problem_lines(result.stderr)
    assert len(lines) == 1, lines
    assert "BRIDGE_MQTT_PASSWORD_FILE" in lines[0]
    assert str(missing) in lines[0]


def test_missing_reader_host_reported_with_the_other_problems(tmp_path: Path):
    """All problems in one go, not one per attempt (README, Configuration: one line per problem)."""
    result = run_cli(tmp_path, "run", mqtt_host="127.0.0.1", reader_port="0")
    assert result.returncode == 2
    lines = problem_lines(result.stderr)
    assert sorted(line.split(":")[1].strip() for line in lines) == [
        "BRIDGE_READER_HOST",
        "BRIDGE_READER_PORT",
    ], lines


def test_bad_flag_exits_2_naming_the_variable(tmp_path: Path):
    result = run_cli(tmp_path, "run", "--reader-port", "70000", **VALID, reader_port="4000")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = problem_lines(result.stderr)
    assert len(lines) == 1, lines
    assert "BRIDGE_READER_PORT" in lines[0]
    assert "70000" in lines[0]


def test_flag_overrides_a_bad_environment_value(tmp_path: Path):
    # MQTT_QOS stays bad so that the run stops at the settings check either way.
    result = run_cli(
        tmp_path, "run", "--reader-port", "4000", **VALID, reader_port="0", mqtt_qos="7"
    )
    assert result.returncode == 2
    lines = problem_lines(result.stderr)
    assert len(lines) == 1, lines
    assert "BRIDGE_MQTT_QOS" in lines[0]


def test_dotenv_in_working_directory_is_read_and_environment_wins(tmp_path: Path):
    (tmp_path / ".env").write_text("BRIDGE_READER_PORT=0\nBRIDGE_MQTT_KEEPALIVE=1\n")
    result = run_cli(tmp_path, "run", **VALID, mqtt_keepalive="30", mqtt_qos="7")
    assert result.returncode == 2
    lines = problem_lines(result.stderr)
    assert sorted(line.split(":")[1].strip() for line in lines) == [
        "BRIDGE_MQTT_QOS",
        "BRIDGE_READER_PORT",
    ], lines


@pytest.mark.parametrize("command", ["run", "check", "ha-remove"])
def test_missing_env_file_given_explicitly_exits_2(tmp_path: Path, command: str):
    missing = tmp_path / "no-such.env"
    result = run_cli(tmp_path, command, "--env-file", str(missing), **VALID)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = problem_lines(result.stderr)
    assert len(lines) == 1, lines
    assert "--env-file" in lines[0]
    assert str(missing) in lines[0]


def test_missing_env_file_makes_health_exit_1_not_2(tmp_path: Path):
    """Docker reserves exit status 2 of a HEALTHCHECK: health answers 0 or 1 only."""
    missing = tmp_path / "no-such.env"
    result = run_cli(tmp_path, "health", "--env-file", str(missing), http_port=str(free_port()))
    assert result.returncode == 1
    assert "--env-file" in result.stdout
    assert str(missing) in result.stdout
    assert "Traceback" not in result.stderr


def test_missing_default_env_file_is_fine(tmp_path: Path):
    assert not (tmp_path / ".env").exists()
    result = run_cli(tmp_path, "ha-remove", "--help")
    assert result.returncode == 0
    port = free_port()  # nothing listens: check fails on the links, not on the settings
    result = run_cli(tmp_path, "check", **VALID, reader_port=str(port), mqtt_port=str(port))
    assert result.returncode == 1, result.stderr
    assert "--env-file" not in result.stdout + result.stderr


def unknown_env(**extra: str) -> dict[str, str]:
    port = str(free_port())  # nothing listens there
    env = bridge_env(**VALID, reader_port=port, mqtt_port=port)
    env.update(extra)  # bridge_env takes only known settings
    return env


def warnings_naming(stderr: str, variable: str) -> list[str]:
    return [line for line in stderr.splitlines() if variable in line]


def check_with(
    tmp_path: Path, env: dict[str, str], *flags: str
) -> subprocess.CompletedProcess[str]:
    """``check`` in ``tmp_path`` with ``env``: exit 1 when the settings are good (nothing
    listens at the reader's and the broker's port)."""
    return subprocess.run(
        bridge_command("check", *flags),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def warning_of_check(tmp_path: Path, env: dict[str, str], variable: str, *flags: str) -> str:
    """The one line of ``check``'s log naming ``variable``: a WARNING, the settings good."""
    result = check_with(tmp_path, env, *flags)
    assert result.returncode == 1  # the links fail, not the settings
    (line,) = warnings_naming(result.stderr, variable)
    assert "WARNING" in line
    return line


def test_unknown_variable_warned_with_the_nearest_name(tmp_path: Path):
    env = unknown_env(BRIDGE_READER_KEEPALIVEE="10")
    line = warning_of_check(tmp_path, env, "BRIDGE_READER_KEEPALIVEE")
    assert "did you mean BRIDGE_READER_KEEPALIVE?" in line
    assert "environment" in line


def test_local_when_without_a_reply_or_an_allow_file_is_warned_about(tmp_path: Path):
    env = unknown_env(BRIDGE_LOCAL_WHEN="offline")
    assert "answers no read itself" in warning_of_check(tmp_path, env, "BRIDGE_LOCAL_WHEN")
    with_reply = check_with(
        tmp_path, unknown_env(BRIDGE_LOCAL_WHEN="offline", BRIDGE_LOCAL_REPLY="accept")
    )
    assert warnings_naming(with_reply.stderr, "BRIDGE_LOCAL_WHEN") == []


def test_retired_variable_in_env_file_says_what_replaced_it(tmp_path: Path):
    (tmp_path / "bridge.env").write_text("BRIDGE_OUTBOX_SIZE=10000\nBRIDGE_LOG_LEVEL=INFO\n")
    line = warning_of_check(
        tmp_path, unknown_env(), "BRIDGE_OUTBOX_SIZE", "--env-file", "bridge.env"
    )
    assert "bridge.env" in line
    assert "no longer used" in line
    assert "BRIDGE_SPOOL_MAX_MB" in line
    assert "BRIDGE_MEMORY_MAX_MB" in line


def test_unknown_variable_warned_once_by_run(tmp_path: Path):
    """Before the exec into the runner, which does not warn again."""
    process = subprocess.Popen(
        bridge_command("run"),
        cwd=tmp_path,
        env=unknown_env(BRIDGE_MQTT_HOSTNAME="broker"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_lines_of, args=(process.stderr, lines), daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        while "bridging reader" not in (seen[-1] if seen else ""):  # the runner's, after exec
            seen.append(lines.get(timeout=10))
        process.send_signal(signal.SIGTERM)
        assert process.wait(5) == 0
    finally:
        process.kill()
        process.wait(10)
        reader.join(5)
        process.stderr.close()
    output = "".join(seen + list(lines.queue))
    naming = warnings_naming(output, "BRIDGE_MQTT_HOSTNAME")
    assert len(naming) == 1, output
    assert "did you mean BRIDGE_MQTT_HOST?" in naming[0]


# -- precedence, in-process ----------------------------------------------------------------


def test_flags_override_environment_override_dotenv(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
):
    (clean_env / ".env").write_text(
        "BRIDGE_READER_PORT=4200\nBRIDGE_MQTT_HOST=from-dotenv\nBRIDGE_DEVICE_ID=dotenv-id\n"
    )
    monkeypatch.setenv("BRIDGE_READER_PORT", "4100")
    monkeypatch.setenv("BRIDGE_DEVICE_ID", "env-id")

    from_files = load_settings()
    assert from_files.reader_port == 4100  # environment over .env
    assert from_files.device_id == "env-id"
    assert from_files.mqtt_host == "from-dotenv"  # .env where the environment is silent

    flagged = load_settings(reader_port="4300", device_id=None)
    assert flagged.reader_port == 4300  # flag over both
    assert flagged.device_id == "env-id"  # a flag not given changes nothing

    assert load_settings(env_file=None).mqtt_host == "localhost"


# -- a running bridge --------------------------------------------------------------------------


@pytest.fixture
def live_settings(broker: Broker, simulator: Simulator, device_id: str) -> dict[str, str]:
    """Settings for a bridge subprocess between the ``simulator`` and the ``broker``."""
    return {
        "reader_host": "127.0.0.1",
        "reader_port": str(simulator.port),
        "mqtt_host": "127.0.0.1",
        "mqtt_port": str(broker.port),
        "device_id": device_id,
    }


@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_publishes_offline_and_exits_0(
    live_settings: dict[str, str], simulator: Simulator, subscribe, tmp_path: Path, signum
):
    topic = f"springcard/springcore/{live_settings['device_id']}/status"
    sub = subscribe(topic)
    settings = live_settings
    stderr = tmp_path / "stderr.log"
    with stderr.open("wb") as log:
        process = subprocess.Popen(
            bridge_command("run"), cwd=tmp_path, env=bridge_env(**settings), stderr=log
        )
        with reaped(process):
            sub.wait_for(lambda m: m.json() == READY, timeout=15)
            process.send_signal(signum)
            signalled = time.monotonic()
            status = process.wait(5)
            elapsed = time.monotonic() - signalled
    assert status == 0
    assert elapsed < 5
    assert sub.next().json() == {"State": "offline"}
    retained = subscribe(topic).next()
    assert retained.retain
    assert retained.json() == {"State": "offline"}
    assert simulator.wait_no_client(5)  # the reader's single slot is free again
    assert "Traceback" not in stderr.read_text()


@pytest.mark.integration
def test_password_never_appears_in_output(
    live_settings: dict[str, str], simulator: Simulator, subscribe, tmp_path: Path
):
    password = f"pw-{uuid.uuid4().hex}"
    sub = subscribe(f"springcard/springcore/{live_settings['device_id']}/#")
    settings = {
        **live_settings,
        "mqtt_username": "bridge-user",  # the password is sent only with a user name
        "mqtt_password": password,
        "log_level": "DEBUG",
    }
    out, err = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            bridge_command("run"),
            cwd=tmp_path,
            env=bridge_env(**settings),
            stdout=stdout,
            stderr=stderr,
        )
        with reaped(process):
            sub.wait_for(lambda m: m.topic.endswith("/status") and m.json() == READY)
            simulator.emit()
            sub.wait_for(lambda m: m.topic.endswith("/rdr/evt"))
            process.send_signal(signal.SIGTERM)
            assert process.wait(5) == 0
    output = out.read_text() + err.read_text()
    assert "DEBUG" in output  # the most talkative level really was on
    assert password not in output


@pytest.mark.parametrize(
    ("args", "announcement"),
    [
        pytest.param(("run",), "bridging reader", id="run"),
        pytest.param(("simulate", "--port", "0", "--interval", "0"), "type Enter", id="simulate"),
    ],
)
def test_stops_cleanly_on_sigterm_right_after_start(
    tmp_path: Path, args: tuple[str, ...], announcement: str
):
    """Once the program has said that it runs, SIGTERM means a clean stop (README, Command line)."""
    # Nothing listens on these ports: the bridge keeps retrying both links, as at a site's
    # first start.
    env = bridge_env(
        reader_host="127.0.0.1",
        reader_port=str(free_port()),
        mqtt_host="127.0.0.1",
        mqtt_port=str(free_port()),
    )
    process = subprocess.Popen(
        bridge_command(*args),
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stderr is not None
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_lines_of, args=(process.stderr, lines), daemon=True)
    reader.start()
    try:
        _wait_line(lines, announcement)
        process.send_signal(signal.SIGTERM)
        try:
            status: int | str = process.wait(5)
        except subprocess.TimeoutExpired:
            status = "still running 5 s after SIGTERM"
    finally:
        process.kill()
        process.wait(10)
        process.stdin.close()
        reader.join(5)
        process.stderr.close()
    output = "".join(lines.queue)
    assert status == 0, output
    assert "Traceback" not in output


# -- the simulator -----------------------------------------------------------------------------


def _lines_of(stream: IO[bytes], into: queue.Queue[str]) -> None:
    for line in iter(stream.readline, b""):
        into.put(line.decode(errors="replace"))


def _wait_line(lines: queue.Queue[str], needle: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no line with {needle!r} in {timeout} s") from None
        if needle in line:
            return line


def test_simulate_sends_an_event_on_enter(tmp_path: Path):
    port = free_port()
    process = subprocess.Popen(
        bridge_command("simulate", "--port", str(port), "--interval", "0"),
        cwd=tmp_path,
        env=bridge_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stderr is not None
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_lines_of, args=(process.stderr, lines), daemon=True)
    reader.start()
    try:
        _wait_line(lines, f"listening on 127.0.0.1:{port}")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            _wait_line(lines, f":{client.getsockname()[1]} connected")
            process.stdin.write(b"\n")
            process.stdin.flush()
            data = b""
            while b"\r\n" not in data:
                chunk = client.recv(4096)
                assert chunk, "the simulator closed the connection"
                data += chunk
    finally:
        process.kill()  # how it stops is test_stops_cleanly_on_sigterm_right_after_start's
        process.wait(10)
        process.stdin.close()
        reader.join(5)
        process.stderr.close()
    event = json.loads(data.split(b"\r\n")[0])
    assert isinstance(event, dict)
    assert {"Interface", "Protocol", "TagId", "Uptime"} <= set(event)
