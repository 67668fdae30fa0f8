"""Tests for bridge.protocol, the sans-I/O decoder that frames READER EVENTs out of TCP bytes.

Held to h11's bar (docs/architecture.md §1): golden byte sequences fed whole, one byte at a time and
split at every point; the caps at exactly the limit and one byte over; every kind of garbage the
reader link can plausibly carry; and Hypothesis properties over arbitrary bytes in arbitrary
chunks (h11's fuzz invariant: events or the decoder's own error, never more memory than the cap).

The tests under "bugs found while writing these tests" pinned real bugs of protocol.py and now
guard their fixes.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.protocol import (
    DEFAULT_MAX_OBJECT,
    SAMPLE_SIZE,
    Frame,
    Item,
    ProtocolError,
    Skipped,
    StreamDecoder,
)

# -- helpers ---------------------------------------------------------------------------------

THREE_CHUNK_SPLITS = 20
"""How many random three-chunk splits each golden stream is fed in (seeded, so repeatable)."""

Comparable = tuple[object, ...]
Chunker = Callable[[bytes], list[bytes]]


def frame(payload: bytes) -> Frame:
    """The Frame expected for a compact ``payload``, with its decoded fields."""
    return Frame(payload, json.loads(payload))


def comparable(items: Iterable[Item]) -> list[Comparable]:
    """``items`` as tuples; unlike ``Frame.__eq__`` these also compare fields and key order."""
    return [
        ("Frame", item.payload, list(item.fields.items()))
        if isinstance(item, Frame)
        else ("Skipped", item.reason, item.size, item.sample)
        for item in items
    ]


def feed_chunks(chunks: Iterable[bytes], max_object: int = DEFAULT_MAX_OBJECT) -> list[Item]:
    """Feed ``chunks`` to one new decoder; check the memory bound after every feed."""
    decoder = StreamDecoder(max_object)
    items: list[Item] = []
    for chunk in chunks:
        items += decoder.feed(chunk)
        assert decoder.buffered <= max_object
    return items


def feed_whole(data: bytes, max_object: int = DEFAULT_MAX_OBJECT) -> list[Item]:
    return feed_chunks([data], max_object)


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def split(data: bytes, *cuts: int) -> list[bytes]:
    """``data`` cut at the sorted offsets ``cuts`` (empty chunks allowed)."""
    bounds = [0, *cuts, len(data)]
    return [data[start:stop] for start, stop in itertools.pairwise(bounds)]


def random_chunks(data: bytes, seed: int, largest: int) -> list[bytes]:
    """``data`` in random chunk sizes from 1 to ``largest`` bytes."""
    rng = random.Random(seed)
    chunks: list[bytes] = []
    pos = 0
    while pos < len(data):
        size = rng.randint(1, largest)
        chunks.append(data[pos : pos + size])
        pos += size
    return chunks


def chunkings(data: bytes) -> Iterator[tuple[str, list[bytes]]]:
    """Byte by byte, two chunks at every split point, and a few three-chunk splits."""
    yield "one byte at a time", one_byte_at_a_time(data)
    for cut in range(len(data) + 1):
        yield f"split at {cut}", split(data, cut)
    rng = random.Random(len(data))
    for _ in range(THREE_CHUNK_SPLITS):
        first, second = sorted(rng.sample(range(len(data) + 1), 2))
        yield f"split at {first} and {second}", split(data, first, second)


def assert_decodes_in_every_chunking(
    data: bytes, expected: Sequence[Item], max_object: int = DEFAULT_MAX_OBJECT
) -> None:
    """``data`` gives ``expected`` whole, and exactly the same however it is chunked."""
    want = comparable(expected)
    assert comparable(feed_whole(data, max_object)) == want
    for how, chunks in chunkings(data):
        assert comparable(feed_chunks(chunks, max_object)) == want, how


def compact(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def test_importing_the_decoder_pulls_in_no_io() -> None:
    # Sans-I/O (docs/architecture.md §1): checked in a fresh interpreter, where nothing else
    # imported them.
    banned = ["socket", "selectors", "asyncio", "ssl", "logging", "paho"]
    code = f"import sys, bridge.protocol; print(sorted(m for m in {banned!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "[]"


# -- golden reader events (docs/reader-protocol.md §2) ------------------------------------

NFC_A = (
    b'{"Interface":"13.56","Protocol":"NFC-A","Template":1,"TagId":"047DAE02C84080",'
    b'"TagData":"00047DAE02C84080","Uptime":"699:16.850"}'
)
BLE = (
    b'{"Interface":"bluetooth","Protocol":"BLE","Template":0,"TagId":"D4:36:39:8A:5C:01",'
    b'"RSSI":-67,"TagData":"0201061AFF4C000215","TagDetails":"0C094D792050686F6E65",'
    b'"Uptime":"699:17.002"}'
)
UHF_EPC = (
    b'{"Interface":"900","Protocol":"UHF-EPC","Template":1,"TagId":"E28011606000020D8A6B1234",'
    b'"RSSI":-52,"Uptime":"699:18.120"}'
)
INSERT = (
    b'{"Interface":"13.56","Protocol":"NFC-A","Template":1,"TagId":"047DAE02C84080",'
    b'"Move":"Insert","Uptime":"699:20.001"}'
)
REMOVE = (
    b'{"Interface":"13.56","Protocol":"NFC-A","Template":1,"TagId":"047DAE02C84080",'
    b'"Move":"Remove","Uptime":"699:23.417"}'
)
LEGACY = (  # older firmware: Rssi, State, DateTime and an integer Sequence counter
    b'{"Interface":"bluetooth","Protocol":"iBeacon","Template":0,"TagId":"C0FFEE000001",'
    b'"Rssi":-80,"State":"Insert","DateTime":"2024-05-01T12:00:00","Sequence":42,'
    b'"Uptime":"12:3.004"}'
)
GOLDEN_EVENTS = [NFC_A, BLE, UHF_EPC, INSERT, REMOVE, LEGACY]

SEPARATORS = {
    "none": [b""],
    "crlf": [b"\r\n"],
    "lf": [b"\n"],
    "nul": [b"\x00"],
    "spaces": [b"   "],
    "mixed": [b"\r\n", b"", b"\x00", b" \t ", b"\n\x00\r\n", b"\x00\x00"],
}


def join_events(events: Iterable[bytes], separators: Sequence[bytes]) -> bytes:
    """``events`` with a separator before, between and after them, cycling ``separators``."""
    gaps = itertools.cycle(separators)
    return next(gaps) + b"".join(event + next(gaps) for event in events)


def test_golden_events_are_compact_json_objects() -> None:
    # Guards the goldens themselves: each is what the reader sends, already compact.
    for event in GOLDEN_EVENTS:
        assert compact(json.loads(event)) == event


@pytest.mark.parametrize("separator", SEPARATORS, ids=str)
def test_golden_events_decode_identically_in_every_chunking(separator: str) -> None:
    stream = join_events(GOLDEN_EVENTS, SEPARATORS[separator])
    assert_decodes_in_every_chunking(stream, [frame(event) for event in GOLDEN_EVENTS])


@pytest.mark.parametrize("separator", SEPARATORS, ids=str)
def test_golden_frames_carry_the_reader_fields(separator: str) -> None:
    items = feed_whole(join_events([NFC_A, BLE], SEPARATORS[separator]))
    assert [type(item) for item in items] == [Frame, Frame]
    nfc, ble = items
    assert isinstance(nfc, Frame)
    assert isinstance(ble, Frame)
    assert nfc.fields == {
        "Interface": "13.56",
        "Protocol": "NFC-A",
        "Template": 1,
        "TagId": "047DAE02C84080",
        "TagData": "00047DAE02C84080",
        "Uptime": "699:16.850",
    }
    assert list(nfc.fields) == ["Interface", "Protocol", "Template", "TagId", "TagData", "Uptime"]
    assert ble.fields["RSSI"] == -67
    assert ble.fields["Template"] == 0


def test_nothing_but_separators_yields_nothing_and_holds_nothing() -> None:
    decoder = StreamDecoder()
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\r\n\x00 \t\n" * 100) == []
    assert decoder.buffered == 0


def test_unfinished_object_waits_for_more_bytes() -> None:
    decoder = StreamDecoder()
    assert decoder.feed(NFC_A[:-1]) == []
    assert decoder.buffered == len(NFC_A) - 1
    assert comparable(decoder.feed(b"}" + INSERT)) == comparable([frame(NFC_A), frame(INSERT)])
    assert decoder.buffered == 0


def test_whitespace_between_tokens_is_not_held() -> None:
    decoder = StreamDecoder()
    assert decoder.feed(b'{ "a" :\r\n') == []
    assert decoder.buffered == len(b'{"a":')


# -- payload: compact, in the reader's order and spelling --------------------------------------

PAYLOADS = {
    "spaces between tokens": (b'{ "b" : 1.50 , "a" : "x y" }', b'{"b":1.50,"a":"x y"}'),
    "tabs and line breaks between tokens": (
        b'{\r\n\t"Template" :\t1 ,\n  "TagId" : "04 7D AE"\r\n}',
        b'{"Template":1,"TagId":"04 7D AE"}',
    ),
    "spaces inside strings": (b'{"  k  ":"  v  w  "}', b'{"  k  ":"  v  w  "}'),
    "escapes verbatim": (
        rb'{"q": "say \"hi\"", "p": "C:\\dir\\", "e": "caf\u00e9", "n": "a\nb", "s": "\/"}',
        rb'{"q":"say \"hi\"","p":"C:\\dir\\","e":"caf\u00e9","n":"a\nb","s":"\/"}',
    ),
    "braces and brackets inside strings": (
        rb'{"a": "}{][,:", "b": "\\", "c": "\"}{"}',
        rb'{"a":"}{][,:","b":"\\","c":"\"}{"}',
    ),
    "nested objects and arrays": (
        b'{ "a" : { "b" : [ 1 , { "c" : [ ] } ] , "d" : { } } , "e" : [ [ ] , { } ] }',
        b'{"a":{"b":[1,{"c":[]}],"d":{}},"e":[[],{}]}',
    ),
    "number spelling": (
        b'{"i":-0,"e":1E+10,"f":0.000,"g":-1.5e-3,"h":12345678901234567890}',
        b'{"i":-0,"e":1E+10,"f":0.000,"g":-1.5e-3,"h":12345678901234567890}',
    ),
    "literals": (b'{"t": true, "f": false, "n": null}', b'{"t":true,"f":false,"n":null}'),
    "raw UTF-8": ('{"Name": "Café ☕ 🎫"}'.encode(), '{"Name":"Café ☕ 🎫"}'.encode()),
    "empty object": (b"{ }", b"{}"),
}


@pytest.mark.parametrize(("raw", "expected"), PAYLOADS.values(), ids=PAYLOADS.keys())
def test_payload_is_compact_and_keeps_order_and_spelling(raw: bytes, expected: bytes) -> None:
    items = feed_whole(raw)
    assert items == [Frame(expected, {})]
    assert isinstance(items[0], Frame)
    decoded = json.loads(raw)
    assert items[0].fields == decoded
    assert list(items[0].fields) == list(decoded)


@pytest.mark.parametrize(("raw", "expected"), PAYLOADS.values(), ids=PAYLOADS.keys())
def test_payload_is_the_same_in_every_chunking(raw: bytes, expected: bytes) -> None:
    # Cut at every byte, inside escapes and UTF-8 sequences too, between two other objects.
    stream = b'{"n":1}' + raw + b'\r\n{"n":2}'
    assert_decodes_in_every_chunking(
        stream, [frame(b'{"n":1}'), frame(expected), frame(b'{"n":2}')]
    )


def test_fields_keep_the_reader_key_order_and_values() -> None:
    (item,) = feed_whole(b'{ "b" : 1.50 , "a" : "x y", "c": "caf\\u00e9" }')
    assert isinstance(item, Frame)
    assert list(item.fields.items()) == [("b", 1.5), ("a", "x y"), ("c", "café")]


def test_duplicate_keys_stay_in_the_payload() -> None:
    # The payload is what the reader sent; fields follow json.loads (last one wins).
    (item,) = feed_whole(b'{"RSSI":-60,"RSSI":-61}')
    assert item == Frame(b'{"RSSI":-60,"RSSI":-61}', {})
    assert isinstance(item, Frame)
    assert item.fields == {"RSSI": -61}


# -- a long TagData ----------------------------------------------------------------------------

LONG_TAG_DATA = (bytes(range(256)).hex().upper().encode() * 40)[: 20 * 1024]
LONG_EVENT = (
    b'{"Interface":"13.56","Protocol":"NFC-A","Template":2,"TagId":"047DAE02C84080",'
    b'"TagData":"' + LONG_TAG_DATA + b'","Uptime":"699:21.300"}'
)
LONG_STREAM = NFC_A + b"\r\n" + LONG_EVENT + b"\r\n" + REMOVE


def test_20kb_tag_data_passes_whole() -> None:
    items = feed_whole(LONG_STREAM)
    assert comparable(items) == comparable([frame(NFC_A), frame(LONG_EVENT), frame(REMOVE)])
    assert isinstance(items[1], Frame)
    assert items[1].fields["TagData"] == LONG_TAG_DATA.decode()


def test_20kb_tag_data_passes_one_byte_at_a_time() -> None:
    items = feed_chunks(one_byte_at_a_time(LONG_STREAM))
    assert comparable(items) == comparable([frame(NFC_A), frame(LONG_EVENT), frame(REMOVE)])


@pytest.mark.parametrize("seed", range(8))
def test_20kb_tag_data_passes_in_random_chunk_sizes(seed: int) -> None:
    largest = [3, 17, 512, 1460, 4096, 8192, 16384, 30000][seed]
    items = feed_chunks(random_chunks(LONG_STREAM, seed, largest))
    assert comparable(items) == comparable([frame(NFC_A), frame(LONG_EVENT), frame(REMOVE)])


# -- limits ----------------------------------------------------------------------------------


def padded_object(size: int) -> bytes:
    """A TagData object of exactly ``size`` raw bytes."""
    head, tail = b'{"TagData":"', b'"}'
    return head + b"A" * (size - len(head) - len(tail)) + tail


def over_cap(max_object: int, size: int, sample: bytes) -> Skipped:
    return Skipped(f"object larger than {max_object} bytes", size, sample[:SAMPLE_SIZE])


CAPPED_OBJECTS = {
    "digits": b'{"a":1}',
    "spaced": b'{ "a" : "b c" }',
    "nested": b'{"a":[{"b":true}]}',
    "TagData 100": padded_object(100),
    "TagData 300": padded_object(300),
}


@pytest.mark.parametrize("obj", CAPPED_OBJECTS.values(), ids=CAPPED_OBJECTS.keys())
def test_object_of_exactly_max_object_raw_bytes_is_a_frame(obj: bytes) -> None:
    # Raw bytes count, whitespace included, so the cap is the same for any chunking.
    payload = compact(json.loads(obj))
    stream = obj + b"\r\n" + obj
    assert_decodes_in_every_chunking(stream, [frame(payload), frame(payload)], len(obj))


@pytest.mark.parametrize("obj", CAPPED_OBJECTS.values(), ids=CAPPED_OBJECTS.keys())
def test_object_one_byte_over_max_object_is_skipped_then_next_frame(obj: bytes) -> None:
    cap = len(obj) - 1
    payload = compact(json.loads(obj))
    expected: list[Item] = [over_cap(cap, len(obj), payload[:-1]), frame(b"{}")]
    assert_decodes_in_every_chunking(obj + b"{}", expected, cap)
    (skipped, _) = feed_whole(obj + b"{}", cap)
    assert isinstance(skipped, Skipped)
    assert str(cap) in skipped.reason


def test_smallest_cap_accepts_empty_object_only() -> None:
    assert comparable(feed_whole(b'{}{"a":1}{}', 2)) == comparable(
        [frame(b"{}"), over_cap(2, 3, b'{"'), frame(b"{}")]
    )


OVERFLOW_OBJECT = b'{"a" : "bc", "d":[12, true],"e":{}}'


@pytest.mark.parametrize("cap", range(2, len(OVERFLOW_OBJECT)))
def test_overflow_is_reported_once_at_the_first_byte_over_the_cap(cap: int) -> None:
    # Across these caps the first byte over falls on every kind of token: quote, string,
    # digit, literal, space, bracket, brace. Fed any way it is reported at exactly byte cap + 1.
    held = OVERFLOW_OBJECT[:cap].replace(b" ", b"")
    expected: list[Item] = [over_cap(cap, cap + 1, held), frame(b"{}")]
    stream = OVERFLOW_OBJECT + b"\n{}"
    assert comparable(feed_chunks(one_byte_at_a_time(stream), cap)) == comparable(expected)
    assert comparable(feed_whole(stream, cap)) == comparable(expected)


def test_default_cap_is_64_kib() -> None:
    assert DEFAULT_MAX_OBJECT == 65536
    assert StreamDecoder().max_object == DEFAULT_MAX_OBJECT


DEFAULT_CAP_STREAMS: dict[str, Chunker] = {
    "whole": lambda data: [data],
    "one byte at a time": one_byte_at_a_time,
    "random chunks": lambda data: random_chunks(data, 65536, 3000),
    "split in the middle": lambda data: split(data, len(data) // 2),
}


@pytest.mark.parametrize("chunker", DEFAULT_CAP_STREAMS.values(), ids=DEFAULT_CAP_STREAMS.keys())
def test_default_cap_exact_is_a_frame_and_one_over_is_skipped(chunker: Chunker) -> None:
    exact = padded_object(DEFAULT_MAX_OBJECT)
    over = padded_object(DEFAULT_MAX_OBJECT + 1)
    stream = exact + b"\r\n" + over + b"\r\n" + NFC_A
    expected: list[Item] = [
        frame(exact),
        over_cap(DEFAULT_MAX_OBJECT, DEFAULT_MAX_OBJECT + 1, over),
        frame(NFC_A),
    ]
    assert comparable(feed_chunks(chunker(stream))) == comparable(expected)


def test_oversized_object_is_skipped_by_structure_not_by_first_brace() -> None:
    # The tail of an oversized object is still parsed: braces inside its strings or nested
    # objects must not resynchronise, or half an event would be published.
    big = b'{"TagData_______":"' + b"x" * 20 + b'{\\"b\\":1}", "c":{"d":"}{"}, "e":[{}]}'
    # The 17th byte is the key's closing quote, so size and sample are the same in any chunking.
    expected: list[Item] = [over_cap(16, 17, big[:16]), frame(b'{"f":2}')]
    assert_decodes_in_every_chunking(big + b'{"f":2}', expected, 16)


def test_oversized_string_is_cut_off_at_the_first_byte_over_the_cap() -> None:
    # A long TagData is not read to its end before the cap applies, however it arrives.
    big = padded_object(1000)
    for how, chunks in [("whole", [big]), *chunkings(big)]:
        items = feed_chunks(chunks, 16)
        assert [(type(item), getattr(item, "size", None)) for item in items] == [(Skipped, 17)], how


def test_oversized_object_that_never_closes_is_reported_once() -> None:
    big = b'{"TagData_______":"' + b"x" * 30 + b"\r\n"
    expected: list[Item] = [over_cap(16, 17, big[:16]), frame(b'{"f":2}')]
    assert_decodes_in_every_chunking(big + b'{"f":2}', expected, 16)


def test_junk_longer_than_the_cap_is_reported_in_bounded_pieces() -> None:
    junk = b"$SCRDR;UID=047DAE02C84080;" * 4  # 104 bytes, no separator, no brace
    pieces = [junk[start : start + 16] for start in range(0, len(junk), 16)]
    expected: list[Item] = [
        *(Skipped("not JSON", len(piece), piece) for piece in pieces),
        frame(b"{}"),
    ]
    assert_decodes_in_every_chunking(junk + b"{}", expected, 16)


def test_junk_longer_than_the_default_cap_holds_only_a_sample() -> None:
    junk = b"#" * (3 * DEFAULT_MAX_OBJECT + 100)
    decoder = StreamDecoder()
    items: list[Item] = []
    for chunk in random_chunks(junk + b"\r\n" + NFC_A, 3, 10000):
        items += decoder.feed(chunk)
        assert decoder.buffered <= SAMPLE_SIZE
    sample = b"#" * SAMPLE_SIZE
    assert comparable(items) == comparable(
        [
            *[Skipped("not JSON", DEFAULT_MAX_OBJECT, sample)] * 3,
            Skipped("not JSON", 100, sample),
            frame(NFC_A),
        ]
    )


def not_json(run: bytes, max_object: int) -> list[Item]:
    """The Skipped items for one junk ``run``: pieces of ``max_object`` bytes, then the rest."""
    pieces = [run[start : start + max_object] for start in range(0, len(run), max_object)]
    return [Skipped("not JSON", len(piece), piece[:SAMPLE_SIZE]) for piece in pieces]


JUNK_LINE = b"$SCRDR; UID=047DAE02C84080;\tUPT=699:16.850 "  # 42 bytes, spaces and a tab inside


@pytest.mark.parametrize(
    "max_object", [len(JUNK_LINE), len(JUNK_LINE) - 1, 16, 2], ids=["at", "one under", "16", "2"]
)
def test_junk_line_with_spaces_is_one_run_up_to_the_cap(max_object: int) -> None:
    # Exactly at the cap: one item; one byte over: the cap, then that byte; pieces always.
    expected = [*not_json(JUNK_LINE, max_object), frame(b"{}")]
    assert_decodes_in_every_chunking(JUNK_LINE + b"\r\n{}", expected, max_object)


def test_junk_piece_cut_before_a_space_goes_on_with_that_space() -> None:
    # The cap ends a piece, not the run: the space after it is junk, not a separator.
    run = b"a" * 16 + b" bc\td"
    expected: list[Item] = [
        Skipped("not JSON", 16, b"a" * 16),
        Skipped("not JSON", 5, b" bc\td"),
        frame(b"{}"),
    ]
    assert_decodes_in_every_chunking(run + b"\n{}", expected, 16)


@pytest.mark.parametrize("max_object", [1, 0, -1, -65536])
def test_cap_below_two_bytes_is_a_protocol_error(max_object: int) -> None:
    with pytest.raises(ProtocolError, match=f"at least 2 bytes, got {max_object}$"):
        StreamDecoder(max_object)


# -- garbage: skipped with a reason, and the next good event still gets through ----------------

CUT = "object cut short"
NOT_JSON = "not JSON"
GOOD = frame(NFC_A)

GARBAGE = {
    "binary noise": (b"\x01\x02\xfe\xff\x7f\r\n", [Skipped(NOT_JSON, 5, b"\x01\x02\xfe\xff\x7f")]),
    "noise glued to the event": (b"garbage", [Skipped(NOT_JSON, 7, b"garbage")]),
    # A run of junk goes on across spaces and tabs and ends at CR, LF, NUL or "{" (protocol.py).
    "a garbage line is one run": (
        b"hello world garbage\r\n",
        [Skipped(NOT_JSON, 19, b"hello world garbage")],
    ),
    "noise split by line ends and NUL, not by spaces": (
        b"ab\tcd ef\x00gh ij\rkl\nmn\r\n",
        [Skipped(NOT_JSON, len(run), run) for run in (b"ab\tcd ef", b"gh ij", b"kl", b"mn")],
    ),
    "spaces before a run are separators, after it part of it": (
        b" \t hello world \t \r\n",
        [Skipped(NOT_JSON, 14, b"hello world \t ")],
    ),
    "a run ends at the brace of the next object": (
        b"junk before the event ",
        [Skipped(NOT_JSON, 22, b"junk before the event ")],
    ),
    "$SCRDR text line": (
        b"$SCRDR;T=NFC-A;UID=047DAE02C84080;UPT=699:16.850\r\n",
        [Skipped(NOT_JSON, 48, b"$SCRDR;T=NFC-A;UID=047DAE02C84080;UPT=69")],
    ),
    "JSON that is not an object": (
        b'[1,2]\n"x"\n42\n',
        [Skipped(NOT_JSON, 5, b"[1,2]"), Skipped(NOT_JSON, 3, b'"x"'), Skipped(NOT_JSON, 2, b"42")],
    ),
    "JSON that is not an object, on one line": (
        b'[1,2] "x" 42 null\r\n',
        [Skipped(NOT_JSON, 17, b'[1,2] "x" 42 null')],
    ),
    "stray closing brace": (b"}", [Skipped(NOT_JSON, 1, b"}")]),
    "invalid UTF-8 in a string": (
        b'{"TagData":"\xc3\x28"}\r\n',
        [Skipped("invalid UTF-8", 16, b'{"TagData":"\xc3\x28"}')],
    ),
    "truncated UTF-8 sequence in a string": (
        b'{"TagData":"caf\xc3"}',
        [Skipped("invalid UTF-8", 18, b'{"TagData":"caf\xc3"}')],
    ),
    "invalid UTF-8 as a value": (b'{"a":\xff}', [Skipped("invalid UTF-8", 7, b'{"a":\xff}')]),
    "missing value": (b'{"a":}', [Skipped("invalid JSON (Expecting value)", 6, b'{"a":}')]),
    "trailing comma": (
        b'{"a":1,}',
        [
            Skipped(
                "invalid JSON (Expecting property name enclosed in double quotes)",
                8,
                b'{"a":1,}',
            )
        ],
    ),
    "unquoted key": (
        b"{a:1}",
        [Skipped("invalid JSON (Expecting property name enclosed in double quotes)", 5, b"{a:1}")],
    ),
    "mismatched brackets": (
        b'{"a":[1}]',
        [Skipped("invalid JSON (Expecting ',' delimiter)", 9, b'{"a":[1}]')],
    ),
    "NaN": (b'{"a":NaN}', [Skipped("invalid JSON (NaN is not JSON)", 9, b'{"a":NaN}')]),
    "Infinity": (
        b'{"RSSI":Infinity}',
        [Skipped("invalid JSON (Infinity is not JSON)", 17, b'{"RSSI":Infinity}')],
    ),
    "-Infinity": (
        b'{"RSSI":-Infinity}',
        [Skipped("invalid JSON (-Infinity is not JSON)", 18, b'{"RSSI":-Infinity}')],
    ),
    "never closes, then CRLF": (
        # CR LF between tokens is JSON whitespace and counted; the next "{" cannot follow a value.
        b'{"Interface":"13.56","Protocol":"NFC-A","Template":1\r\n',
        [Skipped(CUT, 54, b'{"Interface":"13.56","Protocol":"NFC-A",')],
    ),
    "cut by a new event": (
        b'{"Interface":"13.56","Template":1',
        [Skipped(CUT, 33, b'{"Interface":"13.56","Template":1')],
    ),
    "cut by a new brace after a number": (b'{"a":1', [Skipped(CUT, 6, b'{"a":1')]),
    "cut by a new brace after a string": (
        b'{"Interface":"13.56"',
        [Skipped(CUT, 20, b'{"Interface":"13.56"')],
    ),
    "cut by a new brace after a brace": (b"{", [Skipped(CUT, 1, b"{")]),
    # Events are flat: a nested object in a cut one is read again as the event it most
    # likely was (the swallowed-event recovery in protocol.py).
    "cut by a new brace after a nested object": (
        b'{"a":{"b":1}',
        [Skipped(CUT, 5, b'{"a":'), frame(b'{"b":1}')],
    ),
    "two strings in a row": (
        b'{"a":"x" "y"}',
        [Skipped(CUT, 9, b'{"a":"x"'), Skipped(NOT_JSON, 4, b'"y"}')],
    ),
    "cut by NUL between tokens": (b'{"a":1,"b"\x00', [Skipped(CUT, 10, b'{"a":1,"b"')]),
    "raw tab inside a string": (
        b'{"a":"x\ty"}\r\n',
        [Skipped(CUT, 7, b'{"a":"x'), Skipped(NOT_JSON, 3, b'y"}')],
    ),
    "unterminated string, then CRLF": (
        b'{"Interface":"13.56","TagId":"047DAE\r\n',
        [Skipped(CUT, 36, b'{"Interface":"13.56","TagId":"047DAE')],
    ),
    "unterminated string, then LF": (b'{"TagId":"047D\n', [Skipped(CUT, 14, b'{"TagId":"047D')]),
    "unterminated string, then NUL": (b'{"TagId":"047D\x00', [Skipped(CUT, 14, b'{"TagId":"047D')]),
    "unterminated escape, then NUL": (b'{"a":"\\\x00', [Skipped(CUT, 7, b'{"a":"\\')]),
    "extra closing brace after a good object": (
        b'{"a":1}}',
        [frame(b'{"a":1}'), Skipped(NOT_JSON, 1, b"}")],
    ),
}


@pytest.mark.parametrize(("garbage", "skipped"), GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_is_skipped_and_the_next_event_gets_through(
    garbage: bytes, skipped: list[Item]
) -> None:
    assert_decodes_in_every_chunking(garbage + NFC_A, [*skipped, GOOD])


@pytest.mark.parametrize("separator", [b"", b" "], ids=["glued", "space"])
def test_unterminated_string_glued_event_is_recovered(separator: bytes) -> None:
    # Inside a string "{" is ordinary text, so an event glued to a string cut short first reads
    # as that string's tail; the JSON breaks at its first key, and the decoder reads the cut
    # object again from its inner "{": the glued event is recovered, then the next one.
    cut = b'{"TagId":"047D' + separator
    expected: list[Item] = [Skipped(CUT, len(cut), cut[:SAMPLE_SIZE]), GOOD, frame(INSERT)]
    assert_decodes_in_every_chunking(cut + NFC_A + INSERT, expected)


def test_skipped_sample_is_bounded() -> None:
    items = feed_whole(b"x" * 1000 + b"\r\n" + b'{"a":"' + b"y" * 1000 + b'\x00{"a":1,}')
    assert comparable(items) == comparable(
        [
            Skipped(NOT_JSON, 1000, b"x" * SAMPLE_SIZE),
            Skipped(CUT, 1006, b'{"a":"' + b"y" * (SAMPLE_SIZE - 6)),
            Skipped(
                "invalid JSON (Expecting property name enclosed in double quotes)",
                8,
                b'{"a":1,}',
            ),
        ]
    )


def test_nested_object_is_a_frame() -> None:
    nested = b'{"a":' + b"[" * 100 + b"]" * 100 + b"}"
    assert comparable(feed_whole(nested)) == comparable([frame(nested)])


@pytest.mark.parametrize("depth", [30000, 5000])
def test_deeply_nested_object_is_skipped_not_raised(depth: int) -> None:
    # json.loads raises RecursionError, not ValueError, on deep nesting well under the cap.
    nested = b'{"a":' + b"[" * depth + b"]" * depth + b"}"
    assert len(nested) < DEFAULT_MAX_OBJECT
    for chunks in [[nested + NFC_A], random_chunks(nested + NFC_A, depth, 4096)]:
        assert comparable(feed_chunks(chunks)) == comparable(
            [Skipped("invalid JSON (nested too deeply)", len(nested), nested[:SAMPLE_SIZE]), GOOD]
        )


# -- bugs found while writing these tests, now fixed: kept as regression tests ------------------


@pytest.mark.parametrize("raw", [b'{"a":1 2}', b'{"a":tr ue}', b'{"a":- 1}', b'{"a":1 .5}'])
def test_whitespace_inside_a_bare_token_is_invalid_json(raw: bytes) -> None:
    # Python's json rejects all of these; the decoder must not publish an altered value.
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)
    items = feed_whole(raw)
    assert len(items) == 1
    assert isinstance(items[0], Skipped)
    assert items[0].reason.startswith("invalid JSON")


@pytest.mark.parametrize(
    ("raw", "cap"),
    [(b'{"a":12345}', 7), (b'{"a":true}', 7), (b'{"a":"xxxxxxxxxx"}', 10)],
    ids=["number", "literal", "string"],
)
def test_oversized_report_does_not_depend_on_chunking(raw: bytes, cap: int) -> None:
    assert comparable(feed_whole(raw, cap)) == comparable(feed_chunks(one_byte_at_a_time(raw), cap))


def test_event_cut_after_a_comma_loses_only_itself() -> None:
    # protocol.py: "a '{' where no value may start ... begins the next object, so a truncated
    # event glued to a good one loses only itself".
    cut = b'{"Interface":"13.56",'
    assert comparable(feed_whole(cut + NFC_A)) == comparable([Skipped(CUT, len(cut), cut), GOOD])


# -- properties --------------------------------------------------------------------------------

FRAGMENTS = [
    b"{",
    b"}",
    b"[",
    b"]",
    b'"',
    b"\\",
    b":",
    b",",
    b" ",
    b"\r\n",
    b"\x00",
    b"\xff",
    b"\xc3\xa9",
    b'"a"',
    b"1",
    b"true",
    b"NaN",
    b"$SCRDR;",
    NFC_A,
    INSERT,
    NFC_A[:40],
    NFC_A[40:],
]
"""Pieces that steer arbitrary bytes into the decoder's interesting states."""

