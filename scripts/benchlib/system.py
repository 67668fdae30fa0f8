"""The processes the benchmark starts: the broker and the systems under test (the bridge and the
bare path, ``bench.py --baseline``), each a subprocess; it only starts, watches and stops them."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Final, Literal

from benchlib.errors import BenchError
from benchlib.event import PREFIX
from benchlib.reader import ReaderDouble
from harness import (  # scripts/harness.py
    ProcStat,
    ThreadClock,
    find_mosquitto,
    free_port,
    guarded,
    stop_process,
    wait_port,
)

REPO: Final = Path(__file__).resolve().parents[2]
BENCH: Final = REPO / "scripts" / "bench.py"

Kind = Literal["bridge", "baseline", "local"]
KINDS: Final[tuple[Kind, Kind]] = ("bridge", "baseline")
LOCAL_KINDS: Final[tuple[Kind, Kind]] = ("bridge", "local")
"""``--local``: the bridge, and the bridge answering every read itself (BRIDGE_LOCAL_REPLY)."""
SUT_CPU: Final = 0
"""``--pin``: the CPU of the systems under test (the benchmark and the broker get the others)."""
DEVICES: Final[dict[Kind, str]] = {"bridge": "bench", "baseline": "bare", "local": "bench-local"}


def mosquitto_binary() -> str:
    found = find_mosquitto()
    if not found:
        raise BenchError("mosquitto is not installed (apt-get install mosquitto)")
    return found


class Broker:
    """Our own Mosquitto, configured so that it is not the bottleneck."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.config = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_queued_messages 0\n"  # docs/paho.md §12: unlimited, or the broker loses events
            "max_inflight_messages 0\n"
            "set_tcp_nodelay true\n"
            "log_dest stdout\n"
            "log_type error\n"
            "log_type warning\n"
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.stat = ProcStat(-1)

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(  # noqa: S603 - our own command line
                guarded([mosquitto_binary(), "-c", str(self.config)]),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,  # Ctrl-C is ours to handle
            )
        self.stat = ProcStat(self.process.pid)
        wait_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def version(self) -> str:
        try:
            out = subprocess.run(  # noqa: S603 - our own command line
                [mosquitto_binary(), "-h"], capture_output=True, text=True, timeout=5, check=False
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        return out.splitlines()[0] if out else "?"


def taskset() -> list[str]:
    """util-linux ``taskset``, which runs a command on the CPUs it is given (``--pin``)."""
    found = shutil.which("taskset")
    if found is None:
        raise BenchError("--pin needs taskset (util-linux)")
    return [found]


class Sut:
    """One system under test (the bridge or the bare path) at one QoS, with its reader double.

    ``run`` numbers the repetitions of the measured set (``--runs``); a bridge after the first
    gets a spool file of its own, so that nothing spooled in a run is replayed into the next."""

    def __init__(
        self,
        kind: Kind,
        qos: int,
        broker_port: int,
        workdir: Path,
        run: int = 1,
        *,
        pinned: bool = False,
    ) -> None:
        self.kind = kind
        self.qos = qos
        self.run = run
        self.device = DEVICES[kind] + ("-q0" if qos == 0 else "")
        self.name = f"{kind} (QoS {qos})"
        self.event_topic = f"{PREFIX}/{self.device}/rdr/evt"
        self.command_topic = f"{PREFIX}/{self.device}/rdr/cmd"
        self.reader = ReaderDouble()
        self.log = workdir / f"{self.device}.log"
        if kind != "baseline":
            command = [sys.executable, "-m", "bridge", "run"]
            env = self._bridge_env(broker_port, workdir)
        else:
            command = [
                sys.executable,
                str(BENCH),
                "--baseline",
                f"--reader-port={self.reader.port}",
                f"--mqtt-port={broker_port}",
                f"--device={self.device}",
                f"--qos={qos}",
            ]
            env = dict(os.environ)
        if pinned:
            command = [*taskset(), "--cpu-list", str(SUT_CPU), *command]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(  # noqa: S603 - our own command line
                guarded(command),
                cwd=workdir,  # no .env of the checkout is read
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        self.stat = ProcStat(self.process.pid)
        self.clock = ThreadClock(self.process.pid)  # its own CPU in ns (the quiet phases)

    def _bridge_env(self, broker_port: int, workdir: Path) -> dict[str, str]:
        spool = f"spool-{self.device}.db" if self.run == 1 else f"spool-{self.device}-{self.run}.db"
        return bridge_env(
            broker_port,
            workdir,
            self.qos,
            BRIDGE_READER_HOST="127.0.0.1",
            BRIDGE_READER_PORT=str(self.reader.port),
            BRIDGE_DEVICE_ID=self.device,
            BRIDGE_SPOOL_PATH=str(workdir / spool),
            BRIDGE_LOCAL_REPLY="accept" if self.kind == "local" else "off",
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def check(self) -> None:
        if not self.alive():
            raise BenchError(
                f"{self.name} exited with status {self.process.returncode}; see {self.log}"
            )

    def stop(self) -> int:
        status = stop_process(self.process)
        self.reader.close()
        return status


def bridge_env(broker_port: int, workdir: Path, qos: int, **settings: str) -> dict[str, str]:
    """The environment of a bridge under test: none of ours BRIDGE_*, the broker, ``qos``,
    discovery off, no command rate limit and no command gap, warnings only; then
    ``settings`` (the reader or the readers file, the spool, ...)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("BRIDGE_")}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        XDG_STATE_HOME=str(workdir),
        BRIDGE_MQTT_HOST="127.0.0.1",
        BRIDGE_MQTT_PORT=str(broker_port),
        BRIDGE_MQTT_QOS=str(qos),
        BRIDGE_LOG_LEVEL="WARNING",
        BRIDGE_HA_DISCOVERY="false",
        BRIDGE_COMMAND_RATE="0",
        BRIDGE_COMMAND_GAP="0",
    )
    env.update(settings)
    return env


def paho_version() -> str:
    return version("paho-mqtt")


def git_state() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607 - git from PATH
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "bridge"],  # noqa: S607
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        return "?"
    digest = hashlib.sha256()
    root = REPO / "bridge"
    for path in sorted(root.rglob("*.py")):  # subpackages too: bridge/mqtt/ was left out
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    state = " + uncommitted changes in bridge/" if dirty else ""
    return f"{head}{state} (bridge/**/*.py sha256 {digest.hexdigest()[:12]})"
