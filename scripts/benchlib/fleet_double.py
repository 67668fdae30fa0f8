"""The readers' side of a fleet's links, in the benchmark's process: one listening socket per
simulated reader, each serving one client, all accepted and read by one thread; no parsing.

Why not ``bridge.fleet_simulator.FleetSimulator``: its events carry no write time (the latency
is measured from the write), its ticks run in its own loop (the benchmark needs to write
closed loop too, paced by what the subscriber received), and it would tie the benchmark to
the bridge's own code. The events here are the one-reader benchmark's
(:func:`benchlib.event.render_event`): the reader's own counter in ``TagId`` (as
FleetSimulator numbers them too) and ``BenchT``, the ``time.time_ns()`` just before the write.
Events are written from the caller's thread with a blocking ``sendall`` (at most 10 s).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from typing import Final

from benchlib.errors import BenchError
from benchlib.event import SEPARATOR, render_batch, render_event
from benchlib.fleet_recorder import Track

SEND_TIMEOUT: Final = 10.0
"""Seconds one write to a system under test may block (it stopped reading its reader)."""


class FleetDouble:
    """``len(tracks)`` simulated readers on loopback, reader ``i`` on ``ports[i]``, its events
    counted in ``tracks[i]``."""

    def __init__(self, tracks: list[Track]) -> None:
        self.tracks = tracks
        self._listeners = [socket.create_server(("127.0.0.1", 0)) for _ in tracks]
        self.ports: list[int] = [sock.getsockname()[1] for sock in self._listeners]
        self._clients: list[socket.socket | None] = [None] * len(tracks)
        self.connected = 0  # readers serving a client now
        self.connections = 0  # clients served so far (a reconnection counts again)
        self.received_bytes = 0  # from the clients: commands, if any
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        for index, sock in enumerate(self._listeners):
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ, (index, True))
        self._thread = threading.Thread(target=self._run, name="fleet-double", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            for key, _ in self._selector.select():
                if key.data is None:
                    return  # close()
                index, listening = key.data
                if listening:
                    self._accept(index)
                else:
                    self._read(index, key.fileobj)  # type: ignore[arg-type]

    def _accept(self, index: int) -> None:
        try:
            sock, _ = self._listeners[index].accept()
        except OSError:
            return
        if self._clients[index] is not None:  # a reader serves one client
            sock.close()
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(SEND_TIMEOUT)  # for sendall; select() says when recv has data
        self._clients[index] = sock
        self.connected += 1
        self.connections += 1
        self._selector.register(sock, selectors.EVENT_READ, (index, False))

    def _read(self, index: int, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if data:
            self.received_bytes += len(data)
            return
        self._selector.unregister(sock)
        if self._clients[index] is sock:
            self._clients[index] = None
            self.connected -= 1
        sock.close()

    def emit(self, index: int, count: int = 1) -> int:
        """Write reader ``index``'s next ``count`` events at once; how many were written (0
        when it has no client: they are counted ``unwritten``, and keep no number)."""
        track, sock = self.tracks[index], self._clients[index]
        if sock is None:
            track.unwritten += count
            return 0
        t_ns = time.time_ns()
        if count == 1:
            data = render_event(track.sent, t_ns) + SEPARATOR
        else:
            data = render_batch(track.sent, count, t_ns)
        try:
            sock.sendall(data)
        except TimeoutError:
            raise BenchError(
                f"reader {track.device}: the system under test stopped reading for "
                f"{SEND_TIMEOUT:g} s"
            ) from None
        except OSError:
            track.unwritten += count  # the client just left
            return 0
        track.sent += count
        return count

    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(5)
        for sock in [*self._listeners, *self._clients]:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        self._clients = [None] * len(self.tracks)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
