"""A fleet (README, Fleet): one ``run`` process bridging the readers of a TOML file, each exactly as
a bridge of its own would; SIGKILL, SIGHUP reload, a bad file on reload, a shared spool that
survives a crash, and one reader whose faults do not touch the others.

Real parts throughout: a Mosquitto of the test's own, one simulator per reader, the bridge
as a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from bridge.app import App
from bridge.config import load_settings
from bridge.fleet_file import fleet_options
from bridge.simulator import Simulator
from tests.support import (
    Broker,
    LoopThread,
    Subscriber,
    bridge_command,
    bridge_env,
    free_port,
    http_get,
    reaped,
    start_logged,
    wait_until,
)

if TYPE_CHECKING:
    from tests.support import Subscriber

pytestmark = pytest.mark.integration

READY = {"State": "online,ready"}
OFFLINE = {"State": "offline"}
DEAD = {"State": "offline,dead"}
PREFIX = "springcard/springcore"


def readers_file(path: Path, readers: dict[str, Simulator], **defaults: object) -> Path:
    """A readers file: one [[reader]] per simulator, ``device_id`` its key."""
    lines = ["[defaults]", 'reader_host = "127.0.0.1"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in defaults.items()]
    for device, simulator in readers.items():
        lines += ["", "[[reader]]", f'device_id = "{device}"', f"reader_port = {simulator.port}"]
    path.write_text("\n".join(lines) + "\n")
    return path


class Fleet:
    """A ``run`` process serving a readers file, with its HTTP listener."""

    def __init__(self, workdir: Path, broker: Broker, file: Path, **values: str) -> None:
        self.workdir = workdir
        self.log = workdir / "fleet.log"
        self.http = free_port()
        self.env = bridge_env(
            readers_file=str(file),
            mqtt_host="127.0.0.1",
            mqtt_port=str(broker.port),
            spool_path=str(workdir / "fleet.db"),
            http_port=str(self.http),
            **values,
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        self.process = start_logged(bridge_command("run"), self.workdir, self.env, self.log)
        return self.process

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def simulators() -> Iterator[Callable[[int], list[Simulator]]]:
    made: list[Simulator] = []

    def make(count: int) -> list[Simulator]:
        made.extend(Simulator(port=0).start() for _ in range(count))
        return made[-count:]

    yield make
    for simulator in made:
        simulator.stop()


class States:
    """Every reader's status messages as they come (readers' messages interleave)."""

    def __init__(self, sub: Subscriber) -> None:
        self._sub = sub
        self.seen: dict[str, list[object]] = {}

    def wait(self, devices: Iterable[str], state: dict[str, str], timeout: float = 15) -> None:
        """Until each of ``devices`` has had ``state`` (since the last wait for it)."""
        pending = set(devices)
        deadline = time.monotonic() + timeout
        while pending:
            pending -= {device for device in pending if state in self.seen.get(device, [])}
            if not pending:
                break
            message = self._sub.next(max(0.0, deadline - time.monotonic()))
            self.seen.setdefault(message.topic.split("/")[2], []).append(message.json())
        for device in devices:  # consumed: a later wait for the same state waits anew
            history = self.seen[device]
            del history[: len(history) - history[::-1].index(state)]


@dataclass
class Rig:
    """A fleet of simulated readers, its readers file, its status watcher, its process."""

    sims: dict[str, Simulator]
    file: Path
    states: States
    fleet: Fleet


@pytest.fixture
def rig(
    broker: Broker,
    simulators: Callable[[int], list[Simulator]],
    subscribe: Callable[..., Subscriber],
    tmp_path: Path,
) -> Callable[..., Rig]:
    """``rig("a", "b")``: readers a and b, simulated, in a readers file (not started)."""

    def make(*devices: str) -> Rig:
        sims = dict(zip(devices, simulators(len(devices)), strict=True))
        file = readers_file(tmp_path / "readers.toml", sims)
        states = States(subscribe(f"{PREFIX}/+/status"))
        return Rig(sims, file, states, Fleet(tmp_path, broker, file))

    return make


def mqtt_local_ports(pid: int, broker_port: int) -> set[int]:
    """The local ports of ``pid``'s TCP connections to ``broker_port`` (/proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == broker_port:
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


# -- every reader as a bridge of its own ------------------------------------------------------


