"""Health and metrics over HTTP, the ``health`` and ``check`` subcommands, JSON log fields.

A real Mosquitto and the simulator, as everywhere; faults are real too: the simulator goes
away, the broker is killed and restarted, a loop of the bridge is stopped.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.app import Bridge
from bridge.logs import JsonFormatter
from bridge.probe import CheckResult, describe_reader_error
from bridge.simulator import Simulator
from tests.support import (
    bridge_command,
    bridge_env,
    free_port,
    http_get,
    kill_task,
    wait_until,
)

if TYPE_CHECKING:  # conftest is pytest's to import; only its types are needed here
    from tests.support import Broker, Subscriber

pytestmark = pytest.mark.integration

MakeBridge = Callable[..., Bridge]
Subscribe = Callable[..., "Subscriber"]

RECEIVED = "springcore_bridge_events_received_total"
PUBLISHED = "springcore_bridge_events_published_total"
PARSE_ERRORS = "springcore_bridge_parse_errors_total"
AGE = "springcore_bridge_last_event_age_seconds"
BUFFERED = "springcore_bridge_events_buffered"
SPOOL = "springcore_bridge_spool_depth"
READER_UP = 'springcore_bridge_link_up{link="reader"}'
BROKER_UP = 'springcore_bridge_link_up{link="broker"}'
READER_CONNECTS = 'springcore_bridge_connections_total{link="reader"}'
BROKER_CONNECTS = 'springcore_bridge_connections_total{link="broker"}'


# -- helpers -----------------------------------------------------------------------------------


get = http_get


def scrape(port: int) -> dict[str, float]:
    """Every sample of /metrics of a one-reader bridge, keyed ``name{label="value",...}``
    (or ``name``), without the ``device_id`` label that every per-reader sample carries
    (one value for all of them: test_metrics_are_labelled_with_the_device_id checks it)."""
    samples: dict[str, float] = {}
    devices = set()
    for (name, labels), value in scrape_labelled(port).items():
        rest = {key: label for key, label in labels if key != "device_id"}
        devices |= {label for key, label in labels if key == "device_id"}
        text = ",".join(f'{key}="{label}"' for key, label in sorted(rest.items()))
        samples[f"{name}{{{text}}}" if text else name] = value
    assert len(devices) <= 1, devices
    return samples


def scrape_labelled(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by name and sorted labels."""
    status, text = get(port, "/metrics")
    assert status == 200, text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def wait_metric(port: int, key: str, value: float, timeout: float = 10.0) -> None:
    wait_until(lambda: scrape(port).get(key) == value, f"{key} == {value}", timeout)


def wait_status(port: int, path: str, status: int, timeout: float = 10.0) -> str:
    """Poll ``path`` until it answers ``status``; return that answer's body."""
    last: list[tuple[int, str]] = []

    def answers() -> bool:
        last[:] = [get(port, path)]
        return last[0][0] == status

    wait_until(answers, f"{path} to answer {status}", timeout)
    return last[0][1]


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


def result_of(sub: Subscriber) -> dict[str, object]:
    result = sub.next().json()
    assert isinstance(result, dict)
    return result


@pytest.fixture
def listening(make_bridge: MakeBridge) -> Callable[..., tuple[Bridge, int]]:
    """A bridge with its HTTP listener on a free port, ready (both links up)."""

    def make(**overrides: object) -> tuple[Bridge, int]:
        port = free_port()
        bridge = make_bridge(http_port=port, **overrides)
        wait_status(port, "/readyz", 200)
        return bridge, port

    return make


# -- /healthz, /readyz, other paths --------------------------------------------------------


