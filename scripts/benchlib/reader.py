"""The reader double: the reader's side of the TCP link, serving one client; no parsing."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time

from benchlib.errors import BenchError


class ReaderDouble:
    """The reader's side of the link: serves one client, writes events, timestamps what it
    receives (commands) as ``(time.time_ns(), bytes)`` in :attr:`incoming`. With
    :attr:`pace` set, it reads them in batches, that often: its thread then does not wake up
    for each command just as the subscriber in the same process receives an event."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._client: socket.socket | None = None
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.incoming: queue.Queue[tuple[int, bytes]] = queue.Queue()
        self.accepted = 0
        self.pace = 0.0  # seconds between reads of what the client sent (0: read at once)
        threading.Thread(target=self._accept_loop, name="reader-accept", daemon=True).start()

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._client is not None:  # the reader serves one client
                    sock.close()
                    continue
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._client = sock
                self.accepted += 1
            self.connected.set()
            threading.Thread(
                target=self._read_loop, args=(sock,), name="reader-read", daemon=True
            ).start()

    def _read_loop(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            now = time.time_ns()
            if not data:
                break
            self.incoming.put((now, data))
            if self.pace:
                time.sleep(self.pace)  # what came meanwhile waits in the socket
        with self._lock:
            if self._client is sock:
                self._client = None
                self.connected.clear()
        sock.close()

    def write(self, data: bytes) -> None:
        client = self._client
        if client is None:
            raise BenchError("the system under test is not connected to its reader double")
        try:
            client.sendall(data)
        except OSError as exc:
            raise BenchError(f"writing to the system under test failed: {exc}") from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            client.close()
