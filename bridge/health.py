"""Answers health probes and Prometheus scrapes over HTTP; it only reads the bridge's state.

``/healthz``: 200 while every loop of the bridge runs, else 503 naming the stopped ones (a
fleet's reader that died and restarts alone is named, with 200: README, Fleet: isolation).
``/readyz``: 200 while the broker session and the reader link are both up, else 503 saying
which is down; a fleet's: while every reader's broker session is up (``fleet_readiness``), and
``/readyz?device_id=...`` is one reader's. ``/metrics``: the Prometheus text format
(OpenMetrics when the scraper asks), every per-reader sample labelled ``device_id``,
built at scrape time from the counters the bridge keeps anyway, so nothing is counted twice
in the hot path. Any other path: 404.

The listener is off unless BRIDGE_HTTP_PORT is set; it runs on the bridge's event loop, which
it never blocks (a request is read with a timeout, answered, and the connection closed).
Request lines are logged at DEBUG only: a probe every few seconds must not fill the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from bridge import __version__
from bridge.options import ConfigError, HttpOptions

log = logging.getLogger(__name__)

PREFIX = "springcore_bridge_"
TEXT = "text/plain; charset=utf-8"
REQUEST_TIMEOUT = 5.0
"""Seconds a client has to send its request."""
MAX_HEADERS = 100


@dataclass(frozen=True)
class Snapshot:
    """The bridge's counters and link states at one instant (read at scrape time)."""

    reader_up: bool
    reader_down_reason: str
    broker_connected: bool
    received: int  # frames read from the reader
    parse_errors: int  # stretches of bytes skipped by the decoder
    published: int  # events the broker acknowledged
    rejected: int  # events the broker refused (a failure reason code)
    buffered: int  # events waiting for the broker's acknowledgement
    dropped: dict[str, int]  # events dropped per reason: size (outbox full), age (too old)
    held_bytes: int  # bytes of the events held for the broker
    spooled: int  # events held in the durable spool file (0 without a spool)
    commands_ok: int
    commands_refused: int
    commands_expired: int
    local_answers: dict[str, int]  # by outcome: sent, expired, withdrawn
    reader_connects: int
    broker_connects: int
    last_event_age: float | None  # seconds since the last frame; None before the first
    restarts: int = 0  # restarts of a fleet's reader after a failure


class Observed(Protocol):
    """What the listener reads; :class:`bridge.app.App` is one."""

    def dead_loops(self) -> list[str]:
        """Names of the parts that are not running and make the process unhealthy."""
        ...

    def restarting(self) -> list[str]:
        """Readers of a fleet waiting for their restart, each with what died."""
        ...

    def snapshots(self) -> dict[str, Snapshot]:
        """One snapshot per reader, by device id."""
        ...

    @property
    def is_fleet(self) -> bool:
        """Readers from a readers file (README, Fleet), not one from the environment."""
        ...


Snapshots = dict[str, Snapshot]
DEVICE = "device_id"
MAX_LISTED = 20
"""Readers named at most in a /readyz answer (a fleet may have a thousand down)."""


Kind = type[CounterMetricFamily] | type[GaugeMetricFamily]
COUNTER, GAUGE = CounterMetricFamily, GaugeMetricFamily
DROPPED_HELP = (
    "events dropped undelivered: size = the outbox's byte bound was reached, "
    "age = older than BRIDGE_OUTBOX_MAX_AGE"
)
COMMANDS_HELP = (
    "commands from MQTT: ok = sent to the reader, refused = invalid or rate-limited, "
    "expired = not sent in time"
)
PER_READER: tuple[tuple[Kind, str, str, Callable[[Snapshot], float | None]], ...] = (
    (COUNTER, "events_received", "events read from the reader", lambda s: s.received),
    (COUNTER, "events_published", "events acknowledged by the broker", lambda s: s.published),
    (COUNTER, "events_rejected", "events the broker refused (ACL?)", lambda s: s.rejected),
    (COUNTER, "parse_errors", "stretches of reader bytes skipped", lambda s: s.parse_errors),
    (GAUGE, "events_buffered", "events waiting for the broker's ack", lambda s: s.buffered),
    (GAUGE, "spool_depth", "events held in the spool file (0 without one)", lambda s: s.spooled),
    (GAUGE, "outbox_bytes", "bytes of the events held for the broker", lambda s: s.held_bytes),
    (
        GAUGE,
        "last_event_age_seconds",
        "seconds since the last event (none before the first)",
        lambda s: s.last_event_age,
    ),
    (COUNTER, "reader_restarts", "restarts of the reader after a failure", lambda s: s.restarts),
)
"""Each metric with one sample per reader: kind, name, help, value (None: no sample)."""
LABELLED: tuple[tuple[Kind, str, str, str, Callable[[Snapshot], dict[str, float]]], ...] = (
    (COUNTER, "events_dropped", DROPPED_HELP, "reason", lambda s: dict(s.dropped)),
    (
        GAUGE,
        "link_up",
        "1 while the link is up",
        "link",
        lambda s: {"reader": s.reader_up, "broker": s.broker_connected},
    ),
    (
        COUNTER,
        "connections",
        "connections made, the first one included",
        "link",
        lambda s: {"reader": s.reader_connects, "broker": s.broker_connects},
    ),
    (
        COUNTER,
        "commands",
        COMMANDS_HELP,
        "result",
        lambda s: {
            "ok": s.commands_ok,
            "refused": s.commands_refused,
            "expired": s.commands_expired,
        },
    ),
    (
        COUNTER,
        "local_answers",
        "reads the bridge answered itself (README, When the broker is down): sent = written "
        "to the reader, expired = not in time, withdrawn = a command from MQTT came first",
        "outcome",
        lambda s: dict(s.local_answers.items()),
    ),
)
"""Each metric with several samples per reader: kind, name, help, label, values by label."""


