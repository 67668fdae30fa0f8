"""One-shot probes for the command line: ``check`` (reader, broker, spool, allow files, HTTP
port) and ``health`` (HTTP).

Each probe returns a :class:`CheckResult` whose :meth:`~CheckResult.line` is what the user
reads. The reader probe holds the reader's single connection slot for at most one second and
closes it at once; the spool and port probes create nothing and hold nothing afterwards.
Nothing here runs inside the bridge.
"""

from __future__ import annotations

import errno
import http.client
import select
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from bridge.config import MB, HttpOptions, MqttOptions, OutboxOptions, ReaderOptions
from bridge.local import AllowListError, parse_allow_list
from bridge.spool import check_spool

BUSY_WINDOW = 1.0
"""A reader that closes our connection within this many seconds is busy with another client."""
BROKER_TIMEOUT = 5.0
HEALTH_TIMEOUT = 3.0
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - mapped away, never bound


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    subject: str  # "reader 10.0.0.5:4000"
    detail: str  # "reachable", "connection refused"
    hint: str = ""

    def line(self) -> str:
        """``ok   reader 10.0.0.5:4000 reachable`` or ``FAIL subject: detail — hint: ...``."""
        if self.ok:
            return f"ok   {self.subject} {self.detail}"
        hint = f" — hint: {self.hint}" if self.hint else ""
        return f"FAIL {self.subject}: {self.detail}{hint}"


def check_reader(options: ReaderOptions) -> CheckResult:
    """Connect to the reader as the bridge does, see whether it keeps us, and let go."""
    subject = f"reader {options.host}:{options.port}"
    try:
        sock = socket.create_connection(
            (options.host, options.port), timeout=options.connect_timeout
        )
    except OSError as exc:
        detail, hint = describe_reader_error(exc, options.connect_timeout)
        return CheckResult(False, subject, detail, hint)
    with sock:
        busy = is_closed_by_peer(sock, BUSY_WINDOW)
    if busy:
        return CheckResult(
            False,
            subject,
            "busy: another client holds the reader's single slot",
            "stop the other client (a running bridge, a configuration tool) or wait for it",
        )
    return CheckResult(True, subject, "reachable")


def is_closed_by_peer(sock: socket.socket, window: float) -> bool:
    """Whether the peer closes (or resets) the connection within ``window`` s.

    A reader that sends an event keeps us: that answers at once, without waiting.
    """
    readable, _, _ = select.select([sock], [], [], window)
    if not readable:
        return False
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True


def describe_reader_error(exc: OSError, timeout: float) -> tuple[str, str]:
    """What a failed connection to the reader means, and what to look at."""
    if isinstance(exc, socket.gaierror):
        return f"name not resolved ({exc.strerror})", "check BRIDGE_READER_HOST"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused", (
            "nothing listens there: is the reader's TCP server on (02C0=24) "
            "and BRIDGE_READER_PORT right?"
        )
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g} s", (
            "no answer: reader powered off, wrong BRIDGE_READER_HOST, or a firewall"
        )
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"unreachable ({exc.strerror})", "check the network route to BRIDGE_READER_HOST"
    return f"{exc.strerror or exc}", ""


def check_broker(options: MqttOptions, timeout: float = BROKER_TIMEOUT) -> CheckResult:
    """Connect, authenticate (and TLS) with the bridge's settings, publish nothing, leave."""
    from bridge.mqtt import publish_once  # noqa: PLC0415 - paho only for this probe

    subject = f"broker {options.host}:{options.port}"
    failure = publish_once(options, [], timeout)
    if failure is None:
        how = " with TLS" if options.tls else ""
        who = f" as {options.username}" if options.username else ""
        return CheckResult(True, subject, f"connected{how}{who}")
    return CheckResult(False, subject, *split_hint(failure))


