"""Answers health probes and Prometheus scrapes over HTTP; it only reads the bridge's state.

``/healthz``: 200 while every loop of the bridge runs, else 503 naming the stopped ones.
``/readyz``: 200 while the broker session and the reader link are both up, else 503 saying
which is down. ``/metrics``: the Prometheus text format (OpenMetrics when the scraper asks),
built at scrape time from the counters the bridge keeps anyway, so nothing is counted twice
in the hot path. Any other path: 404.

The listener is off unless BRIDGE_HTTP_PORT is set. Request lines are logged at DEBUG only: a
probe every few seconds must not fill the log.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
from bridge.loops import Fatal, watched_thread
from bridge.options import ConfigError, HttpOptions

log = logging.getLogger(__name__)

PREFIX = "springcore_bridge_"
TEXT = "text/plain; charset=utf-8"
POLL = 0.1
"""Seconds between two looks of the serving loop at a stop request (socketserver polls)."""


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
        """Names of the bridge's threads that are not running."""
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, options: HttpOptions, observed: Observed) -> None:
        if ":" in options.host:
            self.address_family = socket.AF_INET6
        self.observed = observed
        self.registry = CollectorRegistry()  # our own: nothing of the process-wide default
        self.registry.register(BridgeCollector(observed.snapshot))
        super().__init__((options.host, options.port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # the name http.server dispatches on
        try:
            path = urlsplit(self.path).path
            if path == "/healthz":
                self._healthz()
            elif path == "/readyz":
                self._readyz()
            elif path == "/metrics":
                self._metrics()
            else:
                self._send(404, "not found: try /healthz, /readyz or /metrics")
        except Exception:  # a bug here must not take the listener down
            log.exception("health request %s failed", self.path)
            self._send(500, "internal error, see the bridge's log")

    def _healthz(self) -> None:
        dead = self.server.observed.dead_loops()
        if dead:
            self._send(503, f"dead: stopped loop(s): {', '.join(dead)}")
        else:
            self._send(200, "alive")

    def _readyz(self) -> None:
        down = readiness(self.server.observed.snapshot())
        if down:
            self._send(503, f"not ready: {down}")
        else:
            self._send(200, "ready")

    def _metrics(self) -> None:
        encode, content_type = choose_encoder(self.headers.get("Accept", ""))
        self._send(200, encode(self.server.registry), content_type)

    def _send(self, status: int, body: str | bytes, content_type: str = TEXT) -> None:
        data = body if isinstance(body, bytes) else body.encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class HealthServer:
    """The listener: :meth:`start` binds and serves in a daemon thread, :meth:`stop` ends it."""

    def __init__(
        self, options: HttpOptions, observed: Observed, on_fatal: Fatal | None = None
    ) -> None:
        self.options = options
        self._observed = observed
        self._on_fatal = on_fatal or (lambda name: None)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def port(self) -> int:
        """The bound port (the configured one once started)."""
        return self._server.server_address[1] if self._server else self.options.port

    def start(self) -> None:
        """Bind and serve; a port that cannot be bound is a :class:`ConfigError`."""
        try:
            self._server = _Server(self.options, self._observed)
        except OSError as exc:
            where = f"{self.options.host}:{self.options.port}"
            raise ConfigError(
                [f"BRIDGE_HTTP_HOST/BRIDGE_HTTP_PORT: cannot listen on {where}: {exc.strerror}"]
            ) from None
        server = self._server
        self._thread = watched_thread(
            "http", lambda: server.serve_forever(POLL), self._on_fatal, lambda: self._stopping
        )
        self._thread.start()
        log.info(
            "health and metrics on http://%s:%d/ (healthz, readyz, metrics)",
            self.options.host,
            self.port,
        )

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._stopping = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(2)
        self._server = self._thread = None