SKIP_REASONS = ("not JSON", "invalid UTF-8", "invalid JSON (", "object cut short", "object larger")

arbitrary_bytes = st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=8)), max_size=40).map(
        b"".join
    ),
)
caps = st.one_of(st.just(DEFAULT_MAX_OBJECT), st.integers(min_value=2, max_value=64))


@st.composite
def chunked(draw: st.DrawFn, data: st.SearchStrategy[bytes]) -> tuple[bytes, list[bytes]]:
    """Some bytes and an arbitrary chunking of them (empty chunks included)."""
    whole = draw(data)
    cuts = draw(st.lists(st.integers(min_value=0, max_value=len(whole)), max_size=12))
    return whole, split(whole, *sorted(cuts))


def reject_constant(name: str) -> object:
    raise ValueError(name)


@settings(max_examples=300, deadline=None)
@given(chunked(arbitrary_bytes), caps)
def test_arbitrary_bytes_give_items_within_the_cap(
    stream: tuple[bytes, list[bytes]], max_object: int
) -> None:
    _, chunks = stream
    decoder = StreamDecoder(max_object)
    items: list[Item] = []
    for chunk in chunks:
        with contextlib.suppress(ProtocolError):  # the decoder's own error, nothing else
            items += decoder.feed(chunk)
        assert decoder.buffered <= max_object
    for item in items:
        if isinstance(item, Frame):
            assert len(item.payload) <= max_object
            decoded = json.loads(item.payload.decode(), parse_constant=reject_constant)
            assert isinstance(decoded, dict)
            assert list(decoded.items()) == list(item.fields.items())
        else:
            assert item.reason.startswith(SKIP_REASONS)
            assert item.size > 0
            assert len(item.sample) <= min(SAMPLE_SIZE, item.size)


