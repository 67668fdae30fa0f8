"""The parts of ``scripts/bench.py``, the benchmark of the bridge against a bare path.

None of it imports the bridge: the bridge is a subprocess started with BRIDGE_* variables and
watched from outside, so the benchmark measures any version of it. One module each:

- ``errors``: the two exceptions; ``event``: the events the reader double writes;
  ``stats``: percentiles and medians; ``plan``: how long each phase runs;
- ``reader``: the reader double; ``recorder``: every received event matched to its phase;
  ``client``: the raw MQTT subscriber, the paho one, the command sender;
- ``system``: the broker and the systems under test; ``baseline``: the bare path itself;
  ``meter``: CPU of the systems under test, the broker, this process and the machine;
- ``rig``: the set-up and the ways of writing events (paced, closed loop) and waiting for them;
- ``quiet``: idle and 1 event/s CPU (schedstat); ``phases``, ``throughput``: the loaded phases;
  ``run``: one run of them in order, on fresh systems under test;
- ``figure``: the figures of one run; ``metric``: those of several runs combined (medians)
  and the targets; ``report``: the JSON report; ``table``: the printed table;
- the fleet benchmark (``bench.py --fleet N``): ``fleet_recorder`` (every reader's counters and
  status), ``fleet_double`` (the readers), ``fleet_bare`` (the bare fleet path itself),
  ``fleet_system`` (the fleet bridge, the bare fleet path, one-reader bridges), ``fleet_rig``
  (set-up, paced and closed-loop writing), ``fleet_phases``, ``fleet_run`` (one run, and why in
  that order), ``fleet_report`` (figures, targets, JSON, tables).
"""
