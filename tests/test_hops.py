"""``scripts/hops.py`` reads a loopback capture of ``bench.py --local`` hop by hop: checked on
a capture written here, packet by packet, with known times."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

from tests.support import REPO

if str(REPO / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO / "scripts"))
import hops  # scripts/hops.py

READER, LOCAL_READER, BROKER, SUBSCRIBER, BRIDGE, LOCAL_BRIDGE = (
    40001,
    40002,
    1884,
    50000,
    50001,
    50002,
)
MS = 1_000_000  # ns


def packet(t_ns: int, source: int, destination: int, payload: bytes) -> bytes:
    """One pcap record (nanosecond format) of an IPv4 TCP packet on lo."""
    tcp = struct.pack("!HHIIBBHHH", source, destination, 0, 0, 5 << 4, 0x18, 65535, 0, 0)
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(tcp) + len(payload),
        0,
        0,
        64,
        6,
        0,
        b"\x7f\0\0\1",
        b"\x7f\0\0\1",
    )
    frame = b"\0" * 12 + b"\x08\x00" + ip + tcp + payload
    return struct.pack("<IIII", t_ns // 10**9, t_ns % 10**9, len(frame), len(frame)) + frame


def event(number: int, written: int) -> bytes:
    return b'{"TagId":"%014X","BenchT":"%d"}' % (number, written)


def capture(path: Path) -> None:
    """Per bridge, one event every 100 ms (10/s) with fixed hops; the answering bridge's answer
    0.08 ms and its result 2.1 ms after its PUBLISH."""
    base, records = 10**18, []
    for i in range(5):
        for number, reader, bridge, device, hop in (
            (i, READER, BRIDGE, b"bench", 0.5),
            (100 + i, LOCAL_READER, LOCAL_BRIDGE, b"bench-local", 0.6),
        ):
            written = base + i * 100 * MS + (50 * MS if device == b"bench-local" else 0)
            body = event(number, written)
            published = written + int((0.1 + hop) * MS)
            records += [
                packet(written + MS // 10, reader, bridge, body + b"\r\n"),
                packet(published, bridge, BROKER, b"0" + device + b"/rdr/evt" + body),
                packet(
                    published + MS // 10, BROKER, SUBSCRIBER, b"2" + device + b"/rdr/evt" + body
                ),
                packet(published + MS // 4, SUBSCRIBER, BROKER, b"\x40\x02\x00\x01"),
            ]
            if device == b"bench-local":
                records += [
                    packet(published + 80_000, bridge, reader, b'{"Sequence":"60"}'),
                    packet(published + int(2.1 * MS), bridge, BROKER, b'{"ok":true,"local":true}'),
                ]
    records.sort(key=lambda record: struct.unpack("<II", record[:8]))
    header = struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1)
    path.write_bytes(header + b"".join(records))


def test_each_hop_of_each_bridge_is_found_at_its_rate(tmp_path: Path) -> None:
    path = tmp_path / "cap.pcap"
    capture(path)
    table = hops.analyse(path)
    assert set(table) == {"bench", "bench-local"}
    off, on = table["bench"][10], table["bench-local"][10]
    assert len(off["write"]) == len(on["write"]) == 5
    assert {round(v / 1e3) for v in off["write"]} == {100}  # us
    assert {round(v / 1e3) for v in off["bridge"]} == {500}
    assert {round(v / 1e3) for v in on["bridge"]} == {600}
    assert {round(v / 1e3) for v in on["broker"]} == {100}
    assert {round(v / 1e3) for v in on["sub ack"]} == {150}
    assert {round(v / 1e3) for v in on["answer"]} == {80}
    assert {round(v / 1e3) for v in on["result"]} == {2100}
    assert "answer" not in off
    assert "result" not in off


def test_a_file_that_is_not_a_capture_is_an_error_not_a_traceback(tmp_path: Path, capsys) -> None:
    path = tmp_path / "cap.pcap"
    path.write_bytes(b"nothing")
    assert hops.main([str(path)]) == 2
    assert "not a pcap file" in capsys.readouterr().err


def test_a_capture_without_the_benchmark_says_so(tmp_path: Path, capsys) -> None:
    path = tmp_path / "cap.pcap"
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1))
    assert hops.main([str(path)]) == 2
    assert "no event of bench.py" in capsys.readouterr().err


@pytest.mark.parametrize(("gap_ms", "rate"), [(100, 10), (52, 0), (5, 200), (0.5, 2000)])
def test_the_rate_is_read_from_the_gap(gap_ms: float, rate: int) -> None:
    assert hops.rate_of(gap_ms * MS) == rate