def test_readyz_and_link_metrics_follow_the_reader_and_the_broker(
    listening: Callable[..., tuple[Bridge, int]], simulator: Simulator, broker: Broker
) -> None:
    _, port = listening()
    assert get(port, "/healthz") == (200, "alive\n")
    assert get(port, "/readyz") == (200, "ready\n")
    before = scrape(port)
    assert before[READER_UP] == before[BROKER_UP] == 1

    simulator.stop()  # the reader goes away and stays away: connection refused
    body = wait_status(port, "/readyz", 503)
    assert "reader link down" in body
    assert "broker" not in body
    assert scrape(port)[READER_UP] == 0
    with Simulator(port=simulator.port):
        wait_status(port, "/readyz", 200)
        assert scrape(port)[READER_CONNECTS] == before[READER_CONNECTS] + 1

        broker.kill()
        body = wait_status(port, "/readyz", 503)
        assert "broker disconnected" in body
        assert "reader" not in body
        assert scrape(port)[BROKER_UP] == 0
        broker.start()
        wait_status(port, "/readyz", 200, timeout=15)
        after = scrape(port)
    assert after[BROKER_CONNECTS] == before[BROKER_CONNECTS] + 1
    assert after[READER_UP] == after[BROKER_UP] == 1
    assert get(port, "/healthz") == (200, "alive\n")  # the loops lived through all of it


def test_healthz_is_503_naming_a_stopped_loop(
    listening: Callable[..., tuple[Bridge, int]],
) -> None:
    bridge, port = listening()
    kill_task(bridge, "commands")  # the command worker's task ends, as it would on a bug
    body = wait_status(port, "/healthz", 503)
    assert body == "dead: stopped loop(s): commands\n"
    assert not bridge.is_alive()


def test_other_paths_are_404(listening: Callable[..., tuple[Bridge, int]]) -> None:
    _, port = listening()
    for path in ("/", "/metric", "/healthz/x", "/favicon.ico"):
        assert get(port, path)[0] == 404, path
    assert get(port, "/healthz?verbose=1")[0] == 200  # a query string changes nothing


# -- /metrics ------------------------------------------------------------------------------------


def test_metrics_count_every_event_received_and_published(
    listening: Callable[..., tuple[Bridge, int]],
    simulator: Simulator,
    subscribe: Subscribe,
    device_id: str,
) -> None:
    topic = f"springcard/springcore/{device_id}/rdr/evt"
    sub = subscribe(topic)
    _, port = listening()
    before = scrape(port)
    assert AGE not in before  # no event yet: no age to report
    for _ in range(5):
        simulator.emit()
    sub.take(5, topic)
    wait_metric(port, PUBLISHED, before[PUBLISHED] + 5)
    after = scrape(port)
    assert after[RECEIVED] - before[RECEIVED] == 5
    assert after[PUBLISHED] - before[PUBLISHED] == 5
    assert 0 <= after[AGE] < 5
    assert after[BUFFERED] == after[SPOOL] == 0  # all acknowledged
    for reason in ("size", "age"):
        assert after[f'springcore_bridge_events_dropped_total{{reason="{reason}"}}'] == 0
    assert after["springcore_bridge_outbox_bytes"] == 0
    assert after[PARSE_ERRORS] == before[PARSE_ERRORS] == 0

    simulator.send_raw(b"$SCRDR;garbage\r\n")
    simulator.emit()
    wait_metric(port, PUBLISHED, before[PUBLISHED] + 6)
    later = scrape(port)
    assert later[PARSE_ERRORS] == 1
    assert later[RECEIVED] - before[RECEIVED] == 6


def test_metrics_count_commands_sent_refused_and_expired(
    listening: Callable[..., tuple[Bridge, int]],
    simulator: Simulator,
    subscribe: Subscribe,
    device_id: str,
) -> None:
    command = f"springcard/springcore/{device_id}/rdr/cmd"
    sub = subscribe(f"springcard/springcore/{device_id}/bridge/result")
    _, port = listening(command_timeout=0.5)
    key = 'springcore_bridge_commands_total{{result="{}"}}'.format
    assert [scrape(port)[key(name)] for name in ("ok", "refused", "expired")] == [0, 0, 0]

    sub.publish(command, "wink")
    assert sub.next().json() == {"ok": True, "sent": {"Sequence": "0E"}}
    sub.publish(command, "open sesame")
    assert result_of(sub)["ok"] is False
    samples = scrape(port)
    assert [samples[key(name)] for name in ("ok", "refused", "expired")] == [1, 1, 0]

    simulator.stop()  # the reader link is down: the next command cannot be sent in time
    wait_status(port, "/readyz", 503)
    sub.publish(command, "accept")
    assert "not sent within 0.5 s" in str(result_of(sub)["error"])
    samples = scrape(port)
    assert [samples[key(name)] for name in ("ok", "refused", "expired")] == [1, 1, 1]


