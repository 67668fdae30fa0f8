"""No silent death: a part the bridge depends on that dies is logged, named in /healthz,
and ends the process with a non-zero status (issue 10: paho's network thread could die
while /readyz stayed 200 and events piled up; since issue 11 paho runs in the event loop,
and an exception in its read path is the same fault).

Faults are injected for real: paho's own read path raises, in this process or, through a
``sitecustomize`` module, inside a ``run`` subprocess.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from paho.mqtt.client import Client as PahoClient
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from bridge.app import Bridge
from bridge.config import load_settings
from bridge.mqtt.client import Client
from bridge.runner import EXIT_FATAL
from bridge.simulator import Simulator
from tests.support import (
    bridge_command,
    free_port,
    http_get,
    local_env,
    local_settings,
    reaped,
    start_logged,
    wait_until,
)

if TYPE_CHECKING:
    from tests.support import Broker, Subscriber

READY = {"State": "online,ready"}
DEAD = {"State": "offline,dead"}
FAULT = "injected fault in paho's network thread"


# -- the short PUBACK path falls back to paho's own -------------------------------------------


class BrokenShortPath(Client):
    """A paho release where what the short path relies on changed: it raises."""

    def _short_puback(self, cmd: object) -> MQTTErrorCode:
        raise AttributeError("'Client' object has no attribute '_out_message_mutex'")


def acknowledge(client: PahoClient, count: int) -> list[tuple[int, bool]]:
    """Publish ``count`` QoS 1 messages (held: not connected), feed their PUBACKs."""
    seen: list[tuple[int, bool]] = []
    client.on_publish = lambda c, u, mid, rc, props: seen.append((mid, rc.is_failure))
    for _ in range(count):
        client.publish("a/b", b"x", qos=1)
    for mid in range(1, count + 1):
        client._in_packet["command"] = 0x40
        client._in_packet["packet"] = bytearray(mid.to_bytes(2, "big"))
        client._packet_handle()
    return seen


def test_short_puback_path_that_raises_falls_back_to_paho_and_stays_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = BrokenShortPath(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    plain = PahoClient(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    assert acknowledge(broken, 3) == acknowledge(plain, 3) == [(1, False), (2, False), (3, False)]
    assert broken._out_messages == {}
    warnings = [r for r in caplog.records if "short PUBACK path failed" in r.getMessage()]
    assert len(warnings) == 1  # then paho's own path for good, without a word per PUBACK
    assert warnings[0].exc_info is not None


# -- paho's read path raises inside a running bridge -------------------------------------------


@pytest.fixture
def fatal_bridge(
    broker: Broker, simulator: Simulator, device_id: str, tmp_path: Path
) -> Iterator[Callable[..., tuple[Bridge, queue.Queue[str]]]]:
    started: list[Bridge] = []

    def make(**overrides: object) -> tuple[Bridge, queue.Queue[str]]:
        spool = str(tmp_path / "spool.db")
        defaults = local_settings(simulator.port, broker.port, device_id, spool_path=spool)
        settings = load_settings(env_file=None, **{**defaults, **overrides})
        deaths: queue.Queue[str] = queue.Queue()
        bridge = Bridge(settings, on_fatal=deaths.put)
        bridge.start()
        started.append(bridge)
        return bridge, deaths

    yield make
    for bridge in started:
        bridge.stop(timeout=1.0)


def test_an_exception_in_pahos_read_path_is_logged_named_and_fatal(
    fatal_bridge: Callable[..., tuple[Bridge, queue.Queue[str]]],
    simulator: Simulator,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    bridge, deaths = fatal_bridge(http_port=port)
    assert bridge.mqtt.wait_connected(10)
    assert simulator.wait_client()
    wait_until(lambda: bridge.reader.is_up, "the reader link")
    assert http_get(port, "/healthz") == (200, "alive\n")

    def broken_read(self: Client, max_packets: int = 1) -> MQTTErrorCode:
        raise RuntimeError(FAULT)

    monkeypatch.setattr(Client, "loop_read", broken_read)
    simulator.emit()  # its PUBACK makes paho read, which now raises
    assert deaths.get(timeout=10) == "mqtt-network"
    assert "mqtt-network" in bridge.dead_loops()
    assert http_get(port, "/healthz") == (503, "dead: stopped loop(s): mqtt-network\n")
    assert not bridge.mqtt.is_connected  # /readyz no longer claims a live broker session
    assert http_get(port, "/readyz")[0] == 503
    died = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert died, "no CRITICAL line"
    assert died[0].exc_info is not None
    assert FAULT in str(died[0].exc_info[1])


# -- the same in a real `run` process: it exits, and its last will says dead -------------------

SITECUSTOMIZE = f"""
import os
import paho.mqtt.client as paho

_read = paho.Client.loop_read

def loop_read(self, *args, **kwargs):
    if os.path.exists(os.environ["FAULT_FILE"]):
        raise RuntimeError({FAULT!r})
    return _read(self, *args, **kwargs)

paho.Client.loop_read = loop_read
"""


def test_run_exits_non_zero_with_the_traceback_when_a_loop_dies(
    broker: Broker,
    simulator: Simulator,
    subscribe: Callable[..., Subscriber],
    device_id: str,
    tmp_path: Path,
) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    fault = tmp_path / "fault"
    env = local_env(simulator.port, broker.port, device_id, spool_path=tmp_path / "spool.db")
    env["PYTHONPATH"] = f"{hooks}:{env['PYTHONPATH']}"
    env["FAULT_FILE"] = str(fault)
    status = subscribe(f"springcard/springcore/{device_id}/status")
    log = tmp_path / "bridge.log"
    process = start_logged(bridge_command("run"), tmp_path, env, log)
    with reaped(process):
        status.wait_for(lambda m: m.json() == READY, timeout=15)
        fault.touch()
        simulator.emit()
        code = process.wait(15)
        assert status.wait_for(lambda m: m.json() != READY, timeout=10).json() == DEAD
    output = log.read_text()
    assert code == EXIT_FATAL, output
    assert "paho's loop_read raised (mqtt-network)" in output
    assert "Traceback" in output
    assert FAULT in output
    assert simulator.wait_no_client(5)  # the reader's one slot is free for the restart
