"""The reader's TCP socket: opening it from the event loop, tuning it, reading its kernel
state, and saying why it failed in words that point at the fix.

Nothing here knows the reader's protocol or MQTT (``bridge.reader`` uses these).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import struct
from collections.abc import Sequence
from typing import Any

from bridge.options import ReaderOptions


def keepalive_timings(window: float) -> tuple[int, int, int]:
    """TCP keepalive idle, interval and count that notice a dead host within ``window`` s."""
    total = max(2, int(window))
    idle = max(1, total // 3)
    count = min(4, total - idle)  # fewer probes for very short windows, never zero
    interval = max(1, (total - idle) // count)
    return idle, interval, count


async def open_socket(options: ReaderOptions) -> socket.socket:
    """A connected, tuned, non-blocking socket to the reader; OSError (TimeoutError
    included) if no address of the host answers within BRIDGE_READER_CONNECT_TIMEOUT."""
    loop = asyncio.get_running_loop()
    addresses = await _resolve(options.host, options.port)
    error: OSError = OSError(errno.EHOSTUNREACH, "no address")
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, address), options.connect_timeout)
            tune(sock, options.keepalive)
        except OSError as exc:  # TimeoutError is one
            sock.close()
            error = exc
        except BaseException:
            sock.close()
            raise
        else:
            return sock
    raise error


_Address = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]


async def _resolve(host: str, port: int) -> Sequence[_Address]:
    """The addresses of ``host``; an IP address needs no lookup (and no executor thread)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        loop = asyncio.get_running_loop()
        return await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    return [(family, socket.SOCK_STREAM, 0, "", (host, port))]


def tune(sock: socket.socket, keepalive: float) -> None:
    # Keepalive notices a reader that lost power; silence alone is normal (no card for hours).
    idle, interval, count = keepalive_timings(keepalive)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
    # Bounds how long written data may stay unacknowledged (a command to a dead host).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(keepalive * 1000))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def unacknowledged(sock: socket.socket) -> tuple[int, float]:
    """Segments written and not acknowledged, and seconds since the last ACK came."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    if len(info) < 60:
        return 0, 0.0
    # struct tcp_info (linux/tcp.h): 8 bytes of u8 fields, then u32s; tcpi_unacked at offset
    # 24, tcpi_last_ack_recv (ms since the last ACK) at offset 56.
    (unacked,) = struct.unpack_from("I", info, 24)
    (last_ack_ms,) = struct.unpack_from("I", info, 56)
    return unacked, last_ack_ms / 1000


def describe_error(exc: BaseException) -> str:
    """Why the link is down, in words that point at the fix."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the reader's host name ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: nothing listens there (is the reader's TCP server on, 02C0=24?)"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the reader"
    if isinstance(exc, TimeoutError):
        return "timed out: no answer from the reader host (powered off, or the network is down)"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"reader host unreachable ({exc.strerror})"
    return f"{type(exc).__name__}: {exc}"