class BridgeCollector(Collector):
    """Turns the readers' snapshots of one scrape into metric families, every sample
    labelled with its reader's ``device_id`` (one reader or a fleet alike)."""

    def __init__(self, snapshots: Callable[[], Snapshots]) -> None:
        self._snapshots = snapshots

    def collect(self) -> Iterator[Metric]:
        states = self._snapshots()
        yield InfoMetricFamily(PREFIX + "build", "version of the bridge", {"version": __version__})
        for kind, name, documentation, value in PER_READER:
            family = kind(PREFIX + name, documentation, labels=[DEVICE])
            for device, state in states.items():
                sample = value(state)
                if sample is not None:
                    family.add_metric([device], sample)
            yield family
        for kind, name, documentation, label, values in LABELLED:
            family = kind(PREFIX + name, documentation, labels=[DEVICE, label])
            for device, state in states.items():
                for key, sample in sorted(values(state).items()):
                    family.add_metric([device, key], float(sample))
            yield family


def readiness(state: Snapshot) -> str | None:
    """``None`` when ready, else what is down, in words."""
    down = []
    if not state.broker_connected:
        down.append("broker disconnected")
    if not state.reader_up:
        down.append(f"reader link down ({state.reader_down_reason})")
    return "; ".join(down) or None


def fleet_readiness(states: Snapshots, fleet: bool) -> str | None:
    """``None`` when ready, else what is not, in words. One reader is ready when both its
    links are up. A fleet is ready when every reader's broker session is up: a door reader
    that is unplugged must not take the whole process out of service (a Kubernetes pod
    that is not ready stalls rollouts and node drains); its link is in /metrics and in
    ``/readyz?device_id=...``. The first MAX_LISTED readers that are not ready are named."""
    if not fleet:
        (state,) = states.values()
        return readiness(state)
    down = [device for device, state in states.items() if not state.broker_connected]
    listed = ", ".join(down[:MAX_LISTED]) + (" ..." if len(down) > MAX_LISTED else "")
    if down:
        return f"{len(down)} of {len(states)} readers have no broker session: {listed}"
    return None


class HealthServer:
    """The listener, on the event loop: :meth:`start` binds (a port that cannot be bound is a
    :class:`ConfigError`), :meth:`stop` closes. One short request per connection."""

    def __init__(self, options: HttpOptions, observed: Observed) -> None:
        self.options = options
        self._observed = observed
        self._registry = CollectorRegistry()  # our own: nothing of the process-wide default
        self._registry.register(BridgeCollector(observed.snapshots))
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (the configured one once started)."""
        if self._server is None or not self._server.sockets:
            return self.options.port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._serve, self.options.host, self.options.port
            )
        except OSError as exc:
            where = f"{self.options.host}:{self.options.port}"
            raise ConfigError(
                [f"BRIDGE_HTTP_HOST/BRIDGE_HTTP_PORT: cannot listen on {where}: {exc.strerror}"]
            ) from None
        log.info(
            "health and metrics on http://%s:%d/ (healthz, readyz, metrics)",
            self.options.host,
            self.port,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(_read_request(reader), REQUEST_TIMEOUT)
            status, body, content_type = self._answer(*request) if request else _BAD
            data = body if isinstance(body, bytes) else body.encode() + b"\n"
            head = (
                f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(data)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + data)
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            log.debug("health request abandoned", exc_info=True)
        finally:
            writer.close()

    def _answer(self, method: str, target: str, accept: str) -> tuple[int, str | bytes, str]:
        """Status, body and content type for ``method target``."""
        if method != "GET":
            return 405, "only GET is served here", TEXT
        try:
            path = urlsplit(target).path
            if path == "/healthz":
                return self._health()
            if path == "/readyz":
                return self._readiness(urlsplit(target).query)
            if path == "/metrics":
                encode, content_type = choose_encoder(accept)
                return 200, encode(self._registry), content_type
        except Exception:  # a bug here must not take the listener down
            log.exception("health request %s failed", target)
            return 500, "internal error, see the bridge's log", TEXT
        return 404, "not found: try /healthz, /readyz or /metrics", TEXT

    def _readiness(self, query: str) -> tuple[int, str, str]:
        states = self._observed.snapshots()
        device = parse_qs(query).get("device_id", [None])[0]
        if device is not None:
            if device not in states:
                return 404, f"no reader {device!r} here", TEXT
            down = readiness(states[device])
        else:
            down = fleet_readiness(states, self._observed.is_fleet)
        return (503, f"not ready: {down}", TEXT) if down else (200, "ready", TEXT)

    def _health(self) -> tuple[int, str, str]:
        """503 when a part that the process needs died; a fleet's reader that died and
        restarts alone is named, but the process stays alive (README, Fleet: isolation)."""
        dead = self._observed.dead_loops()
        if dead:
            return 503, f"dead: stopped loop(s): {', '.join(dead)}", TEXT
        restarting = self._observed.restarting()
        if restarting:
            return 200, f"alive; restarting after a failure: {'; '.join(restarting)}", TEXT
        return 200, "alive", TEXT


_BAD = (400, "bad request", TEXT)


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, str] | None:
    """Method, target and Accept header of one HTTP request; ``None`` if it is not one."""
    parts = (await reader.readuntil(b"\n")).decode("latin-1").split()
    accept = ""
    for _ in range(MAX_HEADERS):
        line = (await reader.readuntil(b"\n")).decode("latin-1").strip()
        if not line:
            break
        name, _, value = line.partition(":")
        if name.strip().lower() == "accept":
            accept = value.strip()
    log.debug("health request %s", " ".join(parts[:2]))
    return (parts[0], parts[1], accept) if len(parts) == 3 else None