def test_metrics_use_the_prometheus_names_and_types(
    listening: Callable[..., tuple[Bridge, int]],
) -> None:
    _, port = listening()
    status, text = get(port, "/metrics")
    assert status == 200
    families = {family.name: family.type for family in text_string_to_metric_families(text)}
    assert all(name.startswith("springcore_bridge_") for name in families)
    counters = {name for name, kind in families.items() if kind == "counter"}
    assert {
        "springcore_bridge_events_received",
        "springcore_bridge_events_published",
        "springcore_bridge_events_dropped",
        "springcore_bridge_parse_errors",
        "springcore_bridge_commands",
        "springcore_bridge_connections",
    } <= counters
    assert "# TYPE springcore_bridge_events_received_total counter" in text
    assert families["springcore_bridge_link_up"] == "gauge"
    assert families["springcore_bridge_events_buffered"] == "gauge"


def test_metrics_are_labelled_with_the_device_id(
    listening: Callable[..., tuple[Bridge, int]],
) -> None:
    """One reader or a fleet, every per-reader sample names its reader (README, Fleet)."""
    bridge, port = listening()
    samples = scrape_labelled(port)
    unlabelled = {name for name, labels in samples if "device_id" not in dict(labels)}
    assert unlabelled == {"springcore_bridge_build_info"}
    devices = {dict(labels)["device_id"] for name, labels in samples if name not in unlabelled}
    assert devices == {bridge.topics.device_id}
    restarts = ("springcore_bridge_reader_restarts_total", (("device_id", devices.pop()),))
    assert samples[restarts] == 0


# -- the `health` subcommand -------------------------------------------------------------------


def test_health_subcommand_exits_0_on_200_and_1_otherwise(
    listening: Callable[..., tuple[Bridge, int]], tmp_path: Path
) -> None:
    bridge, port = listening()
    healthy = run_cli(tmp_path, "health", http_port=str(port))
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert f"ok   http://127.0.0.1:{port}/healthz 200 alive" in healthy.stdout
    ready = run_cli(tmp_path, "health", "--ready", http_port=str(port))
    assert ready.returncode == 0, ready.stdout + ready.stderr

    kill_task(bridge, "commands")
    wait_status(port, "/healthz", 503)
    dead = run_cli(tmp_path, "health", http_port=str(port))
    assert dead.returncode == 1
    assert dead.stdout.splitlines() == [
        f"FAIL http://127.0.0.1:{port}/healthz: 503 dead: stopped loop(s): commands"
    ]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param({"http_port": "free"}, "no answer", id="nothing-listens"),
        pytest.param({}, "BRIDGE_HTTP_PORT is not set", id="listener-off"),
        pytest.param({"http_port": "0"}, "BRIDGE_HTTP_PORT", id="bad-setting-is-not-exit-2"),
    ],
)
def test_health_subcommand_without_a_listener_exits_1(
    tmp_path: Path, values: dict[str, str], expected: str
) -> None:
    values = {key: str(free_port()) if value == "free" else value for key, value in values.items()}
    result = run_cli(tmp_path, "health", **values)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


# -- the `check` subcommand ----------------------------------------------------------------------