@settings(max_examples=300, deadline=None)
@given(chunked(arbitrary_bytes), caps)
def test_chunking_does_not_change_the_items(
    stream: tuple[bytes, list[bytes]], max_object: int
) -> None:
    whole, chunks = stream
    assert comparable(feed_chunks(chunks, max_object)) == comparable(feed_whole(whole, max_object))


junk_words = (
    st.binary(min_size=1, max_size=30)
    .map(lambda word: word.translate(None, delete=b" \t\r\n\x00{"))
    .filter(bool)
)
"""Bytes that cannot start an object and are no separator: junk, whatever else they hold."""
blanks = st.text(" \t", min_size=1, max_size=3).map(str.encode)
LINE_ENDS = {b"\r\n": [], b"\n": [], b"\r": [], b"\x00": [], b"{}": [frame(b"{}")]}
"""What ends a junk run, and the items that ending itself gives."""


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(junk_words, blanks), min_size=1, max_size=8),
    st.sampled_from([b"", b" ", b"\t \r\n\x00"]),
    st.sampled_from(sorted(LINE_ENDS)),
    caps,
    st.data(),
)
def test_junk_line_is_one_run_in_any_chunking(
    words: list[tuple[bytes, bytes]],
    before: bytes,
    line_end: bytes,
    max_object: int,
    data: st.DataObject,
) -> None:
    # Words and the blanks after each (trailing ones too) make one run, cut only by the cap.
    run = b"".join(word + blank for word, blank in words)
    whole = before + run + line_end
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(whole)), max_size=12))
    expected = [*not_json(run, max_object), *LINE_ENDS[line_end]]
    assert comparable(feed_chunks(split(whole, *sorted(cuts)), max_object)) == comparable(expected)