def split_hint(reason: str) -> tuple[str, str]:
    """``"refused: check BRIDGE_X"`` -> ``("refused", "check BRIDGE_X")``; else a generic hint."""
    detail, _, fix = reason.partition(": ")
    if "BRIDGE_" in fix:
        return detail, fix
    return reason, "check BRIDGE_MQTT_HOST and BRIDGE_MQTT_PORT, and that the broker runs"


def check_spool_path(options: OutboxOptions) -> CheckResult:
    """Whether the bridge could open and lock its spool; ``none`` is memory only."""
    if options.spool_path is None:
        held = f"at most {options.max_bytes / MB:g} MB, BRIDGE_MEMORY_MAX_MB"
        return CheckResult(True, "spool", f"off: events wait in memory only ({held})")
    subject = f"spool {options.spool_path}"
    problem = check_spool(options.spool_path)
    if problem is None:
        created = "" if options.spool_path.exists() else " (created at start)"
        return CheckResult(True, subject, f"usable{created}")
    if "in use" in problem:
        hint = "stop the running bridge first, or give this one its own BRIDGE_SPOOL_PATH"
    else:
        hint = "set BRIDGE_SPOOL_PATH to a file in a writable directory, or none (memory only)"
    return CheckResult(False, subject, problem, hint)


def check_allow_file(path: Path) -> CheckResult:
    """The local answers' allow file: how many tags, and whether others can read it (its
    contents are never shown; the settings check has parsed it already)."""
    try:
        info = path.stat()
        tags = len(parse_allow_list(path.read_text(encoding="utf-8")).tags)
    except (OSError, UnicodeDecodeError, AllowListError) as exc:  # changed since: say so
        return CheckResult(False, f"allow file {path}", str(exc), "fix it, or unset it")
    mode = stat.S_IMODE(info.st_mode)
    private = "" if not mode & 0o077 else f"; readable by other users (mode {mode:o}): chmod 600 it"
    return CheckResult(True, f"allow file {path}", f"{tags} tag(s){private}")


def check_listener(options: HttpOptions) -> CheckResult:
    """Whether the health listener could listen on its address: bind as ``http.server``
    does (SO_REUSEADDR), then let go at once."""
    subject = f"http {_host_port(options.host, options.port)}"
    family = socket.AF_INET6 if ":" in options.host else socket.AF_INET  # as health._Server
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((options.host, options.port))
    except OSError as exc:
        return CheckResult(False, subject, *describe_bind_error(exc))
    return CheckResult(True, subject, "free to listen on")


def describe_bind_error(exc: OSError) -> tuple[str, str]:
    """What a failed bind of the health listener means, and what to change."""
    if isinstance(exc, socket.gaierror):
        return f"name not resolved ({exc.strerror})", "check BRIDGE_HTTP_HOST"
    if exc.errno == errno.EADDRINUSE:
        return "address already in use", (
            "a running bridge or another program listens there: stop it, "
            "or set BRIDGE_HTTP_PORT to a free port"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return "not an address of this machine", (
            "set BRIDGE_HTTP_HOST to one of its addresses, 127.0.0.1, or 0.0.0.0 for all"
        )
    if exc.errno == errno.EACCES:
        return "permission denied", "ports below 1024 need privileges: use BRIDGE_HTTP_PORT=8080"
    return f"{exc.strerror or exc}", "check BRIDGE_HTTP_HOST and BRIDGE_HTTP_PORT"


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_health(options: HttpOptions, path: str = "/healthz") -> CheckResult:
    """GET ``path`` from the bridge's own listener; ok on 200."""
    host = _WILDCARDS.get(options.host, options.host)
    url = f"http://{_host_port(host, options.port)}{path}"
    connection = http.client.HTTPConnection(host, options.port, timeout=HEALTH_TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read(1000).decode("utf-8", "replace").strip()
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        hint = "is the bridge running, with this BRIDGE_HTTP_PORT?"
        return CheckResult(False, url, f"no answer ({reason})", hint)
    finally:
        connection.close()
    first = body.splitlines()[0] if body else ""
    return CheckResult(response.status == 200, url, f"{response.status} {first}".strip())
