"""Test support: a real Mosquitto of the test's own, an MQTT subscriber, subprocess helpers.

Nothing here mocks the broker or the reader: faults are injected by killing processes and
dropping sockets. The machine's own broker on 1883 is never used.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.client
import itertools
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties

from bridge.app import Bridge
from bridge.config import env_names

REPO = Path(__file__).resolve().parent.parent

_ids = itertools.count(1)
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)  # polling a port that has no event to await
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if not found:
        pytest.fail("mosquitto is not installed; .ci/run installs it (apt-get install mosquitto)")
    return found


class Broker:
    """A Mosquitto process of the test's own, killable and restartable on the same port."""

    def __init__(self, workdir: Path, extra_config: str = "", max_inflight: int = 0) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.config = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_queued_messages 0\n"  # docs/paho.md §12: the default 1000 loses messages in tests
            f"max_inflight_messages {max_inflight}\n"  # 0: none; Mosquitto's default is 20
            "set_tcp_nodelay true\n"
            f"{extra_config}"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Broker:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [mosquitto_binary(), "-c", str(self.config)], stdout=log, stderr=log
            )
        wait_port(self.port)
        return self

    def kill(self) -> None:
        """SIGKILL: no goodbye to anyone, as in a crash."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    properties: dict[str, str] = field(default_factory=dict)
    correlation: bytes | None = None

    def json(self) -> object:
        return json.loads(self.payload)


class Subscriber:
    """A plain paho client that records what arrives, to assert on."""

    def __init__(self, port: int, topic: str, qos: int = 1) -> None:
        self.messages: queue.Queue[Received] = queue.Queue()
        self._topic = topic
        self._qos = qos
        self._subscribed = queue.Queue[bool]()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-sub-{next(_ids)}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.put(True)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self._subscribed.get(timeout=10)

    def _on_connect(self, client: paho.Client, *args: object) -> None:
        client.subscribe(self._topic, qos=self._qos)

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        props = getattr(message, "properties", None)
        user = dict(getattr(props, "UserProperty", []) or [])
        self.messages.put(
            Received(
                message.topic,
                bytes(message.payload),
                bool(message.retain),
                message.qos,
                user,
                getattr(props, "CorrelationData", None),
            )
        )

    def next(self, timeout: float = 10.0, topic: str | None = None) -> Received:
        """The next message (on ``topic`` if given; others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                message = self.messages.get(timeout=max(0.0, remaining))
            except queue.Empty:
                raise AssertionError(
                    f"no message on {topic or self._topic} in {timeout} s"
                ) from None
            if topic is None or message.topic == topic:
                return message

    def take(self, count: int, topic: str, timeout: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        return [self.next(max(0.1, deadline - time.monotonic()), topic) for _ in range(count)]

    def wait_for(self, predicate: Callable[[Received], bool], timeout: float = 10.0) -> Received:
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(max(0.0, deadline - time.monotonic()))
            if predicate(message):
                return message

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        self.client.publish(
            topic, payload, qos=1, retain=retain, properties=properties
        ).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll state that offers no event to wait on (counters, connection flags, files)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def bridge_command(*args: str) -> list[str]:
    """The installed entry point, run with this interpreter."""
    return [sys.executable, "-m", "bridge", *args]


def local_settings(
    reader_port: int, mqtt_port: int, device_id: str, **overrides: object
) -> dict[str, object]:
    """Settings (as keyword values) that point a bridge at a reader and a broker on loopback."""
    return {
        "reader_host": "127.0.0.1",
        "reader_port": reader_port,
        "mqtt_host": "127.0.0.1",
        "mqtt_port": mqtt_port,
        "device_id": device_id,
        **overrides,
    }


def local_env(reader_port: int, mqtt_port: int, device_id: str, **values: object) -> dict[str, str]:
    """:func:`local_settings` as the environment of a ``run`` subprocess."""
    settings = local_settings(reader_port, mqtt_port, device_id, **values)
    return bridge_env(**{name: str(value) for name, value in settings.items()})


def http_get(port: int, path: str) -> tuple[int, str]:
    """GET ``path`` from a listener on loopback: the status and the body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


class LoopThread:
    """An event loop in a thread of its own, to run a part of the bridge from a test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def ask(self, question: Callable[[], T]) -> T:
        async def answer() -> T:
            return question()

        return self.call(answer())

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> concurrent.futures.Future[None]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def wait_done(self, future: concurrent.futures.Future[None], timeout: float) -> bool:
        try:
            future.result(timeout)
        except concurrent.futures.TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


def kill_task(bridge: Bridge, name: str) -> None:
    """Cancel the bridge's task ``name`` ("commands", "reader") as a bug would end it."""

    def cancel() -> None:
        (task,) = [task for task in asyncio.all_tasks() if task.get_name() == name]
        task.cancel()

    bridge.ask(cancel)


def bridge_env(**values: str) -> dict[str, str]:
    """The test's environment without any BRIDGE_ variable of its own, plus ``values``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BRIDGE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update({f"BRIDGE_{key.upper()}": value for key, value in values.items()})
    assert set(env) & set(env_names()) == {f"BRIDGE_{key.upper()}" for key in values}
    return env


def run_fresh(probe: str) -> str:
    """Run ``probe`` in a fresh interpreter from the repository; what it printed."""
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def start_logged(
    command: list[str], cwd: Path, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """Start ``command`` with its output appended to ``log``."""
    with log.open("ab") as log_file:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file
        )


@contextlib.contextmanager
def reaped(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """Kill ``process`` on the way out if the test left it running (an assertion failed)."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
