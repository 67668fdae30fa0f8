#!/usr/bin/env python3
"""Where the time of ``bench.py --local`` goes, hop by hop, from a loopback packet capture.

    tcpdump -i lo -s 400 -U -w cap.pcap tcp &        # Debian package tcpdump
    python scripts/bench.py --local --seconds 30 --pin
    kill %1; python scripts/hops.py cap.pcap

Each event the reader doubles write carries its tag number and write time (``BenchT``), so its
packets can be found on every hop: reader double -> bridge, bridge -> broker (the PUBLISH on
``rdr/evt``), broker -> subscriber. For each bridge (``bench``: local answers off,
``bench-local``: on) and each rate it prints the median and p99 of

* ``write``: from ``BenchT`` to the event's packet (the benchmark's own write);
* ``bridge``: from that packet to the bridge's PUBLISH (waking up, reading, publishing);
* ``broker``: from the PUBLISH to the broker's copy to the subscriber;
* ``sub ack``: from that copy to the subscriber's next packet to the broker (its PUBACK: when
  the subscriber had taken the event in);

and, for the bridge that answers, when its answer (to the reader) and its result (on
``bridge/result``) left, counted from the event's PUBLISH. This is how the cost of a local
answer to the event path was found (README, When the broker is down). Timestamps are the
capture's: tcpdump itself takes some CPU, so compare the two bridges of one capture, not
figures across captures. The rate of an event is read from the gap to its neighbour; rate 0
is the answers' own phase (one read at a time, 50 ms apart).
"""

from __future__ import annotations

import argparse
import bisect
import re
import struct
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchlib.stats import percentile

EVENT = re.compile(rb'"TagId":"([0-9A-F]{14})".*?"BenchT":"(\d+)"')
ANSWER = b'{"Sequence":"60"}'
RESULT = b'"local":true'
EVENT_TOPIC = b"/rdr/evt"
LOCAL_DEVICE = b"bench-local/rdr/evt"
NANO_MAGIC = 0xA1B23C4D
LINK_HEADER = {1: 14, 113: 16}  # Ethernet (lo), Linux cooked capture

Packet = tuple[float, int, int, bytes]  # time (ns), source port, destination port, payload


def packets(path: Path) -> Iterator[Packet]:
    """The TCP payloads of a pcap file (IPv4), with their capture time in ns."""
    with path.open("rb") as f:
        head = f.read(24)
        if len(head) < 24:
            raise ValueError(f"{path}: not a pcap file")
        magic, link = struct.unpack("<I", head[:4])[0], struct.unpack("<I", head[20:24])[0]
        if link not in LINK_HEADER:
            raise ValueError(f"{path}: link type {link} (capture on lo with tcpdump -i lo)")
        scale = 1 if magic == NANO_MAGIC else 1000
        while len(record := f.read(16)) == 16:
            seconds, fraction, size, _ = struct.unpack("<IIII", record)
            data = f.read(size)
            ip = data[LINK_HEADER[link] :]
            if not ip or ip[0] >> 4 != 4:
                continue
            tcp = ip[(ip[0] & 15) * 4 :]
            if len(tcp) < 20:
                continue
            source, destination = struct.unpack("!HH", tcp[:4])
            yield seconds * 1e9 + fraction * scale, source, destination, tcp[(tcp[12] >> 4) * 4 :]


def rate_of(gap_ns: float) -> int:
    """The benchmark's rate (10, 200 or 2,000 events/s) an event gap belongs to; 0 for the
    answers' phase of ``--local`` (a read every 50 ms and a bit, one at a time)."""
    if gap_ns > 80e6:
        return 10
    if gap_ns > 20e6:
        return 0
    return 200 if gap_ns > 2e6 else 2000


def after(times: list[float], t: float) -> float | None:
    """From ``t`` to the first of ``times`` (sorted) at or after it."""
    i = bisect.bisect_left(times, t)
    return times[i] - t if i < len(times) else None


