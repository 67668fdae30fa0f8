"""Answers health probes and Prometheus scrapes over HTTP; it only reads the bridge's state.

``/healthz``: 200 while every loop of the bridge runs, else 503 naming the stopped ones.
``/readyz``: 200 while the broker session and the reader link are both up, else 503 saying
which is down. ``/metrics``: the Prometheus text format (OpenMetrics when the scraper asks),
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
from urllib.parse import urlsplit

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
    reader_connects: int
    broker_connects: int
    last_event_age: float | None  # seconds since the last frame; None before the first


class Observed(Protocol):
    """What the listener reads; :class:`bridge.app.Bridge` is one."""

    def dead_loops(self) -> list[str]:
        """Names of the bridge's parts that are not running."""
        ...

    def snapshot(self) -> Snapshot: ...


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, value=value)


class BridgeCollector(Collector):
    """Turns one :class:`Snapshot` per scrape into metric families."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        state = self._snapshot()
        yield InfoMetricFamily(PREFIX + "build", "version of the bridge", {"version": __version__})
        yield from _event_metrics(state)
        yield from _link_metrics(state)
        yield from _command_metrics(state)


def _event_metrics(state: Snapshot) -> Iterator[Metric]:
    yield _counter("events_received", "events read from the reader", state.received)
    yield _counter("events_published", "events acknowledged by the broker", state.published)
    yield _counter("events_rejected", "events the broker refused (ACL?)", state.rejected)
    dropped = CounterMetricFamily(
        PREFIX + "events_dropped",
        "events dropped undelivered: size = the outbox's byte bound was reached, age = older "
        "than BRIDGE_OUTBOX_MAX_AGE",
        labels=["reason"],
    )
    for reason, count in sorted(state.dropped.items()):
        dropped.add_metric([reason], count)
    yield dropped
    yield _counter("parse_errors", "stretches of reader bytes skipped", state.parse_errors)
    yield _gauge("events_buffered", "events waiting for the broker's ack", state.buffered)
    yield _gauge("spool_depth", "events held in the spool file (0 without one)", state.spooled)
    yield _gauge("outbox_bytes", "bytes of the events held for the broker", state.held_bytes)
    age = GaugeMetricFamily(
        PREFIX + "last_event_age_seconds", "seconds since the last event (none before the first)"
    )
    if state.last_event_age is not None:
        age.add_metric([], state.last_event_age)
    yield age


def _link_metrics(state: Snapshot) -> Iterator[Metric]:
    up = GaugeMetricFamily(PREFIX + "link_up", "1 while the link is up", labels=["link"])
    up.add_metric(["reader"], float(state.reader_up))
    up.add_metric(["broker"], float(state.broker_connected))
    yield up
    connects = CounterMetricFamily(
        PREFIX + "connections", "connections made, the first one included", labels=["link"]
    )
    connects.add_metric(["reader"], state.reader_connects)
    connects.add_metric(["broker"], state.broker_connects)
    yield connects


def _command_metrics(state: Snapshot) -> Iterator[Metric]:
    commands = CounterMetricFamily(
        PREFIX + "commands",
        "commands from MQTT: ok = sent to the reader, refused = invalid or rate-limited, "
        "expired = not sent in time",
        labels=["result"],
    )
    commands.add_metric(["ok"], state.commands_ok)
    commands.add_metric(["refused"], state.commands_refused)
    commands.add_metric(["expired"], state.commands_expired)
    yield commands


def readiness(state: Snapshot) -> str | None:
    """``None`` when ready, else what is down, in words."""
    down = []
    if not state.broker_connected:
        down.append("broker disconnected")
    if not state.reader_up:
        down.append(f"reader link down ({state.reader_down_reason})")
    return "; ".join(down) or None


class HealthServer:
    """The listener, on the event loop: :meth:`start` binds (a port that cannot be bound is a
    :class:`ConfigError`), :meth:`stop` closes. One short request per connection."""

    def __init__(self, options: HttpOptions, observed: Observed) -> None:
        self.options = options
        self._observed = observed
        self._registry = CollectorRegistry()  # our own: nothing of the process-wide default
        self._registry.register(BridgeCollector(observed.snapshot))
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
                dead = self._observed.dead_loops()
                if dead:
                    return 503, f"dead: stopped loop(s): {', '.join(dead)}", TEXT
                return 200, "alive", TEXT
            if path == "/readyz":
                down = readiness(self._observed.snapshot())
                return (503, f"not ready: {down}", TEXT) if down else (200, "ready", TEXT)
            if path == "/metrics":
                encode, content_type = choose_encoder(accept)
                return 200, encode(self._registry), content_type
        except Exception:  # a bug here must not take the listener down
            log.exception("health request %s failed", target)
            return 500, "internal error, see the bridge's log", TEXT
        return 404, "not found: try /healthz, /readyz or /metrics", TEXT


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
