"""The systems under test of the fleet benchmark, each with its simulated readers: the bridge in
fleet mode (one process, a readers file), the bare fleet path (``bench.py --fleet-bare``), and
one-reader bridges (one process per reader); it starts, watches and stops them, and reads
their CPU (schedstat, summed over processes and threads) and PSS (summed)."""

from __future__ import annotations

import contextlib
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Final, Literal

from benchlib.errors import BenchError
from benchlib.fleet_double import FleetDouble
from benchlib.fleet_recorder import Track
from benchlib.system import BENCH, bridge_env
from harness import ProcStat, ThreadClock, ThreadTime, guarded  # scripts/harness.py

FleetKind = Literal["bridge", "baseline", "processes", "single", "shards"]
NAMES: Final[dict[FleetKind, str]] = {
    "bridge": "fleet bridge",
    "baseline": "bare fleet path",
    "processes": "one-reader bridges",
    "single": "one-reader bridge",
    "shards": "fleet bridge in shards",
}
DEVICE_PREFIX: Final[dict[FleetKind, str]] = {
    "bridge": "r",
    "baseline": "b",
    "processes": "p",
    "single": "s",
    "shards": "h",
}


def device_ids(kind: FleetKind, count: int) -> list[str]:
    """``r0000``, ``r0001``, ... (the bare path's ``b0000``, ...: topics of their own)."""
    digits = max(4, len(str(count - 1)))
    return [f"{DEVICE_PREFIX[kind]}{i:0{digits}d}" for i in range(count)]


def pss_kb(pid: int) -> int:
    """Proportional set size (``/proc/<pid>/smaps_rollup``): shared pages divided among the
    processes that share them, so that the PSS of several processes adds up; -1 if gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return -1
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return -1


class FleetSut:
    """One system under test: its processes, its readers (a :class:`FleetDouble`), each
    reader's phase in its 1 s period (drawn at random, like FleetSimulator's). ``shards``:
    for the kind "shards", that many fleet bridges share one readers file, each serving its
    ``BRIDGE_SHARD=K/shards`` (README, Fleet), as a StatefulSet's replicas do."""

    def __init__(
        self,
        kind: FleetKind,
        readers: int,
        broker_port: int,
        workdir: Path,
        run: int,
        *,
        shards: int = 2,
    ) -> None:
        self.kind, self.run, self.workdir = kind, run, workdir
        self.name = NAMES[kind]
        self.devices = device_ids(kind, readers)
        self.double = FleetDouble([Track(device) for device in self.devices])
        rng = random.Random(f"{kind}-{run}")  # noqa: S311 - phases, not secrets
        self.phases = [rng.random() for _ in self.devices]
        self.log = workdir / f"{kind}-{run}.log"
        self.started_ns = time.time_ns()
        if kind == "bridge":
            commands = [self._fleet_bridge(broker_port)]
        elif kind == "shards":
            commands = [self._fleet_bridge(broker_port, (k, shards)) for k in range(shards)]
        elif kind == "baseline":
            commands = [self._bare(broker_port)]
        else:
            commands = [self._one_reader(i, broker_port) for i in range(readers)]
        self.processes = [self._spawn(command, env) for command, env in commands]
        self.stats = [ProcStat(process.pid) for process in self.processes]
        self.clocks = [ThreadClock(process.pid) for process in self.processes]

    @property
    def tracks(self) -> list[Track]:
        return self.double.tracks

    # -- starting -----------------------------------------------------------------------

    def _readers_file(self) -> Path:
        path = self.workdir / f"readers-{self.kind}-{self.run}.toml"
        tables = [
            f'[[reader]]\nreader_host = "127.0.0.1"\nreader_port = {port}\ndevice_id = "{device}"\n'
            for device, port in zip(self.devices, self.double.ports, strict=True)
        ]
        path.write_text("\n".join(tables))
        return path

    def _fleet_bridge(
        self, broker_port: int, shard: tuple[int, int] | None = None
    ) -> tuple[list[str], dict[str, str]]:
        """The bridge in fleet mode; with ``shard`` (K, N), its shard K of N, with a spool of
        its own (a spool file is one process's)."""
        settings = {}
        name = f"spool-fleet-{self.run}.db"
        if shard is not None:
            settings["BRIDGE_SHARD"] = f"{shard[0]}/{shard[1]}"
            name = f"spool-shard-{shard[0]}-{self.run}.db"
        env = bridge_env(
            broker_port,
            self.workdir,
            1,
            BRIDGE_READERS_FILE=str(self._readers_file()),
            BRIDGE_SPOOL_PATH=str(self.workdir / name),
            **settings,
        )
        return [sys.executable, "-m", "bridge", "run"], env

    def _bare(self, broker_port: int) -> tuple[list[str], dict[str, str]]:
        command = [
            sys.executable,
            str(BENCH),
            "--fleet-bare",
            f"--readers-file={self._readers_file()}",
            f"--mqtt-port={broker_port}",
        ]
        return command, bridge_env(broker_port, self.workdir, 1)  # (it reads no BRIDGE_*)

    def _one_reader(self, index: int, broker_port: int) -> tuple[list[str], dict[str, str]]:
        device = self.devices[index]
        env = bridge_env(
            broker_port,
            self.workdir,
            1,
            BRIDGE_READER_HOST="127.0.0.1",
            BRIDGE_READER_PORT=str(self.double.ports[index]),
            BRIDGE_DEVICE_ID=device,  # and so its client id: springcore-bridge-{device}
            BRIDGE_SPOOL_PATH=str(self.workdir / f"spool-{device}-{self.run}.db"),
        )
        return [sys.executable, "-m", "bridge", "run"], env

    def _spawn(self, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            return subprocess.Popen(  # noqa: S603 - our own command line
                guarded(command),
                cwd=self.workdir,  # no .env of the checkout is read
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,  # Ctrl-C is ours to handle
            )

    # -- watching -----------------------------------------------------------------------

    def check(self) -> None:
        """BenchError if a process died; reads the clocks (a thread that ends before the
        next reading keeps its time)."""
        for process in self.processes:
            if process.poll() is not None:
                raise BenchError(
                    f"{self.name} (pid {process.pid}) exited with status "
                    f"{process.returncode}; see {self.log}"
                )
        self.cpu()
        if not self.double.alive():
            raise BenchError(f"the reader double of {self.name} stopped")

    def cpu(self) -> ThreadTime:
        """What the scheduler counted for all its processes' threads since they started."""
        total = ThreadTime()
        for clock in self.clocks:
            reading = clock.read()
            total = ThreadTime(total.cpu_ns + reading.cpu_ns, total.slices + reading.slices)
        return total

    def pss_kb(self) -> int:
        return sum(max(0, pss_kb(process.pid)) for process in self.processes)

    def hwm_kb(self) -> int:
        return sum(max(0, stat.hwm_kb()) for stat in self.stats)

    def log_tail(self, lines: int = 5) -> list[str]:
        """The last lines of its log (warnings and errors: it logs nothing else)."""
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace").splitlines()[-lines:]
        return []

    # -- stopping -----------------------------------------------------------------------

    def stop(self, timeout: float = 10.0) -> list[int]:
        """SIGTERM to every process at once, SIGKILL to what is left after ``timeout`` s; the
        exit statuses (negative: a signal)."""
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
        deadline = time.monotonic() + timeout
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait(10)
        self.double.close()
        return [process.returncode for process in self.processes]