@dataclass
class Capture:
    """What a capture says of the benchmark's events, answers and results."""

    seen: dict[tuple[bytes, bytes], dict[tuple[str, int, int], float]] = field(
        default_factory=lambda: defaultdict(dict)
    )  # event (tag, BenchT) -> first time on each (hop, source port, destination port)
    device: dict[tuple[bytes, bytes], str] = field(default_factory=dict)
    answers: list[float] = field(default_factory=list)
    results: list[tuple[float, int]] = field(default_factory=list)  # (time, destination)
    flows: list[tuple[float, int, int]] = field(default_factory=list)  # every payload

    def add(self, t: float, source: int, destination: int, payload: bytes) -> None:
        self.flows.append((t, source, destination))
        if RESULT in payload:
            self.results.append((t, destination))
        elif ANSWER in payload and EVENT_TOPIC not in payload:
            self.answers.append(t)
        for match in EVENT.finditer(payload):
            key = (match.group(1), match.group(2))
            hop = "mqtt" if EVENT_TOPIC in payload else "read"
            if hop == "mqtt":
                self.device[key] = "bench-local" if LOCAL_DEVICE in payload else "bench"
            self.seen[key].setdefault((hop, source, destination), t)

    def ports(self) -> tuple[int, int]:
        """The broker's port (on every MQTT hop) and the subscriber's."""
        ports: Counter[int] = Counter()
        for hops in self.seen.values():
            for hop, source, destination in hops:
                if hop == "mqtt":
                    ports.update((source, destination))
        if not ports:
            raise ValueError("no event of bench.py on its way to a broker")
        broker = ports.most_common(1)[0][0]
        subscribers = Counter(
            destination
            for hops in self.seen.values()
            for hop, source, destination in hops
            if hop == "mqtt" and source == broker
        )
        return broker, subscribers.most_common(1)[0][0]

    def events(self, broker: int) -> dict[str, list[tuple[float, float, float, float]]]:
        """Per bridge, in write order: (BenchT, read packet, PUBLISH, copy to the subscriber)."""
        rows: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
        for key, hops in self.seen.items():
            read = [t for (hop, _, _), t in hops.items() if hop == "read"]
            out = [t for (hop, _, d), t in hops.items() if hop == "mqtt" and d == broker]
            fwd = [t for (hop, s, _), t in hops.items() if hop == "mqtt" and s == broker]
            if key in self.device and read and out and fwd:
                rows[self.device[key]].append((float(key[1]), min(read), min(out), min(fwd)))
        for events in rows.values():
            events.sort()
        return rows


def analyse(path: Path) -> dict[str, dict[int, dict[str, list[float]]]]:
    """Per bridge, per rate, per hop: the times in ns."""
    capture = Capture()
    for packet in packets(path):
        if packet[3]:
            capture.add(*packet)
    broker, subscriber = capture.ports()
    acks = sorted(t for t, s, d in capture.flows if (s, d) == (subscriber, broker))
    results = sorted(t for t, destination in capture.results if destination == broker)
    answers = sorted(capture.answers)
    table: dict[str, dict[int, dict[str, list[float]]]] = {}
    for name, events in capture.events(broker).items():
        per_rate: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for i, (written, read, out, fwd) in enumerate(events):
            neighbour = events[i + 1][0] if i + 1 < len(events) else events[i - 1][0]
            hops = per_rate[rate_of(abs(neighbour - written))]
            hops["write"].append(read - written)
            hops["bridge"].append(out - read)
            hops["broker"].append(fwd - out)
            follow = [("sub ack", acks, fwd)]
            if name == "bench-local":
                follow += [("answer", answers, out), ("result", results, out)]
            for label, times, start in follow:
                if (gap := after(times, start)) is not None:
                    hops[label].append(gap)
        table[name] = per_rate
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("capture", type=Path, help="a pcap file of tcpdump -i lo")
    args = parser.parse_args(argv)
    try:
        table = analyse(args.capture)
    except (OSError, ValueError) as exc:
        print(f"hops: {exc}", file=sys.stderr)
        return 2
    print("| bridge | rate /s | events | hop: p50 · p99 us |")
    print("|---|---|---|---|")
    for name in sorted(table):
        for rate in sorted(table[name]):
            hops = table[name][rate]
            cells = ", ".join(
                f"{hop} {percentile(us, 0.5):.0f} · {percentile(us, 0.99):.0f}"
                for hop, v in hops.items()
                if (us := sorted(t / 1e3 for t in v))
            )
            print(f"| {name} | {rate} | {len(hops['write'])} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