flat_objects = st.dictionaries(
    st.text(max_size=10),
    st.one_of(st.text(max_size=20), st.integers(), st.booleans(), st.none()),
    max_size=5,
)
"""READER EVENT-shaped objects: string keys, flat scalar values (any text, escapes included)."""

LAYOUTS = [
    {"separators": (",", ":")},
    {"separators": (", ", ": ")},
    {"indent": 1},
    {"indent": "\t"},
]
"""How the objects are written: the decoder must give the compact form for each."""


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(flat_objects, st.sampled_from([b"", b"\r\n", b"\n", b"\x00", b" "])),
        max_size=5,
    ),
    st.sampled_from(LAYOUTS),
    st.data(),
)
def test_valid_objects_come_back_exactly_in_any_chunking(
    objects: list[tuple[dict[str, object], bytes]],
    layout: dict[str, object],
    data: st.DataObject,
) -> None:
    whole = b"".join(
        json.dumps(obj, ensure_ascii=False, **layout).encode() + separator  # type: ignore[arg-type]
        for obj, separator in objects
    )
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(whole)), max_size=12))
    items = feed_chunks(split(whole, *sorted(cuts)))
    assert [type(item) for item in items] == [Frame] * len(objects)
    for item, (obj, _) in zip(items, objects, strict=True):
        assert isinstance(item, Frame)
        assert item.payload == compact(obj)
        assert item.fields == obj
        assert list(item.fields) == list(obj)
