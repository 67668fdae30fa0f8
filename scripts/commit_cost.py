"""What a spool commit costs in the loop, and what it costs handed to one worker thread.

Issue 11 asks which is cheaper for the group commit of one loop turn: committing in the
loop (what ``bridge/upkeep.py`` does) or in the one SQLite worker thread. This puts the
same turns (``--events`` per turn, each turn's rows acknowledged and deleted by the next
commit, as in the bridge) through the bridge's own ``SpoolOutbox`` both ways and prints, per
commit, the process's CPU time (every thread) and the loop thread's own CPU time (what an
event read meanwhile would wait for).

    python scripts/commit_cost.py [--turns 3000] [--events 1 10 100]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bridge.outbox import Pending
from bridge.spool_outbox import SpoolOutbox

PAYLOAD = b'{"TagId":"04A1B2C3D4E5F6","Protocol":"ISO14443-A","Reader":"Contactless"}'


async def _turns(
    outbox: SpoolOutbox, turns: int, events: int, worker: ThreadPoolExecutor | None
) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    process, own = time.process_time(), time.thread_time()
    for _ in range(turns):
        outbox.put_many([(PAYLOAD, time.time())] * events)
        taken: list[Pending] = []
        while (item := outbox.take()) is not None:
            taken.append(item)
        if worker is None:
            outbox.commit()
        else:
            await loop.run_in_executor(worker, outbox.commit)
        for item in taken:
            outbox.ack(item)  # deleted by the next commit, as in the bridge
    return (time.process_time() - process) / turns, (time.thread_time() - own) / turns


def measure(turns: int, events: int, threaded: bool) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        outbox = SpoolOutbox(Path(tmp) / "spool.db", max_bytes=256 << 20, max_age=3600)
        worker = ThreadPoolExecutor(max_workers=1) if threaded else None
        try:
            asyncio.run(_turns(outbox, turns // 10, events, worker))  # warm-up
            return asyncio.run(_turns(outbox, turns, events, worker))
        finally:
            if worker is not None:
                worker.shutdown()
            outbox.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=3000)
    parser.add_argument("--events", type=int, nargs="+", default=[1, 10, 100])
    args = parser.parse_args()
    print("events/turn | where        | CPU per commit (all threads) | loop thread's CPU")
    for events in args.events:
        for threaded in (False, True):
            process, own = measure(args.turns, events, threaded)
            where = "worker thread" if threaded else "in the loop"
            print(f"{events:11d} | {where:13s}| {process * 1e6:21.1f} µs | {own * 1e6:12.1f} µs")


if __name__ == "__main__":
    main()