def test_each_reader_of_the_file_is_bridged_on_its_own_topics(
    rig: Callable[..., Rig], subscribe: Callable[..., Subscriber]
) -> None:
    everything = subscribe(f"{PREFIX}/+/rdr/evt")
    made = rig("front", "back", "gate")
    sims, states, fleet = made.sims, made.states, made.fleet
    with reaped(fleet.start()) as process:
        states.wait(sims, READY)
        sent = {device: json.loads(sim.emit()) for device, sim in sims.items()}
        for device, event in sent.items():
            message = everything.next(topic=f"{PREFIX}/{device}/rdr/evt")
            assert message.json() == event
            assert int(message.properties["seq"]) > 0
        metas = subscribe(f"{PREFIX}/+/meta")  # retained: one per reader
        topics = {metas.next().topic for _ in sims}
        assert topics == {f"{PREFIX}/{device}/meta" for device in sims}
        discovery = subscribe("homeassistant/#")  # retained configs: each reader its device
        expected = {f"springcore_{device}" for device in sims}
        seen: set[str] = set()
        while seen != expected:
            config = discovery.next().json()
            assert isinstance(config, dict)
            (identifier,) = config["device"]["identifiers"]
            assert identifier in expected
            device = identifier.removeprefix("springcore_")
            assert all(  # its topics are its reader's own
                f"/{device}/" in topic
                for key, topic in config.items()
                if key.endswith("topic") and isinstance(topic, str)
            ), config
            seen.add(identifier)
        results = subscribe(f"{PREFIX}/back/bridge/result")
        results.publish(f"{PREFIX}/back/rdr/cmd", "accept")
        assert results.next().json() == {"ok": True, "sent": {"Sequence": "60"}}
        assert sims["back"].commands.get(timeout=5) == {"Sequence": "60"}
        assert sims["front"].commands.empty()
        assert sims["gate"].commands.empty()
        status, body = http_get(fleet.http, "/readyz")
        assert (status, body) == (200, "ready\n")
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        states.wait(sims, OFFLINE)


def test_sigkill_makes_every_readers_status_offline_dead(rig: Callable[..., Rig]) -> None:
    made = rig("a", "b", "c")
    sims, states = made.sims, made.states
    with reaped(made.fleet.start()) as process:
        states.wait(sims, READY)
        process.kill()
        process.wait(10)
    states.wait(sims, DEAD)  # at once: the kernel closed the sockets


# -- reload on SIGHUP ---------------------------------------------------------------------------


def test_sighup_starts_added_stops_removed_restarts_changed_and_leaves_the_rest(
    broker: Broker,
    simulators: Callable[[int], list[Simulator]],
    subscribe: Callable[..., Subscriber],
    tmp_path: Path,
) -> None:
    keep1, keep2, removed, changed, added = simulators(5)
    file = tmp_path / "readers.toml"
    before = {"keep1": keep1, "keep2": keep2, "removed": removed, "changed": changed}
    readers_file(file, before)
    states = States(subscribe(f"{PREFIX}/+/status"))
    fleet = Fleet(tmp_path, broker, file)
    with reaped(fleet.start()) as process:
        states.wait(before, READY)
        ports_before = mqtt_local_ports(fleet.pid, broker.port)
        assert len(ports_before) == 4
        after = {"keep1": keep1, "keep2": keep2, "changed": changed, "added": added}
        text = readers_file(file, after).read_text()
        changed_text = 'device_id = "changed"\nreader_location = "Hall"'
        file.write_text(text.replace('device_id = "changed"', changed_text))
        process.send_signal(signal.SIGHUP)
        states.wait(["removed", "changed"], OFFLINE)
        states.wait(["added", "changed"], READY)
        ports_after = mqtt_local_ports(fleet.pid, broker.port)
        assert len(ports_after) == 4
        assert len(ports_before & ports_after) == 2  # keep1's and keep2's, untouched
        assert keep1.accepted == keep2.accepted == 1  # their reader connections too
        assert changed.accepted == 2
        assert removed.wait_no_client(5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0


def test_a_bad_file_on_reload_keeps_the_running_readers(
    rig: Callable[..., Rig], broker: Broker, subscribe: Callable[..., Subscriber]
) -> None:
    made = rig("one", "two")
    sims, file, states, fleet = made.sims, made.file, made.states, made.fleet
    with reaped(fleet.start()) as process:
        states.wait(sims, READY)
        ports = mqtt_local_ports(fleet.pid, broker.port)
        file.write_text(file.read_text() + "\n[[reader]]\nreader_hots = 'x'\n")
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: "the running readers are kept" in fleet.output(), "the reload's refusal")
        assert "reader_hots: unknown key; did you mean reader_host?" in fleet.output()
        assert mqtt_local_ports(fleet.pid, broker.port) == ports
        evt = subscribe(f"{PREFIX}/two/rdr/evt")
        sent = json.loads(sims["two"].emit())
        assert evt.next().json() == sent  # still bridged
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0


