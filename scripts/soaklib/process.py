"""The processes the soak starts: our own Mosquitto, restartable on its port, and the bridge
with its /proc readings; it only starts, watches and stops them."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Final

from harness import (  # scripts/harness.py
    ProcStat,
    find_mosquitto,
    free_port,
    guarded,
    stop_process,
    wait_port,
)
from soaklib.errors import SoakError
from soaklib.event import DEVICE_ID

REPO: Final = Path(__file__).resolve().parents[2]


def mosquitto_binary() -> str:
    found = find_mosquitto()
    if not found:
        raise SoakError("mosquitto is not installed (apt-get install mosquitto)")
    return found


def broker_config(port: int, workdir: Path, persistence: bool, autosave: int) -> str:
    """Our Mosquitto's configuration: no queue or in-flight limit, no Nagle, persistence or not."""
    lines = [
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        "max_queued_messages 0",  # docs/paho.md §12: the default 1000 would lose events
        "max_inflight_messages 0",
        "set_tcp_nodelay true",
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
    ]
    if persistence:
        lines += [
            "persistence true",
            f"persistence_location {workdir}/",
            "persistence_file mosquitto.db",
            f"autosave_interval {autosave}",
        ]
    else:
        lines.append("persistence false")
    if os.geteuid() == 0:
        lines.append("user root")  # or mosquitto drops to a user that cannot write here
    return "\n".join(lines) + "\n"


class Broker:
    """Our own Mosquitto, restartable on the same port, SIGTERM or SIGKILL."""

    def __init__(self, workdir: Path, persistence: bool, autosave: int) -> None:
        self.port = free_port()
        self.config = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.config.write_text(broker_config(self.port, workdir, persistence, autosave))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(  # noqa: S603 - our own command line
                guarded([mosquitto_binary(), "-c", str(self.config)]),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,  # Ctrl-C is ours to handle, not the broker's
            )
        wait_port(self.port)

    def stop(self, kill: bool = False) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if kill:
            process.kill()
            process.wait(10)
        else:
            stop_process(process)


class BridgeProcess:
    """``python -m bridge run`` with BRIDGE_* settings; /proc readings of its RSS and CPU."""

    def __init__(self, workdir: Path, reader_port: int, broker_port: int) -> None:
        self.log = workdir / "bridge.log"
        self.spool = workdir / "spool.db"
        env = {name: value for name, value in os.environ.items() if not name.startswith("BRIDGE_")}
        env.update(
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            XDG_STATE_HOME=str(workdir),
            BRIDGE_READER_HOST="127.0.0.1",
            BRIDGE_READER_PORT=str(reader_port),
            BRIDGE_MQTT_HOST="127.0.0.1",
            BRIDGE_MQTT_PORT=str(broker_port),
            BRIDGE_DEVICE_ID=DEVICE_ID,
            BRIDGE_SPOOL_PATH=str(self.spool),
            BRIDGE_LOG_LEVEL="WARNING",
        )
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(  # noqa: S603 - our own command line
                guarded([sys.executable, "-m", "bridge", "run"]),
                cwd=workdir,  # no .env of the checkout is read
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        self.pid = self.process.pid
        self.stat = ProcStat(self.pid)

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_kb(self) -> int:
        return self.stat.rss_kb()

    def hwm_kb(self) -> int:
        return self.stat.hwm_kb()

    def threads(self) -> int:
        return self.stat.threads()

    def cpu_seconds(self) -> float:
        """utime + stime; the last known value once the process is gone."""
        return self.stat.cpu_seconds()

    def open_fds(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return -1

    def spool_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += Path(str(self.spool) + suffix).stat().st_size
        return total

    def stop(self, timeout: float) -> int:
        return stop_process(self.process, timeout)

    def problems(self, limit: int = 20) -> tuple[int, list[str]]:
        """Lines of its log at ERROR/CRITICAL or from a traceback: how many, and the first."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return 0, []
        bad = [
            line
            for line in lines
            if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")
        ]
        return len(bad), bad[:limit]
