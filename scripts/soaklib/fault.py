"""What a fault exposes: the events a broker SIGKILL may lose, the bytes a reader RST would
discard, and the reader drop itself; it records, :class:`soaklib.soak.Soak` decides when."""

from __future__ import annotations

import fcntl
import socket
import struct
import threading
import time
from typing import Final

from bridge.simulator import Simulator
from soaklib.emitter import Emitter
from soaklib.ledger import SENT, Ledger
from soaklib.result import KillWindow, ResetDrop
from soaklib.subscriber import Subscriber

SIOCOUTQNSD: Final = 0x894B
"""ioctl: bytes in a TCP socket's send queue not yet sent (linux/sockios.h)."""


def unsent_bytes(simulator: Simulator) -> int:
    """Bytes the simulator's kernel has not sent to the bridge yet (0 without a client)."""
    sock = getattr(simulator, "_client", None)  # the simulator keeps no public handle
    if not isinstance(sock, socket.socket):
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), SIOCOUTQNSD, b"\0\0\0\0")
    except OSError:
        return 0
    value: int = struct.unpack("i", raw)[0]
    return value


def kill_window(ledger: Ledger, subscriber: Subscriber, elapsed: float) -> KillWindow:
    """The events a broker SIGKILL now may lose: sent, not received, newer than all received."""
    with ledger.lock:
        end = min(len(ledger.state), len(ledger.received))
        outstanding = [
            counter
            for counter in range(end)
            if ledger.state[counter] == SENT and not ledger.received[counter]
        ]
        highest = subscriber.highest
    exposed = [counter for counter in outstanding if counter > highest]
    return KillWindow(round(elapsed, 1), len(outstanding), exposed)


def wait_unsent(
    simulator: Simulator, ledger: Ledger, emitter: Emitter, elapsed: float
) -> ResetDrop:
    """With the emitter paused: wait until the simulator's kernel has sent its bytes (at most
    2 s); the events still unsent would be discarded by an RST now."""
    before = unsent_bytes(simulator)
    waited = time.monotonic()
    while unsent_bytes(simulator) and time.monotonic() - waited < 2.0:
        time.sleep(0.002)
    drop = ResetDrop(
        round(elapsed, 1),
        before,
        round(1000 * (time.monotonic() - waited), 1),
        unsent_bytes(simulator),
    )
    drop.discarded = unsent_tail(ledger, emitter, simulator.accepted, drop.still_unsent_bytes)
    return drop


def unsent_tail(ledger: Ledger, emitter: Emitter, connection: int, unsent: int) -> list[int]:
    """The last events written to ``connection`` that ``unsent`` bytes hold."""
    tail: list[int] = []
    with ledger.lock:
        counter = emitter.stats.attempted - 1
        while unsent > 0 and counter >= 0 and ledger.connection[counter] == connection:
            if ledger.state[counter] == SENT:
                tail.append(counter)
                unsent -= ledger.size[counter]
            counter -= 1
    return tail


def drop_client(simulator: Simulator, reset: bool, timeout: float = 5.0) -> bool:
    """Drop the simulator's client, a FIN or an RST; False if that blocked ``timeout`` s."""
    # In a thread: a drop waits for the simulator's lock, which a write blocked on a
    # bridge that stopped reading would hold for ever.
    dropper = threading.Thread(target=simulator.drop_client, args=(reset,), daemon=True)
    dropper.start()
    dropper.join(timeout)
    return not dropper.is_alive()


def excused(kill_windows: list[KillWindow], reset_drops: list[ResetDrop]) -> set[int]:
    """Events a loss of which is not the bridge's: see KillWindow and ResetDrop."""
    events: set[int] = set()
    for window in kill_windows:
        events.update(window.exposed)
    for drop in reset_drops:
        events.update(drop.discarded)
    return events