# -- start-up checks ----------------------------------------------------------------------------


def test_startup_problems_exit_2_naming_each_reader_and_key(tmp_path: Path) -> None:
    file = tmp_path / "readers.toml"
    file.write_text(
        '[[reader]]\nreader_host = "10.0.0.1"\ndevice_id = "door"\n'
        '[[reader]]\nreader_host = "10.0.0.2"\ndevice_id = "door"\n'
        '[[reader]]\ndevice_id = "lost"\n'
        '[[reader]]\nreader_host = "10.0.0.4"\nreader_port = 0\nmqtt_host = "x"\n'
    )
    result = subprocess.run(
        bridge_command("run"),
        cwd=tmp_path,
        env=bridge_env(readers_file=str(file), reader_host="10.0.0.9"),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("springcore-bridge: ")]
    assert sorted(lines) == sorted(
        [
            "springcore-bridge: BRIDGE_READER_HOST: set together with BRIDGE_READERS_FILE; give "
            "each reader's reader_host in the file and remove BRIDGE_READER_HOST",
            "springcore-bridge: [[reader]] #2 (door): device_id: the same as [[reader]] #1's "
            "(door); each reader needs its own",
            "springcore-bridge: [[reader]] #3 (lost): reader_host: required, and not set",
            "springcore-bridge: [[reader]] #4 (10.0.0.4): mqtt_host: is shared by every reader: "
            "set BRIDGE_MQTT_HOST in the environment",
            "springcore-bridge: [[reader]] #4 (10.0.0.4): reader_port: Input should be greater "
            "than or equal to 1, got 0",
        ]
    ), result.stderr


# -- a shared spool, and isolation ----------------------------------------------------------------


def test_the_shared_spool_keeps_each_readers_events_through_a_sigkill(
    rig: Callable[..., Rig], broker: Broker, subscribe: Callable[..., Subscriber], tmp_path: Path
) -> None:
    made = rig("left", "right")
    sims, states, fleet = made.sims, made.states, made.fleet
    with reaped(fleet.start()) as process:
        states.wait(sims, READY)
        broker.stop()
        sent = {device: [json.loads(sim.emit()) for _ in range(20)] for device, sim in sims.items()}
        wait_until(lambda: _spooled(tmp_path / "fleet.db") == 40, "40 events in the spool")
        process.kill()
        process.wait(10)
    broker.start()
    events = subscribe(f"{PREFIX}/+/rdr/evt")
    with reaped(fleet.start()) as process:
        received: dict[str, list[tuple[int, object]]] = {device: [] for device in sims}
        for _ in range(40):
            message = events.next(timeout=20)
            assert message.properties["late"] == "true"
            device = message.topic.split("/")[2]
            received[device].append((int(message.properties["seq"]), message.json()))
        for device, expected in sent.items():
            seqs = [seq for seq, _ in received[device]]
            assert [event for _, event in received[device]] == expected  # each in order
            assert seqs == list(range(seqs[0], seqs[0] + 20))  # per reader, consecutive
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0


