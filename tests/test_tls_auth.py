"""TLS and user name/password against a real Mosquitto: success, and each way it goes wrong.

A throwaway CA (and a second, foreign one) comes from the ``certs`` fixture (tests/pki.py),
made once per session. Every failure must give a log line that names the cause and the setting
to fix, and the bridge must keep retrying with growing delays - no tight loop, no crash - and
still stop cleanly. Secrets must not reach the output, even at DEBUG.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import logging
import queue
import secrets
import selectors
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from bridge.app import Bridge
from bridge.config import ConfigError, load_run_settings, load_settings
from bridge.simulator import Simulator
from tests.pki import Certs
from tests.support import Broker, bridge_command, bridge_env, wait_until

pytestmark = [pytest.mark.integration]

USER = "bridge-user"
WINDOW = 5.0
"""Seconds of retrying watched per failure mode. paho's first delay is 0.5-1.5 s and doubles,
so a second attempt comes within 4.5 s; a tight loop would make hundreds."""


# -- brokers -----------------------------------------------------------------------------------


class SecureBroker(Broker):
    """A Mosquitto with one listener configured here: TLS and/or a password file."""

    def __init__(self, workdir: Path, listener: str, anonymous: bool = True) -> None:
        super().__init__(workdir)
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"allow_anonymous {'true' if anonymous else 'false'}\n"
            "persistence false\n"
            # docs/paho.md §13: as root, Mosquitto drops to 'mosquitto' and cannot read
            "user root\n"
            f"{listener}"
        )


@dataclass
class Brokers:
    tls: SecureBroker  # certificate for localhost and 127.0.0.1, from the CA
    client_cert: SecureBroker  # the same, and a client certificate is required
    password: SecureBroker  # plain MQTT, user name and password required
    foreign: SecureBroker  # certificate from another CA
    dns_only: SecureBroker  # certificate for the name localhost only
    password_value: str
    every: list[SecureBroker] = field(default_factory=list)


@pytest.fixture(scope="module")
def brokers(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Brokers]:
    password = f"pw-{secrets.token_urlsafe(16)}"
    password_file = tmp_path_factory.mktemp("passwd") / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(password_file), USER, password],
        check=True,
        capture_output=True,
        timeout=30,
    )

    def tls(name: str) -> str:
        cert, key = certs.pair(name)
        return f"cafile {certs.ca}\ncertfile {cert}\nkeyfile {key}\n"

    def make(listener: str, anonymous: bool = True) -> SecureBroker:
        return SecureBroker(tmp_path_factory.mktemp("broker"), listener, anonymous)

    made = Brokers(
        tls=make(tls("server")),
        client_cert=make(tls("server") + "require_certificate true\n"),
        password=make(f"password_file {password_file}\n", anonymous=False),
        foreign=make(tls("foreign")),
        dns_only=make(tls("dns-only")),
        password_value=password,
    )
    made.every = [made.tls, made.client_cert, made.password, made.foreign, made.dns_only]
    try:
        for broker in made.every:
            broker.start()
        yield made
    finally:
        for broker in made.every:
            broker.stop()


# -- a TLS/password-capable subscriber, a bridge factory -----------------------------------


class Watcher:
    """A paho client subscribed to ``topic``, over TLS and/or with credentials if asked."""

    def __init__(
        self,
        port: int,
        topic: str,
        *,
        host: str = "127.0.0.1",
        ca: Path | None = None,
        client_pair: tuple[Path, Path] | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"tls-watcher-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        if ca is not None:
            cert, key = client_pair or (None, None)
            self.client.tls_set(
                ca_certs=str(ca),
                certfile=str(cert) if cert else None,
                keyfile=str(key) if key else None,
            )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = lambda client, *args: client.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.on_message = lambda client, userdata, message: self.messages.put(message)
        self.client.connect(host, port)
        self.client.loop_start()
        if not subscribed.wait(10):
            self.close()
            raise AssertionError(f"the watcher could not subscribe on {host}:{port}")

    def next(self, timeout: float = 10.0) -> paho.MQTTMessage:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message in {timeout} s") from None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Kit:
    """What a test of one bridge needs: brokers, certificates, a reader, and factories."""

    brokers: Brokers
    certs: Certs
    simulator: Simulator
    device_id: str
    tmp_path: Path
    bridges: list[Bridge] = field(default_factory=list)
    watchers: list[Watcher] = field(default_factory=list)

    @property
    def event_topic(self) -> str:
        return f"springcard/springcore/{self.device_id}/rdr/evt"

    def bridge(self, **overrides: object) -> Bridge:
        settings = load_settings(
            env_file=None,
            reader_host="127.0.0.1",
            reader_port=self.simulator.port,
            device_id=self.device_id,
            spool_path=str(self.tmp_path / f"spool-{len(self.bridges)}.db"),
            **overrides,
        )
        self.bridges.append(Bridge(settings))
        self.bridges[-1].start()
        return self.bridges[-1]

    def watch(self, port: int, **options: Any) -> Watcher:
        self.watchers.append(Watcher(port, self.event_topic, **options))
        return self.watchers[-1]

    def event_arrives(self, bridge: Bridge, watcher: Watcher) -> None:
        assert bridge.mqtt.wait_connected(10), "the bridge did not connect to the broker"
        assert self.simulator.wait_client(10)
        sent = self.simulator.emit()
        message = watcher.next()
        assert message.topic == bridge.topics.event
        assert json.loads(message.payload) == json.loads(sent)


@pytest.fixture
def kit(
    brokers: Brokers, certs: Certs, simulator: Simulator, device_id: str, tmp_path: Path
) -> Iterator[Kit]:
    made = Kit(brokers, certs, simulator, device_id, tmp_path)
    yield made
    for bridge in made.bridges:
        bridge.stop(timeout=1.0)
    for watcher in made.watchers:
        watcher.close()


# -- success -----------------------------------------------------------------------------------


def test_tls_with_the_ca_file_publishes_events(kit: Kit):
    port, ca = kit.brokers.tls.port, kit.certs.ca  # the broker has only this TLS listener
    watcher = kit.watch(port, host="localhost", ca=ca)
    bridge = kit.bridge(mqtt_tls=True, mqtt_ca_file=ca, mqtt_host="localhost", mqtt_port=port)
    kit.event_arrives(bridge, watcher)


def test_tls_with_a_client_certificate_publishes_events(kit: Kit):
    port, ca = kit.brokers.client_cert.port, kit.certs.ca
    cert, key = kit.certs.pair("client")
    watcher = kit.watch(port, host="localhost", ca=ca, client_pair=(cert, key))
    bridge = kit.bridge(
        mqtt_tls=True,
        mqtt_ca_file=ca,
        mqtt_cert_file=cert,
        mqtt_key_file=key,
        mqtt_host="localhost",
        mqtt_port=port,
    )
    kit.event_arrives(bridge, watcher)
    # Without the certificate, the same bridge is turned away: see "no-client-certificate".


def test_tls_insecure_connects_to_an_untrusted_broker_and_warns(
    kit: Kit, caplog: pytest.LogCaptureFixture
):
    port = kit.brokers.foreign.port  # its certificate comes from a CA the bridge is not given
    watcher = kit.watch(port, host="localhost", ca=kit.certs.other_ca)
    bridge = kit.bridge(
        mqtt_tls=True, mqtt_tls_insecure=True, mqtt_host="127.0.0.1", mqtt_port=port
    )
    kit.event_arrives(bridge, watcher)
    assert any(
        record.levelno == logging.WARNING and "BRIDGE_MQTT_TLS_INSECURE" in record.getMessage()
        for record in caplog.records
    )


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
@pytest.mark.parametrize("source", ["password", "password-file"])
def test_user_name_and_password_publish_events(kit: Kit, source: str, protocol: str):
    port, password = kit.brokers.password.port, kit.brokers.password_value
    watcher = kit.watch(port, username=USER, password=password)
    if source == "password":
        secret: dict[str, object] = {"mqtt_password": password}
    else:
        (kit.tmp_path / "secret").write_text(password + "\n")  # as editors and `echo` leave it
        secret = {"mqtt_password_file": kit.tmp_path / "secret"}
    bridge = kit.bridge(
        mqtt_host="127.0.0.1", mqtt_port=port, mqtt_username=USER, mqtt_protocol=protocol, **secret
    )
    kit.event_arrives(bridge, watcher)


# -- failures: all modes run side by side, each behind a proxy that counts connection attempts


class CountingProxy:
    """A TCP relay to a broker that notes when each connection attempt arrives.

    Bytes pass unchanged (TLS is end to end); a reset on one side is passed on as a reset.
    """

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.05)
        self.port: int = self._server.getsockname()[1]
        self._attempts: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, name="proxy", daemon=True)]
        self._threads[0].start()

    @property
    def attempts(self) -> list[float]:
        with self._lock:
            return list(self._attempts)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            with self._lock:
                self._attempts.append(time.monotonic())
            relay = threading.Thread(target=self._relay, args=(client,), daemon=True)
            self._threads.append(relay)
            relay.start()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self._target), 5)
        except OSError:
            client.close()
            return
        with client, upstream:
            peer = {client: upstream, upstream: client}
            with selectors.DefaultSelector() as selector:
                for sock in peer:
                    selector.register(sock, selectors.EVENT_READ)
                while not self._stop.is_set():
                    for key, _ in selector.select(0.1):
                        source: socket.socket = key.fileobj  # type: ignore[assignment]
                        try:
                            data = source.recv(65536)
                        except ConnectionResetError:
                            linger = struct.pack("ii", 1, 0)  # close with an RST, as it came
                            peer[source].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                            return
                        if not data:
                            return
                        with contextlib.suppress(OSError):
                            peer[source].sendall(data)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self._server.close()


@dataclass(frozen=True)
class Mode:
    broker: str  # attribute of Brokers
    settings: dict[str, object]
    expected: tuple[str, ...]  # all in one WARNING/ERROR line of this bridge


TLS = {"mqtt_tls": True, "mqtt_host": "localhost"}
MODES: dict[str, Mode] = {
    "wrong-password": Mode(
        "password",
        {"mqtt_username": USER, "mqtt_password": "wrong"},
        ("refused", "BRIDGE_MQTT_USERNAME", "BRIDGE_MQTT_PASSWORD"),
    ),
    "wrong-password-3.1.1": Mode(
        "password",
        {"mqtt_username": USER, "mqtt_password": "wrong", "mqtt_protocol": "3.1.1"},
        ("refused", "BRIDGE_MQTT_USERNAME", "BRIDGE_MQTT_PASSWORD"),
    ),
    "no-credentials": Mode(
        "password", {}, ("refused", "none are set", "BRIDGE_MQTT_USERNAME", "BRIDGE_MQTT_PASSWORD")
    ),
    "unknown-ca": Mode(
        "foreign", {**TLS, "ca": True}, ("certificate", "not trusted", "BRIDGE_MQTT_CA_FILE")
    ),
    "host-name-mismatch": Mode(
        "dns_only",
        {**TLS, "ca": True, "mqtt_host": "127.0.0.1"},
        ("certificate", "does not match", "'127.0.0.1'", "BRIDGE_MQTT_HOST"),
    ),
    "plain-mqtt-to-tls-port": Mode("tls", {}, ("TLS", "BRIDGE_MQTT_TLS", "BRIDGE_MQTT_PORT")),
    "tls-to-plain-port": Mode(
        "password", {**TLS, "ca": True}, ("TLS", "BRIDGE_MQTT_PORT", "BRIDGE_MQTT_TLS")
    ),
    "no-client-certificate": Mode(
        "client_cert", {**TLS, "ca": True}, ("certificate", "BRIDGE_MQTT_CERT_FILE")
    ),
}


def _params() -> list[object]:
    return [pytest.param(name, id=name) for name in MODES]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self._lock_ = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock_:
            self.records.append(record)

    def snapshot(self) -> list[logging.LogRecord]:
        with self._lock_:
            return list(self.records)


@dataclass
class Failing:
    bridge: Bridge
    proxy: CountingProxy
    simulator: Simulator
    records: _Records
    stopped: bool = False

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.bridge.stop(timeout=1.0)

    def watched(self) -> list[float]:
        """Attempt times, after waiting until the first one is WINDOW seconds old."""
        wait_until(lambda: bool(self.proxy.attempts), "a first connection attempt")
        time.sleep(max(0.0, self.proxy.attempts[0] + WINDOW - time.monotonic()))  # a span
        return self.proxy.attempts

    def lines(self) -> list[logging.LogRecord]:
        where = f":{self.proxy.port}"
        return [r for r in self.records.snapshot() if where in r.getMessage()]


@pytest.fixture(scope="module")
def failing(
    brokers: Brokers, certs: Certs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Failing]]:
    """One bridge per failure mode, all started at once, so the modes' windows overlap."""
    records = _Records()
    logging.getLogger("bridge").addHandler(records)
    runs: dict[str, Failing] = {}
    spool = tmp_path_factory.mktemp("failing")
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(logging.getLogger("bridge").removeHandler, records)
        for name, mode in MODES.items():
            proxy = CountingProxy(getattr(brokers, mode.broker).port)
            cleanup.callback(proxy.close)
            simulator = cleanup.enter_context(Simulator(port=0))
            settings = {k: v for k, v in mode.settings.items() if k != "ca"}
            if mode.settings.get("ca"):
                settings["mqtt_ca_file"] = certs.ca
            bridge = Bridge(
                load_settings(
                    env_file=None,
                    reader_host="127.0.0.1",
                    reader_port=simulator.port,
                    device_id=f"failing-{name}",
                    spool_path=str(spool / f"{name}.db"),
                    mqtt_port=proxy.port,
                    **{"mqtt_host": "127.0.0.1", **settings},
                )
            )
            runs[name] = Failing(bridge, proxy, simulator, records)
            bridge.start()
            cleanup.callback(runs[name].stop)
        yield runs
        cleanup.close()
        runs.clear()
        gc.collect()  # a socket leaked by a failed handshake would warn (an error) here


