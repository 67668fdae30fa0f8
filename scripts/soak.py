#!/usr/bin/env python3
"""Soak test of the bridge: hours of events through broker restarts and reader drops.

Not a pytest test: ``python scripts/soak.py --minutes 20``. It starts, in a temporary work
directory of its own:

* a Mosquitto on a free loopback port (persistence on by default, so a *graceful* restart
  keeps the subscriber's queue and only the bridge is measured);
* the reader simulator (``bridge.simulator.Simulator``) in this process, fed by a thread that
  emits events carrying a unique ``SoakCounter`` field at ``--rate`` events/s;
* the bridge as a subprocess (``python -m bridge run``), so that its RSS and CPU time can be
  read from ``/proc``;
* a persistent-session MQTT v5 subscriber (QoS 1, fixed client id, clean_start=False) that
  records every event by counter and by ``seq`` user property.

Faults on a schedule: the broker is restarted every ``--broker-restart-every`` s (SIGTERM,
and SIGKILL every ``--sigkill-every``-th time), the reader connection is dropped every
``--reader-drop-every`` s (alternately FIN and RST). An event the simulator could not write
because no client was connected never existed for the bridge and is counted as "not sent".

Two kinds of loss are not the bridge's and are counted apart:

* a SIGKILLed broker loses what it had acknowledged but not yet delivered or saved: an event
  sent before the kill, not received at the kill and newer than every event received by then
  (delivery is in order, so an older one was skipped before the kill) was exposed to it;
* an RST discards the bytes the simulator's kernel had not sent yet (Nagle holds small
  segments back while earlier ones wait for the bridge's delayed ACK): before an RST drop the
  emitter pauses until those bytes are sent (at most 2 s); what is still unsent at the RST
  never reached the bridge.

Every other event written and never received is a loss by the bridge.

Exit status: 0 when nothing was lost by the bridge, the bridge stopped with status 0 and its
RSS grew by at most ``--max-rss-growth`` %; 1 otherwise; 2 when the set-up failed; 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
import tempfile
import types
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The parts, in scripts/soaklib/ (one module each, see its __init__); after the path set-up,
# since they import bridge.simulator.
from soaklib.errors import SoakError, StopRequestedError  # noqa: E402
from soaklib.report import build_report, print_report  # noqa: E402
from soaklib.soak import Soak  # noqa: E402

log = logging.getLogger("soak")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=20.0, help="emitting time (default 20)")
    parser.add_argument("--rate", type=float, default=200.0, help="events per second (200)")
    parser.add_argument("--broker-restart-every", type=float, default=60.0, help="s; 0 = never")
    parser.add_argument(
        "--sigkill-every",
        type=int,
        default=4,
        help="every N-th broker restart is a SIGKILL instead of a SIGTERM (4); 0 = never",
    )
    parser.add_argument("--broker-down", type=float, default=2.0, help="s the broker stays down")
    parser.add_argument("--reader-drop-every", type=float, default=45.0, help="s; 0 = never")
    parser.add_argument("--warmup", type=float, default=10.0, help="s before the first RSS reading")
    parser.add_argument("--sample-every", type=float, default=10.0, help="s between RSS samples")
    parser.add_argument("--progress", type=float, default=30.0, help="s between progress lines")
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument("--stop-timeout", type=float, default=20.0, help="s the bridge gets")
    parser.add_argument(
        "--max-rss-growth", type=float, default=10.0, help="%% of RSS growth that fails the run"
    )
    parser.add_argument(
        "--no-broker-persistence",
        dest="broker_persistence",
        action="store_false",
        help="restart the broker empty (then even a SIGTERM restart loses queued events)",
    )
    parser.add_argument(
        "--autosave-interval",
        type=int,
        default=2,
        help="s between the broker's saves: what a SIGKILLed broker keeps (2)",
    )
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir after a pass")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0:
        parser.error("--minutes and --rate must be positive")
    return args


def _raise_interrupted(signum: int, frame: types.FrameType | None) -> None:
    raise StopRequestedError(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        workdir = args.workdir.resolve()
    else:
        workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    print(f"soak: {args.minutes:g} min at {args.rate:g} events/s, work directory {workdir}")
    soak = Soak(args, workdir)
    status = 2
    try:
        soak.setup()
        report = build_report(soak, soak.run())
        print_report(report)
        if args.json is not None:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        status = 0 if report["ok"] else 1
    except SoakError as exc:
        print(f"soak: {exc}", file=sys.stderr)
    except StopRequestedError as exc:
        print(f"soak: interrupted ({exc}); cleaning up", file=sys.stderr)
        status = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the clean-up finish
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        soak.cleanup()
        if status == 0 and args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