def _spooled(path: Path) -> int:
    """Events committed to the spool file, every reader's table together."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        names = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        counts = [db.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0] for name in names]
        return sum(counts)


def test_a_reader_whose_task_dies_restarts_alone(
    broker: Broker,
    simulators: Callable[[int], list[Simulator]],
    subscribe: Callable[..., Subscriber],
    tmp_path: Path,
    clean_env: Path,
) -> None:
    sims = dict(zip(("sick", "well"), simulators(2), strict=True))
    file = readers_file(tmp_path / "readers.toml", sims)
    http = free_port()
    settings = load_settings(
        None,
        readers_file=str(file),
        mqtt_host="127.0.0.1",
        mqtt_port=broker.port,
        spool_path=str(tmp_path / "fleet.db"),
        http_port=http,
    )
    states = States(subscribe(f"{PREFIX}/+/status"))
    fatal: list[str] = []
    loop = LoopThread()
    app = loop.ask(lambda: App(fleet_options(settings), fatal.append))
    try:
        loop.call(app.start())
        states.wait(sims, READY)
        well = loop.ask(lambda: app.fleet and app.fleet.sessions["well"])

        def kill_sick_reader() -> None:
            assert app.fleet is not None
            reader_task = app.fleet.sessions["sick"]._tasks[0]  # as a bug would end it
            assert reader_task.get_name() == "reader"
            reader_task.cancel()

        loop.ask(kill_sick_reader)
        states.wait(["sick"], DEAD)  # aborted: no goodbye, its last will speaks
        status, body = http_get(http, "/healthz")
        assert status == 200
        assert "restarting after a failure: sick (reader)" in body
        states.wait(["sick"], READY)  # restarted after RESTART_FIRST
        assert http_get(http, "/healthz") == (200, "alive\n")
        assert fatal == []
        assert loop.ask(lambda: app.fleet and app.fleet.sessions["well"]) is well
        assert sims["well"].accepted == 1
        assert sims["sick"].accepted == 2
        assert "well" not in states.seen or DEAD not in states.seen["well"]
        restarts = loop.ask(lambda: {d: s.restarts for d, s in app.snapshots().items()})
        assert restarts == {"sick": 1, "well": 0}
        evt = subscribe(f"{PREFIX}/sick/rdr/evt")
        sent = json.loads(sims["sick"].emit())
        assert evt.next().json() == sent
    finally:
        loop.call(app.stop(1.0))
        loop.close()


def test_readers_whose_credentials_are_refused_or_link_is_down_do_not_disturb_the_others(
    simulators: Callable[[int], list[Simulator]], tmp_path: Path
) -> None:
    """A password file on the broker; one reader logs in with a wrong password, one has no
    reader listening, the third logs in anonymously (allowed): the first two retry on their
    own, the third is bridged."""
    passwords = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(passwords), "door", "right"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    wrong = tmp_path / "wrong-secret"
    wrong.write_text("wrong\n")
    broker = Broker(tmp_path, f"password_file {passwords}\nuser root\n").start()
    sims = dict(zip(("locked", "open", "unplugged"), simulators(3), strict=True))
    file = readers_file(tmp_path / "readers.toml", sims)
    sims["unplugged"].stop()  # its reader refuses connections from now on
    file.write_text(
        file.read_text().replace(
            'device_id = "locked"',
            f'device_id = "locked"\nmqtt_username = "door"\nmqtt_password_file = "{wrong}"',
        )
    )
    subscriber = Subscriber(broker.port, f"{PREFIX}/+/#")
    fleet = Fleet(tmp_path, broker, file)
    try:
        with reaped(fleet.start()) as process:
            States(subscriber).wait(["open"], READY)
            sent = json.loads(sims["open"].emit())
            event = subscriber.wait_for(lambda m: m.topic.endswith("/rdr/evt"))
            assert event.topic == f"{PREFIX}/open/rdr/evt"
            assert event.json() == sent
            wait_until(lambda: "refused the connection" in fleet.output(), "the refusal logged")
            wait_until(lambda: "link down" in fleet.output(), "the reader link's failure logged")
            lines = fleet.output().splitlines()
            refusals = [line for line in lines if "refused the connection" in line]
            assert all("[locked]" in line for line in refusals), refusals
            downs = [line for line in lines if "link down" in line]
            assert downs, lines
            assert all("[unplugged]" in line for line in downs), downs
            status, body = http_get(fleet.http, "/readyz")
            assert status == 503
            assert body == "not ready: 1 of 3 readers have no broker session: locked\n"
            assert http_get(fleet.http, "/readyz?device_id=open") == (200, "ready\n")
            status, body = http_get(fleet.http, "/readyz?device_id=unplugged")
            assert status == 503
            assert body.startswith("not ready: reader link down (")
            again = json.loads(sims["open"].emit())  # still bridged while the others retry
            assert subscriber.wait_for(lambda m: m.topic.endswith("/rdr/evt")).json() == again
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0
    finally:
        subscriber.close()
        broker.stop()


def test_check_checks_every_reader_of_the_fleet(
    broker: Broker, simulators: Callable[[int], list[Simulator]], tmp_path: Path
) -> None:
    (here,) = simulators(1)
    gone = free_port()  # nothing listens there
    file = tmp_path / "readers.toml"
    file.write_text(
        f'[[reader]]\nreader_host = "127.0.0.1"\nreader_port = {here.port}\ndevice_id = "here"\n'
        f'[[reader]]\nreader_host = "127.0.0.1"\nreader_port = {gone}\ndevice_id = "gone"\n'
    )
    result = subprocess.run(
        bridge_command("check"),
        cwd=tmp_path,
        env=Fleet(tmp_path, broker, file).env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = result.stdout.splitlines()
    assert result.returncode == 1, result.stdout + result.stderr
    assert lines[0] == f"ok   reader 127.0.0.1:{here.port} reachable"
    assert lines[1].startswith(f"FAIL reader 127.0.0.1:{gone}: connection refused")
    assert lines[2].startswith(f"ok   broker 127.0.0.1:{broker.port} connected")
    assert lines[3].startswith(f"ok   spool {tmp_path / 'fleet.db'}")
    assert len(lines) == 5  # and the HTTP port