@pytest.mark.slow
@pytest.mark.parametrize("mode", _params())
def test_failure_logs_the_cause_and_the_setting_to_fix(failing: dict[str, Failing], mode: str):
    run = failing[mode]
    attempts = run.watched()
    lines = run.lines()
    messages = [record.getMessage() for record in lines]
    assert messages, f"no WARNING/ERROR line names the broker at port {run.proxy.port}"
    expected = MODES[mode].expected
    assert any(all(word in m for word in expected) for m in messages), (expected, messages)
    assert all(record.exc_info is None for record in lines), "a traceback is no explanation"
    assert len(messages) <= len(attempts), "more than one line per attempt"


@pytest.mark.slow
@pytest.mark.parametrize("mode", _params())
def test_failure_retries_with_growing_delays_and_stops_cleanly(
    failing: dict[str, Failing], mode: str
):
    run = failing[mode]
    attempts = run.watched()
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    assert 2 <= len(attempts) <= 5, f"{len(attempts)} attempts in {WINDOW} s: {gaps}"
    assert min(gaps) >= 0.4, gaps
    assert all(later > earlier for earlier, later in itertools.pairwise(gaps)), gaps
    assert not run.bridge.mqtt.is_connected
    assert run.bridge.mqtt.counters.connects == 0

    # Still alive: reading from the reader, holding events for the broker, still retrying.
    assert run.simulator.wait_client(5)
    run.simulator.emit()
    wait_until(lambda: run.bridge.mqtt.backlog == 1, "the event to be held for the broker")
    # One event loop does all of it: no paho thread (docs/architecture.md §2).
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("paho")]
    loop_thread = run.bridge.thread_name
    assert loop_thread in {thread.name for thread in threading.enumerate()}

    began = time.monotonic()
    run.stop()
    assert time.monotonic() - began < 3.0
    assert loop_thread not in {thread.name for thread in threading.enumerate()}
    assert run.simulator.wait_no_client(5)


