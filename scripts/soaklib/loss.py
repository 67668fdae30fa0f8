"""What the ledger says was lost at the end of a run, and whose loss each event was: a broker
SIGKILL's, an RST's or the bridge's; no I/O."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from soaklib.emitter import EmitterStats
from soaklib.ledger import SENT, Ledger


@dataclass(frozen=True)
class LostEvent:
    """One lost event, as the report's ``lost_sample`` lists it."""

    counter: int
    sent_at_s: float
    reader_connection: int
    exposed_to_sigkill: bool
    unsent_at_rst: bool


@dataclass(frozen=True)
class Losses:
    """Counts over every counter the emitter attempted, and the first lost events."""

    attempted: int
    lost: list[int]  # sent and never received
    phantom: int  # received and never sent
    beyond: int  # received with a counter the emitter never reached
    seq_not_increasing: int  # received, in counter order, seq not above the one before
    sigkill: int  # lost and exposed to a broker SIGKILL
    unsent: int  # lost, not exposed to a SIGKILL, unsent by the simulator at an RST
    sample: list[LostEvent]  # the first 50 lost

    @property
    def by_bridge(self) -> int:
        return len(self.lost) - self.sigkill - self.unsent


def count_losses(
    ledger: Ledger, emitter: EmitterStats, exposed: set[int], discarded: set[int], started: float
) -> Losses:
    """The losses, ``exposed`` to a broker SIGKILL or ``discarded`` by an RST excused apart."""
    with ledger.lock:
        attempted = emitter.attempted
        lost = [c for c in range(attempted) if ledger.state[c] == SENT and not ledger.received[c]]
        phantom = sum(1 for c in range(attempted) if ledger.state[c] != SENT and ledger.received[c])
        beyond = sum(1 for c in range(attempted, len(ledger.received)) if ledger.received[c])
        seqs = [ledger.seq[c] for c in range(attempted) if ledger.received[c]]
        sample = [
            LostEvent(
                counter=c,
                sent_at_s=round(ledger.sent_at[c] - started, 3),
                reader_connection=ledger.connection[c],
                exposed_to_sigkill=c in exposed,
                unsent_at_rst=c in discarded,
            )
            for c in lost[:50]
        ]
    return Losses(
        attempted=attempted,
        lost=lost,
        phantom=phantom,
        beyond=beyond,
        seq_not_increasing=sum(1 for a, b in itertools.pairwise(seqs) if b <= a),
        sigkill=sum(1 for c in lost if c in exposed),
        unsent=sum(1 for c in lost if c in discarded and c not in exposed),
        sample=sample,
    )
