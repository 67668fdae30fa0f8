"""The parts of ``scripts/soak.py``, the soak test of the bridge through broker restarts and
reader drops.

The bridge is a subprocess started with BRIDGE_* variables and watched from ``/proc``; the
reader simulator (``bridge.simulator``) runs in this process, so ``soak.py`` puts the
repository on ``sys.path`` before it imports any of these. One module each:

- ``errors``: the two exceptions; ``event``: the device, its topic, the counter field;
- ``process``: the broker and the bridge, each a subprocess;
- ``ledger``: what happened to every counter; ``emitter``: the thread that writes the events;
  ``subscriber``: the persistent-session subscriber that records every copy received;
- ``result``: the typed records of a run (samples, faults, SIGKILL windows, RST drops, its end);
- ``fault``: what a broker SIGKILL or a reader RST exposes, and the drop itself;
- ``soak``: the run: set-up, the loop of faults and samples, the drain, the tear-down;
- ``loss``: the events lost and whose loss each was; ``report``: the JSON report and its print.
"""