# -- secrets -----------------------------------------------------------------------------------


def _lines_of(stream: IO[bytes], into: queue.Queue[str]) -> None:
    for line in iter(stream.readline, b""):
        into.put(line.decode(errors="replace"))


def _wait_line(lines: queue.Queue[str], seen: list[str], needle: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no line with {needle!r} in {timeout} s: {seen}") from None
        seen.append(line)
        if needle in line:
            return


@pytest.mark.slow
@pytest.mark.parametrize("right", [True, False], ids=["right-password", "wrong-password"])
def test_password_never_reaches_the_output_at_debug(kit: Kit, right: bool):
    brokers, simulator, tmp_path = kit.brokers, kit.simulator, kit.tmp_path
    password = brokers.password_value if right else f"wrong-{secrets.token_urlsafe(16)}"
    env = bridge_env(
        reader_host="127.0.0.1",
        reader_port=str(simulator.port),
        mqtt_host="127.0.0.1",
        mqtt_port=str(brokers.password.port),
        mqtt_username=USER,
        mqtt_password=password,
        device_id=kit.device_id,
        log_level="DEBUG",
    )
    stdout = tmp_path / "stdout.log"
    seen: list[str] = []
    lines: queue.Queue[str] = queue.Queue()
    with stdout.open("wb") as out:
        process = subprocess.Popen(
            bridge_command("run"), cwd=tmp_path, env=env, stdout=out, stderr=subprocess.PIPE
        )
        assert process.stderr is not None
        reader = threading.Thread(target=_lines_of, args=(process.stderr, lines), daemon=True)
        reader.start()
        try:
            if right:
                watcher = kit.watch(brokers.password.port, username=USER, password=password)
                _wait_line(lines, seen, "connected to broker")
                assert simulator.wait_client(10)
                simulator.emit()
                watcher.next()  # the whole path ran, with its DEBUG lines
            else:
                _wait_line(lines, seen, "refused the connection")
                assert simulator.wait_client(10)
                simulator.emit()
                _wait_line(lines, seen, "DEBUG")  # the event, held for the broker
            process.send_signal(signal.SIGTERM)
            status = process.wait(10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
            reader.join(5)
            process.stderr.close()
    seen += list(lines.queue)
    output = stdout.read_text() + "".join(seen)
    assert status == 0, output
    assert "DEBUG" in output  # the most talkative level really was on
    assert password not in output


def test_password_absent_from_repr_and_config_errors(tmp_path: Path):
    password = f"pw-{secrets.token_urlsafe(16)}"
    settings = load_settings(env_file=None, mqtt_username=USER, mqtt_password=password)
    assert settings.mqtt().password is not None
    assert settings.mqtt().password.get_secret_value() == password  # type: ignore[union-attr]
    for text in (repr(settings), str(settings), repr(settings.mqtt())):
        assert password not in text

    secret_file = tmp_path / "secret"
    secret_file.write_text(password + "\n")
    from_file = load_settings(env_file=None, mqtt_username=USER, mqtt_password_file=secret_file)
    assert from_file.mqtt().password.get_secret_value() == password  # type: ignore[union-attr]
    assert password not in repr(from_file.mqtt())

    problems: list[str] = []
    # A missing required setting: its error's input is every other setting, password included.
    with pytest.raises(ConfigError) as missing:
        load_run_settings(env_file=None, mqtt_password=password, mqtt_port="0")
    problems += missing.value.lines
    # A bad value of the password itself.
    with pytest.raises(ConfigError) as bad:
        load_settings(env_file=None, mqtt_password=[password])
    problems += bad.value.lines
    # Both the password and its file.
    both = load_run_settings(
        env_file=None, reader_host="x", mqtt_password=password, mqtt_password_file=secret_file
    )
    with pytest.raises(ConfigError) as twice:
        both.check_run()
    problems += twice.value.lines
    assert any("BRIDGE_READER_HOST" in line for line in problems), problems
    assert any("BRIDGE_MQTT_PASSWORD:" in line for line in problems), problems
    assert any("BRIDGE_MQTT_PASSWORD_FILE" in line for line in problems), problems
    assert [line for line in problems if password in line] == []


def test_a_failed_tls_handshake_closes_its_socket(kit: Kit, caplog: pytest.LogCaptureFixture):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        bridge = kit.bridge(
            mqtt_tls=True,
            mqtt_ca_file=kit.certs.ca,
            mqtt_host="localhost",
            mqtt_port=kit.brokers.foreign.port,
        )
        wait_until(lambda: "not trusted" in caplog.text, "a failed TLS handshake")
        bridge.stop(timeout=1.0)
        kit.bridges.remove(bridge)
        del bridge
        gc.collect()
    leaked = [str(warning.message) for warning in caught if "SSLSocket" in str(warning.message)]
    assert leaked == []
