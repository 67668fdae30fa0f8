"""Process, /proc and port helpers shared by soak.py and bench.py; not part of the bridge."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Raise TimeoutError unless something accepts on 127.0.0.1:``port`` within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)  # polling a port: there is no event to wait on
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def guarded(command: list[str]) -> list[str]:
    """Have the child killed if this process dies, even by SIGKILL (util-linux ``setpriv``).

    The death signal follows the *thread* that started the child: start children from the
    main thread only.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *command] if setpriv else command


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout`` s; the exit status (negative = signal)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(10)
    return process.returncode


def find_mosquitto() -> str | None:
    """The mosquitto binary: on PATH, or where Debian puts it (/usr/sbin)."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def cpu_of(stat: str) -> float:
    """utime + stime in seconds from the text of ``/proc/<pid>/stat`` (fields 14 and 15)."""
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class ProcStat:
    """CPU and memory of one process, from ``/proc``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._cpu = 0.0
        self._switches = 0

    def cpu_seconds(self) -> float:
        """utime + stime (fields 14 and 15 of ``/proc/<pid>/stat``); the last known value
        once the process is gone."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return self._cpu
        self._cpu = cpu_of(stat)
        return self._cpu

    def status_kb(self, name: str) -> int:
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return -1
        for line in text.splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
        return -1

    def rss_kb(self) -> int:
        return self.status_kb("VmRSS")

    def hwm_kb(self) -> int:
        return self.status_kb("VmHWM")

    def threads(self) -> int:
        return self.status_kb("Threads")  # a count, not kB: the same "Name: value" line

    def context_switches(self) -> int:
        """Voluntary + involuntary context switches of all its threads (a hand-over from one
        thread to another costs one or two); the last known value once the process is gone."""
        total = 0
        try:
            tasks = os.listdir(f"/proc/{self.pid}/task")
        except OSError:
            return self._switches
        for task in tasks:
            try:
                text = Path(f"/proc/{self.pid}/task/{task}/status").read_text()
            except OSError:
                continue  # a thread that just ended
            for line in text.splitlines():
                if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                    total += int(line.split()[1])
        self._switches = total
        return total


def has_schedstat() -> bool:
    """Whether this kernel keeps ``/proc/<pid>/task/<tid>/schedstat`` (CONFIG_SCHED_INFO)."""
    return Path(f"/proc/{os.getpid()}/task/{os.getpid()}/schedstat").exists()


@dataclass(frozen=True)
class ThreadTime:
    """What the scheduler counted for the threads of a process: nanoseconds on a CPU and
    the times a thread was put on one (the first and third fields of ``schedstat``)."""

    cpu_ns: int = 0
    slices: int = 0

    def __sub__(self, other: ThreadTime) -> ThreadTime:
        return ThreadTime(self.cpu_ns - other.cpu_ns, self.slices - other.slices)


class ThreadClock:
    """CPU time of one process from ``/proc/<pid>/task/*/schedstat``, summed over its threads.

    Nanoseconds from the scheduler, not the utime/stime of ``/proc/<pid>/stat``, which count
    whole ticks (1/CLOCK_TICKS s, 10 ms here) and cannot resolve a process that runs for a few
    microseconds a second. A thread's counters vanish with it, so the clock accumulates: each
    :meth:`read` adds what every thread ran since the previous read, and all of what a thread
    first seen since then ran (it started in between). A thread that ended between two reads
    loses only what it ran after the earlier one, and the total never goes down: read every
    second or so while threads come and go.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._last: dict[str, tuple[int, int]] = {}
        self._total = ThreadTime()
        self._primed = False
        self.read()  # the threads alive now are the starting point

    def read(self) -> ThreadTime:
        """The total since this clock was made; the last known total once the process is gone."""
        try:
            tasks = os.listdir(f"/proc/{self.pid}/task")
        except OSError:
            return self._total
        seen: dict[str, tuple[int, int]] = {}
        cpu, slices = self._total.cpu_ns, self._total.slices
        for task in tasks:
            try:
                fields = Path(f"/proc/{self.pid}/task/{task}/schedstat").read_text().split()
            except OSError:
                continue  # a thread that just ended
            now = seen[task] = (int(fields[0]), int(fields[2]))
            if not self._primed:
                continue
            before = self._last.get(task, (0, 0))
            if now[0] < before[0] or now[1] < before[1]:
                before = (0, 0)  # a new thread that got the id of an ended one
            cpu += now[0] - before[0]
            slices += now[1] - before[1]
        self._last, self._primed = seen, True
        self._total = ThreadTime(cpu, slices)
        return self._total