@pytest.fixture
def check(tmp_path: Path, broker: Broker) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``check`` against the test broker and a reader on ``reader_port``."""

    def run(reader_port: int, **values: str) -> subprocess.CompletedProcess[str]:
        settings = {
            "reader_host": "127.0.0.1",
            "reader_port": str(reader_port),
            "mqtt_host": "127.0.0.1",
            "mqtt_port": str(broker.port),
            "spool_path": "none",  # its own checks: tests/test_check.py
            **values,
        }
        return run_cli(tmp_path, "check", **settings)

    return run


def test_check_passes_when_reader_and_broker_answer(check, simulator: Simulator, broker: Broker):
    result = check(simulator.port)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        f"ok   reader 127.0.0.1:{simulator.port} reachable",
        f"ok   broker 127.0.0.1:{broker.port} connected",
        "ok   spool off: events wait in memory only (at most 32 MB, BRIDGE_MEMORY_MAX_MB)",
    ]
    assert simulator.accepted == 1
    assert simulator.wait_no_client(2)  # the reader's single slot is free again at once


def test_check_reports_a_refused_reader(check, broker: Broker):
    port = free_port()
    result = check(port)
    assert result.returncode == 1
    reader, broker_line, spool = result.stdout.splitlines()
    assert spool.startswith("ok   spool")
    assert reader.startswith(f"FAIL reader 127.0.0.1:{port}: connection refused — hint: ")
    assert "BRIDGE_READER_PORT" in reader
    assert broker_line.startswith("ok   broker")


def test_check_reports_a_busy_reader(check):
    with Simulator(busy="close") as reader, socket.socket() as holder:
        holder.connect(("127.0.0.1", reader.port))  # the slot is taken by another client
        assert reader.wait_client()
        result = check(reader.port)
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == (
        f"FAIL reader 127.0.0.1:{reader.port}: busy: another client holds the reader's "
        "single slot — hint: stop the other client (a running bridge, a configuration tool) "
        "or wait for it"
    )


def test_check_reports_an_unreachable_broker(check, simulator: Simulator):
    port = free_port()
    result = check(simulator.port, mqtt_port=str(port))
    assert result.returncode == 1
    reader, broker_line, spool = result.stdout.splitlines()
    assert spool.startswith("ok   spool")
    assert reader.startswith("ok   reader")
    assert broker_line.startswith(f"FAIL broker 127.0.0.1:{port}: connection refused — hint: ")
    assert "BRIDGE_MQTT_PORT" in broker_line


def test_check_exits_2_on_a_bad_setting(check, simulator: Simulator):
    result = check(simulator.port, mqtt_qos="7")
    assert result.returncode == 2
    assert result.stdout == ""  # nothing was checked
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert "BRIDGE_MQTT_QOS" in lines[0]
    assert "Traceback" not in result.stderr
    assert simulator.accepted == 0


@pytest.mark.parametrize(
    ("error", "detail", "setting"),
    [
        (socket.gaierror(-2, "Name or service not known"), "name not resolved", "READER_HOST"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "x"), "connection refused", "READER_PORT"),
        (TimeoutError("timed out"), "timed out after 5 s", "READER_HOST"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "unreachable", "READER_HOST"),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), "unreachable", "READER_HOST"),
    ],
)
def test_reader_errors_are_named_with_a_hint(error: OSError, detail: str, setting: str) -> None:
    described, hint = describe_reader_error(error, 5.0)
    assert described.startswith(detail)
    assert f"BRIDGE_{setting}" in hint
    line = CheckResult(False, "reader h:1", described, hint).line()
    assert line == f"FAIL reader h:1: {described} — hint: {hint}"


# -- structured logs ---------------------------------------------------------------------------


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """What the ``bridge`` loggers write at INFO, formatted as BRIDGE_LOG_FORMAT=json does."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("bridge")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(level)


def link_states(stream: io.StringIO) -> list[dict[str, object]]:
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]  # each line parses
    return [entry for entry in entries if "link" in entry]


def test_link_state_changes_log_json_with_device_link_and_state(
    make_bridge: MakeBridge,
    simulator: Simulator,
    broker: Broker,
    device_id: str,
    json_log: io.StringIO,
) -> None:
    bridge = make_bridge()
    wait_until(lambda: bridge.reader.is_up and bridge.mqtt.is_connected, "both links up")
    simulator.drop_client()
    wait_until(lambda: ("reader", "down") in states(json_log), "the reader's link-down line")
    broker.kill()
    wait_until(lambda: ("broker", "down") in states(json_log), "the broker's link-down line")
    entries = link_states(json_log)
    assert {(entry["link"], entry["state"]) for entry in entries} == {
        ("reader", "up"),
        ("reader", "down"),
        ("broker", "up"),
        ("broker", "down"),
    }
    assert {entry["device_id"] for entry in entries} == {device_id}
    down = next(entry for entry in entries if entry["state"] == "down")
    assert down["level"] == "WARNING"
    assert "link down" in str(down["message"])


def states(stream: io.StringIO) -> set[tuple[object, object]]:
    return {(entry["link"], entry["state"]) for entry in link_states(stream)}
