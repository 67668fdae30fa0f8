"""Tests for bridge.commands: every form the README's Commands section accepts, with its exact
canonical bytes; every refusal it lists; and Hypothesis properties that any payload either becomes a
valid, idempotent Command or raises CommandError, never anything else."""

from __future__ import annotations

import itertools
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.commands import (
    FIELDS,
    MAX_PAYLOAD,
    Command,
    CommandError,
    RateLimit,
    parse_command,
)

# -- helpers -----------------------------------------------------------------------------------


def _xor(data: bytes) -> int:
    result = 0
    for byte in data:
        result ^= byte
    return result


def checksum_exclusive(line: str) -> int:
    """XOR of the characters strictly between '$' and '*' (``line`` has no '*' yet)."""
    assert line.startswith("$")
    assert "*" not in line
    return _xor(line.encode("ascii")[1:])


def checksum_inclusive(line: str) -> int:
    """XOR of the characters from '$' to '*', both included."""
    assert line.startswith("$")
    assert "*" not in line
    return _xor((line + "*").encode("ascii"))


def with_checksum(line: str, checksum: int, fmt: str = "{:02X}") -> bytes:
    return f"{line}*{fmt.format(checksum)}".encode("ascii")


def wrong_checksum(line: str) -> int:
    valid = {checksum_exclusive(line), checksum_inclusive(line)}
    return next(value for value in range(256) if value not in valid)


def refused(payload: bytes, match: str, **kwargs: frozenset[str]) -> CommandError:
    with pytest.raises(CommandError, match=match) as info:
        parse_command(payload, **kwargs)
    return info.value


# -- §3.1 accepted forms and their canonical bytes ---------------------------------------------

ACCEPTED_JSON = [
    # Sequence: integer is decimal, string is hex, names in any case.
    pytest.param('{"Sequence":96}', b'{"Sequence":"60"}', id="sequence-int-is-decimal-96-to-60"),
    pytest.param('{"Sequence":14}', b'{"Sequence":"0E"}', id="sequence-int-14-to-0E"),
    pytest.param('{"Sequence":"60"}', b'{"Sequence":"60"}', id="sequence-string-is-hex"),
    pytest.param('{"Sequence":"0e"}', b'{"Sequence":"0E"}', id="sequence-hex-upper-cased"),
    pytest.param('{"Sequence":"6"}', b'{"Sequence":"06"}', id="sequence-one-hex-digit-padded"),
    pytest.param('{"Sequence":"0"}', b'{"Sequence":"00"}', id="sequence-hex-zero"),
    pytest.param('{"Sequence":"ff"}', b'{"Sequence":"FF"}', id="sequence-hex-max-ff"),
    pytest.param('{"Sequence":0}', b'{"Sequence":"00"}', id="sequence-int-lower-bound-0"),
    pytest.param('{"Sequence":255}', b'{"Sequence":"FF"}', id="sequence-int-upper-bound-255"),
    pytest.param('{"Sequence":-0}', b'{"Sequence":"00"}', id="sequence-int-negative-zero"),
    pytest.param('{"Sequence":"wink"}', b'{"Sequence":"0E"}', id="sequence-name-wink"),
    pytest.param('{"Sequence":"accept"}', b'{"Sequence":"60"}', id="sequence-name-accept"),
    pytest.param('{"Sequence":"deny"}', b'{"Sequence":"61"}', id="sequence-name-deny"),
    pytest.param('{"Sequence":"WINK"}', b'{"Sequence":"0E"}', id="sequence-name-upper-case"),
    pytest.param('{"Sequence":"AcCePt"}', b'{"Sequence":"60"}', id="sequence-name-mixed-case"),
    pytest.param('{"Sequence":"Deny"}', b'{"Sequence":"61"}', id="sequence-name-capitalised"),
    # Field names are case-insensitive and forwarded with the reader's spelling.
    pytest.param('{"sequence":96}', b'{"Sequence":"60"}', id="field-name-lower-case"),
    pytest.param('{"SEQUENCE":"0e"}', b'{"Sequence":"0E"}', id="field-name-upper-case"),
    pytest.param('{"LEDS":"92929292"}', b'{"Leds":"92929292"}', id="field-name-LEDS"),
    pytest.param('{"bUzZeR":100}', b'{"Buzzer":"0064"}', id="field-name-mixed-case"),
    pytest.param(
        '{"rgbcolor":1,"RGBMODE":2}',
        b'{"RgbColor":"000001","RgbMode":"02"}',
        id="field-name-rgb-any-case",
    ),
    pytest.param(
        '{"relay":true,"RELAYS":[1]}',
        b'{"Relay":true,"Relays":[1]}',
        id="field-name-relay-any-case",
    ),
    # Leds: exactly eight hex digits, upper-cased.
    pytest.param('{"Leds":"92929292"}', b'{"Leds":"92929292"}', id="leds-eight-digits"),
    pytest.param('{"Leds":"a1b2c3d4"}', b'{"Leds":"A1B2C3D4"}', id="leds-upper-cased"),
    pytest.param('{"Leds":"00000000"}', b'{"Leds":"00000000"}', id="leds-all-off"),
    # Buzzer: integer decimal, string hex, four upper-case digits.
    pytest.param('{"Buzzer":100}', b'{"Buzzer":"0064"}', id="buzzer-int-100-to-0064"),
    pytest.param('{"Buzzer":"64"}', b'{"Buzzer":"0064"}', id="buzzer-hex-64-to-0064"),
    pytest.param('{"Buzzer":"0064"}', b'{"Buzzer":"0064"}', id="buzzer-hex-four-digits"),
    pytest.param('{"Buzzer":65535}', b'{"Buzzer":"FFFF"}', id="buzzer-int-upper-bound-65535"),
    pytest.param('{"Buzzer":"FFFF"}', b'{"Buzzer":"FFFF"}', id="buzzer-hex-upper-bound-FFFF"),
    pytest.param('{"Buzzer":"ffff"}', b'{"Buzzer":"FFFF"}', id="buzzer-hex-lower-case"),
    pytest.param('{"Buzzer":0}', b'{"Buzzer":"0000"}', id="buzzer-int-lower-bound-0"),
    # RgbColor (six digits) and RgbMode (two digits).
    pytest.param('{"RgbColor":16711680}', b'{"RgbColor":"FF0000"}', id="rgbcolor-int"),
    pytest.param('{"RgbColor":"ff0000"}', b'{"RgbColor":"FF0000"}', id="rgbcolor-hex-upper"),
    pytest.param('{"RgbColor":"1"}', b'{"RgbColor":"000001"}', id="rgbcolor-hex-padded"),
    pytest.param('{"RgbColor":16777215}', b'{"RgbColor":"FFFFFF"}', id="rgbcolor-int-max"),
    pytest.param('{"RgbColor":"FFFFFF"}', b'{"RgbColor":"FFFFFF"}', id="rgbcolor-hex-max"),
    pytest.param('{"RgbColor":0}', b'{"RgbColor":"000000"}', id="rgbcolor-zero"),
    pytest.param('{"RgbMode":1}', b'{"RgbMode":"01"}', id="rgbmode-int"),
    pytest.param('{"RgbMode":"ff"}', b'{"RgbMode":"FF"}', id="rgbmode-hex-max"),
    pytest.param('{"RgbMode":255}', b'{"RgbMode":"FF"}', id="rgbmode-int-max"),
    # Relay: passed through (bool, int 0-65535, hex upper-cased).
    pytest.param('{"Relay":true}', b'{"Relay":true}', id="relay-true"),
    pytest.param('{"Relay":false}', b'{"Relay":false}', id="relay-false"),
    pytest.param('{"Relay":1}', b'{"Relay":1}', id="relay-int"),
    pytest.param('{"Relay":0}', b'{"Relay":0}', id="relay-int-zero-stays-int"),
    pytest.param('{"Relay":65535}', b'{"Relay":65535}', id="relay-int-max"),
    pytest.param('{"Relay":"a"}', b'{"Relay":"A"}', id="relay-hex-one-digit-upper-cased"),
    pytest.param('{"Relay":"00ff"}', b'{"Relay":"00FF"}', id="relay-hex-four-digits"),
    # Relays: a list of 1-8 relay values.
    pytest.param('{"Relays":[true,0,"ff"]}', b'{"Relays":[true,0,"FF"]}', id="relays-mixed"),
    pytest.param('{"Relays":[false]}', b'{"Relays":[false]}', id="relays-single"),
    pytest.param(
        '{"Relays":[1,2,3,4,5,6,7,8]}',
        b'{"Relays":[1,2,3,4,5,6,7,8]}',
        id="relays-eight-is-the-maximum",
    ),
    # Combinations and field order.
    pytest.param(
        '{"Relay":true,"Sequence":"60"}',
        b'{"Sequence":"60","Relay":true}',
        id="sequence-with-relay-allowed",
    ),
    pytest.param(
        '{"Relays":[true],"sequence":"accept"}',
        b'{"Sequence":"60","Relays":[true]}',
        id="sequence-with-relays-allowed",
    ),
    pytest.param(
        '{"Buzzer":"0064","Leds":"92929292"}',
        b'{"Leds":"92929292","Buzzer":"0064"}',
        id="leds-and-buzzer-reordered",
    ),
    pytest.param(
        '{"Relays":[1],"Relay":false,"Buzzer":1,"RgbMode":2,"RgbColor":3,"Leds":"0000000f"}',
        b'{"Leds":"0000000F","RgbColor":"000003","RgbMode":"02","Buzzer":"0001",'
        b'"Relay":false,"Relays":[1]}',
        id="all-but-sequence-reversed-input-fixed-output-order",
    ),
    pytest.param(
        ' \r\n{ "Sequence" : 96 }\r\n ',
        b'{"Sequence":"60"}',
        id="surrounding-and-inner-whitespace-compacted",
    ),
]


@pytest.mark.parametrize(("payload", "expected"), ACCEPTED_JSON)
def test_json_command_is_encoded_canonically(payload: str, expected: bytes) -> None:
    command = parse_command(payload.encode())
    assert command.encode() == expected
    assert command.transaction is None


def test_field_order_is_fixed_whatever_the_input_order() -> None:
    values = {
        "Leds": '"92929292"',
        "RgbColor": '"ff00ff"',
        "RgbMode": "3",
        "Buzzer": "100",
        "Relay": "true",
        "Relays": '[1,"a"]',
    }
    expected = (
        b'{"Leds":"92929292","RgbColor":"FF00FF","RgbMode":"03","Buzzer":"0064",'
        b'"Relay":true,"Relays":[1,"A"]}'
    )
    for order in itertools.permutations(values):
        payload = "{" + ",".join(f'"{name}":{values[name]}' for name in order) + "}"
        assert parse_command(payload.encode()).encode() == expected, payload


def test_field_names_are_forwarded_in_the_readers_spelling() -> None:
    command = parse_command(b'{"sEQUENCE":1,"rELAY":true}')
    assert [name for name, _ in command.fields] == ["Sequence", "Relay"]
    assert command.as_dict() == {"Sequence": "01", "Relay": True}


SCCMD_SEQ = "$SCCMD;SEQ=60"
SCCMD_LEDS = "$SCCMD;LEDS=92929292;BUZZ=0064"
SCCMD_LOWER = "$sccmd;leds=92929292;buzz=64"
LEDS_BUZZ = b'{"Leds":"92929292","Buzzer":"0064"}'

ACCEPTED_SCCMD = [
    pytest.param(SCCMD_SEQ.encode(), b'{"Sequence":"60"}', id="sccmd-seq"),
    pytest.param(b"$SCCMD;SEQ=0e", b'{"Sequence":"0E"}', id="sccmd-seq-hex-upper-cased"),
    pytest.param(b"$SCCMD;SEQ=6", b'{"Sequence":"06"}', id="sccmd-seq-one-digit-padded"),
    pytest.param(SCCMD_LEDS.encode(), LEDS_BUZZ, id="sccmd-leds-and-buzz"),
    pytest.param(b"$SCCMD;BUZZ=0064;LEDS=92929292", LEDS_BUZZ, id="sccmd-keys-in-any-order"),
    pytest.param(b"$SCCMD;BUZZ=64", b'{"Buzzer":"0064"}', id="sccmd-buzz-is-hex-padded"),
    pytest.param(b"$sccmd;seq=60", b'{"Sequence":"60"}', id="sccmd-lower-case-keys"),
    pytest.param(SCCMD_LOWER.encode(), LEDS_BUZZ, id="sccmd-lower-case-keys-and-values"),
    pytest.param(b"$SCCMD;SEQ=60\r\n", b'{"Sequence":"60"}', id="sccmd-trailing-crlf"),
    pytest.param(
        with_checksum(SCCMD_SEQ, checksum_exclusive(SCCMD_SEQ)),
        b'{"Sequence":"60"}',
        id="sccmd-seq-checksum-exclusive",
    ),
    pytest.param(
        with_checksum(SCCMD_SEQ, checksum_inclusive(SCCMD_SEQ)),
        b'{"Sequence":"60"}',
        id="sccmd-seq-checksum-inclusive",
    ),
    pytest.param(
        with_checksum(SCCMD_LEDS, checksum_exclusive(SCCMD_LEDS)),
        LEDS_BUZZ,
        id="sccmd-leds-checksum-exclusive",
    ),
    pytest.param(
        with_checksum(SCCMD_LEDS, checksum_inclusive(SCCMD_LEDS)),
        LEDS_BUZZ,
        id="sccmd-leds-checksum-inclusive",
    ),
    pytest.param(
        with_checksum(SCCMD_LEDS, checksum_exclusive(SCCMD_LEDS)) + b"\r\n",
        LEDS_BUZZ,
        id="sccmd-checksum-exclusive-trailing-crlf",
    ),
    pytest.param(
        with_checksum(SCCMD_LEDS, checksum_inclusive(SCCMD_LEDS)) + b"\r\n",
        LEDS_BUZZ,
        id="sccmd-checksum-inclusive-trailing-crlf",
    ),
    pytest.param(
        with_checksum(SCCMD_LOWER, checksum_exclusive(SCCMD_LOWER), "{:02x}") + b"\r\n",
        LEDS_BUZZ,
        id="sccmd-lower-case-text-and-checksum-exclusive",
    ),
    pytest.param(
        with_checksum(SCCMD_LOWER, checksum_inclusive(SCCMD_LOWER), "{:02x}"),
        LEDS_BUZZ,
        id="sccmd-lower-case-text-and-checksum-inclusive",
    ),
]


@pytest.mark.parametrize(("payload", "expected"), ACCEPTED_SCCMD)
def test_sccmd_text_is_encoded_canonically(payload: bytes, expected: bytes) -> None:
    command = parse_command(payload)
    assert command.encode() == expected
    assert command.transaction is None


def test_the_two_checksum_definitions_differ() -> None:
    # Otherwise the inclusive/exclusive cases above would test the same thing.
    for line in (SCCMD_SEQ, SCCMD_LEDS, SCCMD_LOWER):
        assert checksum_exclusive(line) != checksum_inclusive(line)
    # Hand-computed: '$' ^ '*' == 0x0E.
    assert checksum_exclusive(SCCMD_SEQ) ^ checksum_inclusive(SCCMD_SEQ) == 0x0E


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        pytest.param(b"wink", "0E", id="wink-is-0E"),
        pytest.param(b"accept", "60", id="accept-is-60"),
        pytest.param(b"deny", "61", id="deny-is-61"),
        pytest.param(b"WINK", "0E", id="word-upper-case"),
        pytest.param(b"Accept", "60", id="word-capitalised"),
        pytest.param(b"dEnY", "61", id="word-mixed-case"),
        pytest.param(b"  accept\r\n", "60", id="word-surrounded-by-whitespace"),
        pytest.param(b"\tdeny \n", "61", id="word-tabs-and-newline"),
    ],
)
def test_bare_word_becomes_sequence(payload: bytes, code: str) -> None:
    command = parse_command(payload)
    assert command.encode() == f'{{"Sequence":"{code}"}}'.encode()
    assert command.transaction is None


@pytest.mark.parametrize(
    ("payload", "transaction", "expected"),
    [
        pytest.param(
            '{"transaction":"door-7","Sequence":"60"}',
            "door-7",
            b'{"Sequence":"60"}',
            id="string-transaction",
        ),
        pytest.param(
            '{"Sequence":"accept","transaction":42}',
            42,
            b'{"Sequence":"60"}',
            id="int-transaction-after-field",
        ),
        pytest.param(
            '{"transaction":1.5,"Relay":true}', 1.5, b'{"Relay":true}', id="float-transaction"
        ),
        pytest.param(
            '{"transaction":0,"Buzzer":100}',
            0,
            b'{"Buzzer":"0064"}',
            id="zero-transaction-is-not-none",
        ),
        pytest.param(
            '{"transaction":"","Leds":"92929292"}',
            "",
            b'{"Leds":"92929292"}',
            id="empty-string-transaction",
        ),
    ],
)
def test_transaction_is_echoed_and_never_forwarded(
    payload: str, transaction: str | float, expected: bytes
) -> None:
    command = parse_command(payload.encode())
    assert command.transaction == transaction
    assert type(command.transaction) is type(transaction)
    assert command.encode() == expected
    assert b"transaction" not in command.encode().lower()


# -- payload size ------------------------------------------------------------------------------


def _pad_to(payload: bytes, size: int, where: str) -> bytes:
    padding = b" " * (size - len(payload))
    if where == "end":
        return payload + padding
    if where == "start":
        return padding + payload
    head, sep, tail = payload.partition(b":")
    return head + sep + padding + tail  # inside the JSON object


@pytest.mark.parametrize("where", ["end", "start", "inside"])
def test_valid_payload_of_exactly_1024_bytes_is_accepted(where: str) -> None:
    payload = _pad_to(b'{"transaction":"t","Sequence":96}', MAX_PAYLOAD, where)
    assert len(payload) == MAX_PAYLOAD == 1024
    command = parse_command(payload)
    assert command.encode() == b'{"Sequence":"60"}'
    assert command.transaction == "t"


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"$SCCMD;SEQ=60", id="sccmd"),
        pytest.param(b"accept", id="word"),
    ],
)
def test_text_forms_of_exactly_1024_bytes_are_accepted(payload: bytes) -> None:
    padded = _pad_to(payload, MAX_PAYLOAD, "end")
    assert parse_command(padded).encode() == b'{"Sequence":"60"}'


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(_pad_to(b'{"Sequence":96}', 1025, "end"), id="json-1025-bytes"),
        pytest.param(_pad_to(b'{"Sequence":96}', 1025, "inside"), id="json-1025-bytes-inside"),
        pytest.param(_pad_to(b"accept", 1025, "start"), id="word-1025-bytes"),
        pytest.param(_pad_to(b"$SCCMD;SEQ=60", 1025, "end"), id="sccmd-1025-bytes"),
    ],
)
def test_payload_one_byte_over_the_limit_is_refused(payload: bytes) -> None:
    assert len(payload) == MAX_PAYLOAD + 1
    refused(payload, r"1025 bytes; the limit is 1024 bytes")


def test_huge_payload_is_refused_before_decoding() -> None:
    refused(b"\xff" * 100_000, r"100000 bytes; the limit is 1024")


# -- §3.2 refused forms ------------------------------------------------------------------------

# JSON objects that are refused; each is also tried with a valid transaction, which the error
# must carry back.
REFUSED_OBJECTS = [
    # unknown fields
    pytest.param({"Color": "red"}, r"unknown field 'Color'", id="unknown-field"),
    pytest.param(
        {"Sequence": 1, "Beep": 1}, r"unknown field 'Beep'", id="unknown-field-beside-known"
    ),
    pytest.param({"Sequences": 1}, r"unknown field 'Sequences'", id="unknown-field-near-miss"),
    # Sequence out of range or mistyped
    pytest.param(
        {"Sequence": 256},
        r"Sequence must be between 0 and 255, got 256",
        id="sequence-256-out-of-range",
    ),
    pytest.param(
        {"Sequence": -1}, r"Sequence must be between 0 and 255, got -1", id="sequence-negative"
    ),
    pytest.param(
        {"Sequence": "100"},
        r"Sequence must be .*hex string of 1-2 digits, got \"100\"",
        id="sequence-three-hex-digits",
    ),
    pytest.param({"Sequence": ""}, r"Sequence must be", id="sequence-empty-string"),
    pytest.param({"Sequence": "zz"}, r"Sequence must be", id="sequence-non-hex"),
    pytest.param({"Sequence": "0x"}, r"Sequence must be", id="sequence-0x-prefix"),
    pytest.param({"Sequence": " 6"}, r"Sequence must be", id="sequence-space-in-string"),
    pytest.param({"Sequence": "-1"}, r"Sequence must be", id="sequence-negative-hex-string"),
    pytest.param({"Sequence": "winky"}, r"Sequence must be", id="sequence-unknown-name"),
    pytest.param(
        {"Sequence": True}, r"Sequence must be an integer .*got true", id="sequence-bool-mistyped"
    ),
    pytest.param({"Sequence": 96.0}, r"Sequence must be .*got 96\.0", id="sequence-float"),
    pytest.param({"Sequence": [96]}, r"Sequence must be", id="sequence-list"),
    pytest.param({"Sequence": {"code": 96}}, r"Sequence must be", id="sequence-object"),
    pytest.param({"Sequence": None}, r"Sequence must be .*got null", id="sequence-null"),
    # Buzzer
    pytest.param(
        {"Buzzer": 65536},
        r"Buzzer must be between 0 and 65535, got 65536",
        id="buzzer-65536-out-of-range",
    ),
    pytest.param({"Buzzer": "10000"}, r"Buzzer must be .*1-4 digits", id="buzzer-five-hex-digits"),
    pytest.param({"Buzzer": -1}, r"Buzzer must be between 0 and 65535", id="buzzer-negative"),
    pytest.param({"Buzzer": False}, r"Buzzer must be", id="buzzer-bool"),
    pytest.param({"Buzzer": 1.5}, r"Buzzer must be", id="buzzer-float"),
    pytest.param({"Buzzer": "1g3"}, r"Buzzer must be", id="buzzer-hex-with-non-hex-letter"),
    # Leds
    pytest.param({"Leds": "9292929"}, r"Leds must be exactly 8 hex digits", id="leds-seven-digits"),
    pytest.param(
        {"Leds": "929292929"}, r"Leds must be exactly 8 hex digits", id="leds-nine-digits"
    ),
    pytest.param({"Leds": "9292929G"}, r"Leds must be exactly 8 hex digits", id="leds-non-hex"),
    pytest.param({"Leds": ""}, r"Leds must be exactly 8 hex digits", id="leds-empty"),
    pytest.param({"Leds": 92929292}, r"Leds must be exactly 8 hex digits", id="leds-int"),
    pytest.param({"Leds": ["92929292"]}, r"Leds must be", id="leds-list"),
    # RgbColor / RgbMode
    pytest.param(
        {"RgbColor": 16777216},
        r"RgbColor must be between 0 and 16777215",
        id="rgbcolor-over-FFFFFF",
    ),
    pytest.param(
        {"RgbColor": "1000000"}, r"RgbColor must be .*1-6 digits", id="rgbcolor-seven-hex-digits"
    ),
    pytest.param({"RgbColor": True}, r"RgbColor must be", id="rgbcolor-bool"),
    pytest.param({"RgbColor": "red"}, r"RgbColor must be", id="rgbcolor-name"),
    pytest.param({"RgbMode": 256}, r"RgbMode must be between 0 and 255", id="rgbmode-256"),
    pytest.param({"RgbMode": "100"}, r"RgbMode must be .*1-2 digits", id="rgbmode-three-digits"),
    # Relay / Relays
    pytest.param({"Relay": 65536}, r"Relay must be true/false", id="relay-int-too-big"),
    pytest.param({"Relay": -1}, r"Relay must be", id="relay-negative"),
    pytest.param({"Relay": "12345"}, r"Relay must be .*1-4 digits", id="relay-five-hex-digits"),
    pytest.param({"Relay": ""}, r"Relay must be", id="relay-empty-string"),
    pytest.param({"Relay": "on"}, r"Relay must be", id="relay-non-hex-string"),
    pytest.param({"Relay": 1.5}, r"Relay must be", id="relay-float"),
    pytest.param({"Relay": None}, r"Relay must be", id="relay-null"),
    pytest.param({"Relay": [True]}, r"Relay must be", id="relay-list"),
    pytest.param({"Relay": {}}, r"Relay must be", id="relay-object"),
    pytest.param({"Relays": []}, r"Relays must be a list of 1-8", id="relays-empty"),
    pytest.param({"Relays": [0] * 9}, r"Relays must be a list of 1-8", id="relays-nine"),
    pytest.param({"Relays": True}, r"Relays must be a list", id="relays-not-a-list"),
    pytest.param({"Relays": "ff"}, r"Relays must be a list", id="relays-string"),
    pytest.param({"Relays": [True, 1.5]}, r"Relays\[1\] must be", id="relays-item-float"),
    pytest.param({"Relays": [[1]]}, r"Relays\[0\] must be", id="relays-nested-list"),
    pytest.param({"Relays": [65536]}, r"Relays\[0\] must be", id="relays-item-out-of-range"),
    # Sequence with a field the reader forbids beside it
    pytest.param(
        {"Sequence": "60", "Leds": "92929292"},
        r"Sequence cannot be combined with Leds",
        id="sequence-with-leds",
    ),
    pytest.param(
        {"Sequence": "60", "RgbColor": 1},
        r"Sequence cannot be combined with RgbColor",
        id="sequence-with-rgbcolor",
    ),
    pytest.param(
        {"Sequence": "60", "RgbMode": 1},
        r"Sequence cannot be combined with RgbMode",
        id="sequence-with-rgbmode",
    ),
    pytest.param(
        {"Sequence": "60", "Buzzer": 100},
        r"Sequence cannot be combined with Buzzer",
        id="sequence-with-buzzer",
    ),
    pytest.param(
        {"buzzer": 100, "SEQUENCE": "accept"},
        r"Sequence cannot be combined with Buzzer",
        id="sequence-with-buzzer-any-case",
    ),
    # keys that differ only in case
    pytest.param(
        {"Sequence": 1, "sequence": 2},
        r"field Sequence appears twice",
        id="duplicate-field-differing-case",
    ),
    pytest.param(
        {"LEDS": "00000000", "leds": "00000000"},
        r"field Leds appears twice",
        id="duplicate-leds-differing-case",
    ),
    # nothing to send
    pytest.param({}, r"no field to send", id="empty-object"),
]


@pytest.mark.parametrize(("obj", "match"), REFUSED_OBJECTS)
def test_refused_json_object(obj: dict[str, object], match: str) -> None:
    error = refused(json.dumps(obj).encode(), match)
    assert error.transaction is None


@pytest.mark.parametrize(("obj", "match"), REFUSED_OBJECTS)
@pytest.mark.parametrize("transaction", ["tx-7", 2.5], ids=["str-tx", "float-tx"])
def test_refused_json_object_echoes_its_transaction(
    obj: dict[str, object], match: str, transaction: str | float
) -> None:
    payload = json.dumps({"transaction": transaction, **obj}).encode()
    error = refused(payload, match)
    assert error.transaction == transaction
    assert type(error.transaction) is type(transaction)


@pytest.mark.parametrize("transaction", ["only", 7], ids=["str-tx", "int-tx"])
def test_object_with_only_a_transaction_is_refused_and_echoes_it(transaction: str | int) -> None:
    error = refused(json.dumps({"transaction": transaction}).encode(), r"no field to send")
    assert error.transaction == transaction
    assert type(error.transaction) is type(transaction)


REFUSED_PAYLOADS = [
    # not UTF-8
    pytest.param(b"\xff", r"not valid UTF-8 \(byte 0\)", id="non-utf8-byte"),
    pytest.param(b'{"Sequence":"\xe9"}', r"not valid UTF-8 \(byte 13\)", id="non-utf8-latin1"),
    pytest.param(b"\xc0\xaf", r"not valid UTF-8", id="non-utf8-overlong"),
    pytest.param(b"\xed\xa0\x80", r"not valid UTF-8", id="non-utf8-encoded-surrogate"),
    pytest.param(b"wink\xff", r"not valid UTF-8", id="non-utf8-after-word"),
    # invalid JSON
    pytest.param(b"{", r"invalid JSON", id="invalid-json-unclosed"),
    pytest.param(b'{"Sequence":}', r"invalid JSON", id="invalid-json-missing-value"),
    pytest.param(b"{'Sequence':1}", r"invalid JSON", id="invalid-json-single-quotes"),
    pytest.param(b'{"Sequence":1,}', r"invalid JSON", id="invalid-json-trailing-comma"),
    pytest.param(b"{Sequence:1}", r"invalid JSON", id="invalid-json-bare-key"),
    pytest.param(b'{"Sequence":0x60}', r"invalid JSON|more than one", id="invalid-json-hex-lit"),
    pytest.param("\ufeff{}".encode(), r"invalid JSON", id="invalid-json-bom"),
    # JSON, but not an object
    pytest.param(b"[]", r"must be a JSON object", id="not-object-empty-list"),
    pytest.param(b'[{"Sequence":1}]', r"must be a JSON object", id="not-object-list"),
    pytest.param(b'"accept"', r"must be a JSON object", id="not-object-quoted-string"),
    pytest.param(b"96", r"must be a JSON object", id="not-object-number"),
    pytest.param(b"1.5", r"must be a JSON object", id="not-object-float"),
    pytest.param(b"null", r"must be a JSON object, got null", id="not-object-null"),
    pytest.param(b"true", r"must be a JSON object, got a boolean", id="not-object-true"),
    # more than one JSON value
    pytest.param(b'{"a":1}{"b":2}', r"more than one JSON value", id="two-objects-adjacent"),
    pytest.param(b"{} {}", r"more than one JSON value", id="two-empty-objects"),
    pytest.param(
        b'{"Sequence":1}\n{"Sequence":2}', r"more than one JSON value", id="two-objects-newline"
    ),
    pytest.param(b'{"Sequence":1} 2', r"more than one JSON value", id="object-then-number"),
    # empty
    pytest.param(b"", r"command is empty", id="empty-payload"),
    pytest.param(b" ", r"command is empty", id="space-only"),
    pytest.param(b"\r\n", r"command is empty", id="crlf-only"),
    pytest.param(b"\t \n \r", r"command is empty", id="whitespace-only"),
    # unknown words
    pytest.param(b"hello", r"unknown command word 'hello'", id="unknown-word"),
    pytest.param(b"open", r"unknown command word", id="unknown-word-open"),
    pytest.param(b"winks", r"unknown command word", id="unknown-word-near-miss"),
    pytest.param(b"granted", r"unknown command word", id="unknown-word-granted"),
    pytest.param(b"NaN", r"unknown command word", id="unknown-word-nan"),
    pytest.param(b"wink accept", r"invalid JSON|unknown", id="two-words"),
    # duplicate keys, exactly equal
    pytest.param(
        b'{"Sequence":1,"Sequence":2}', r"'Sequence' appears twice", id="duplicate-key-exact"
    ),
    pytest.param(
        b'{"transaction":"a","transaction":"b","Sequence":1}',
        r"'transaction' appears twice",
        id="duplicate-transaction-exact",
    ),
    pytest.param(
        b'{"transaction":"a","Transaction":"b","Sequence":1}',
        r"transaction appears twice",
        id="duplicate-transaction-differing-case",
    ),
    # bad transaction
    pytest.param(
        b'{"transaction":true,"Sequence":1}',
        r"transaction must be a string or a number",
        id="transaction-bool",
    ),
    pytest.param(
        b'{"transaction":false,"Sequence":1}',
        r"transaction must be a string",
        id="transaction-false",
    ),
    pytest.param(
        b'{"transaction":[1],"Sequence":1}', r"transaction must be a string", id="transaction-list"
    ),
    pytest.param(
        b'{"transaction":{},"Sequence":1}', r"transaction must be a string", id="transaction-object"
    ),
    pytest.param(
        b'{"transaction":null,"Sequence":1}', r"transaction must be a string", id="transaction-null"
    ),
    # NaN / Infinity are not JSON
    pytest.param(b'{"Sequence":NaN}', r"invalid JSON.*NaN", id="nan-value"),
    pytest.param(b'{"Buzzer":Infinity}', r"invalid JSON.*Infinity", id="infinity-value"),
    pytest.param(b'{"Buzzer":-Infinity}', r"invalid JSON.*Infinity", id="minus-infinity-value"),
    pytest.param(b'{"transaction":NaN,"Sequence":1}', r"invalid JSON", id="nan-transaction"),
    pytest.param(b"-Infinity", r"invalid JSON", id="bare-minus-infinity"),
    pytest.param(b'{"Relays":[NaN]}', r"invalid JSON", id="nan-nested"),
]


@pytest.mark.parametrize(("payload", "match"), REFUSED_PAYLOADS)
def test_refused_payload(payload: bytes, match: str) -> None:
    refused(payload, match)


def test_duplicate_field_differing_case_echoes_the_transaction() -> None:
    error = refused(b'{"transaction":"t","Sequence":1,"sequence":2}', r"appears twice")
    assert error.transaction == "t"


def test_duplicate_key_exact_echoes_the_transaction() -> None:
    error = refused(b'{"transaction":"t","Sequence":1,"Sequence":2}', r"appears twice")
    assert error.transaction == "t"


def test_deeply_nested_json_is_refused_not_crashing() -> None:
    refused(b"[" * MAX_PAYLOAD, r"invalid JSON|nested")


def test_nested_json_within_the_limit_is_refused_as_not_an_object() -> None:
    refused(b"[" * 300 + b"]" * 300, r"must be a JSON object")
    refused(b'{"Relays":' + b"[" * 200 + b"]" * 200 + b"}", r"Relays\[0\] must be")


# -- $SCCMD refusals ---------------------------------------------------------------------------

REFUSED_SCCMD = [
    pytest.param(
        with_checksum(SCCMD_SEQ, wrong_checksum(SCCMD_SEQ)),
        r"checksum [0-9A-F]{2} is wrong",
        id="wrong-checksum-seq",
    ),
    pytest.param(
        with_checksum(SCCMD_LEDS, wrong_checksum(SCCMD_LEDS)) + b"\r\n",
        r"checksum [0-9A-F]{2} is wrong",
        id="wrong-checksum-leds-crlf",
    ),
    pytest.param(
        with_checksum(SCCMD_SEQ, checksum_exclusive(SCCMD_SEQ) ^ 1),
        r"checksum .* is wrong",
        id="checksum-off-by-one-bit",
    ),
    pytest.param(b"$SCCMD;SEQ=60*", r"checksum must be two hex digits", id="checksum-empty"),
    pytest.param(b"$SCCMD;SEQ=60*1", r"checksum must be two hex digits", id="checksum-one-digit"),
    pytest.param(
        b"$SCCMD;SEQ=60*123", r"checksum must be two hex digits", id="checksum-three-digits"
    ),
    pytest.param(b"$SCCMD;SEQ=60*ZZ", r"checksum must be two hex digits", id="checksum-non-hex"),
    pytest.param(b"$SCCMD;FOO=1", r"'FOO=1' is not KEY=VALUE", id="unknown-key"),
    pytest.param(
        b"$SCCMD;RELAY=1",
        r"is not KEY=VALUE with KEY one of SEQ, LEDS, BUZZ",
        id="relay-has-no-sccmd-key",
    ),
    pytest.param(b"$SCCMD;SEQ60", r"'SEQ60' is not KEY=VALUE", id="missing-equals"),
    pytest.param(b"$SCCMD;", r"is not KEY=VALUE", id="empty-item"),
    pytest.param(b"$SCCMD;SEQ=60;;", r"is not KEY=VALUE", id="empty-trailing-item"),
    pytest.param(b"$SCCMD;SEQ=ZZ", r"must be hex digits", id="non-hex-seq"),
    pytest.param(b"$SCCMD;SEQ=", r"must be hex digits", id="empty-seq"),
    pytest.param(b"$SCCMD;SEQ=100", r"Sequence must be", id="seq-three-digits"),
    pytest.param(b"$SCCMD;LEDS=9292929Z", r"must be hex digits", id="non-hex-leds"),
    pytest.param(b"$SCCMD;LEDS=9292", r"Leds must be exactly 8 hex digits", id="short-leds"),
    pytest.param(b"$SCCMD;BUZZ=10000", r"Buzzer must be", id="buzz-five-digits"),
    pytest.param(b"$SCCMD;BUZZ=0x64", r"must be hex digits", id="buzz-0x-prefix"),
    pytest.param(
        b"$SCCMD;SEQ=60;LEDS=92929292", r"Sequence cannot be combined with Leds", id="seq-with-leds"
    ),
    pytest.param(
        b"$SCCMD;SEQ=60;BUZZ=64", r"Sequence cannot be combined with Buzzer", id="seq-with-buzz"
    ),
    pytest.param(b"$SCCMD;SEQ=60;SEQ=61", r"SEQ appears twice", id="duplicate-key"),
    pytest.param(b"$SCCMD;seq=60;SEQ=61", r"SEQ appears twice", id="duplicate-key-any-case"),
    pytest.param(b"$SCCMD", r"no field to send", id="no-items"),
    pytest.param(b"$SCCMX;SEQ=60", r"must start with \$SCCMD", id="wrong-prefix"),
    pytest.param(b"$", r"must start with \$SCCMD", id="dollar-only"),
    pytest.param(b'${"Sequence":1}', r"must start with \$SCCMD", id="dollar-then-json"),
    pytest.param("$SCCMD;SEQ=60é*00".encode(), r"ASCII|checksum", id="non-ascii-with-checksum"),
]


@pytest.mark.parametrize(("payload", "match"), REFUSED_SCCMD)
def test_refused_sccmd(payload: bytes, match: str) -> None:
    error = refused(payload, match)
    assert error.transaction is None


def test_wrong_checksum_message_names_both_valid_checksums() -> None:
    expected = f"{checksum_exclusive(SCCMD_SEQ):02X}"
    inclusive = f"{checksum_inclusive(SCCMD_SEQ):02X}"
    refused(
        with_checksum(SCCMD_SEQ, wrong_checksum(SCCMD_SEQ)),
        rf"expected {expected}, or {inclusive} counting",
    )


def test_every_wrong_checksum_is_refused_and_both_right_ones_accepted() -> None:
    valid = {checksum_exclusive(SCCMD_LEDS), checksum_inclusive(SCCMD_LEDS)}
    for value in range(256):
        payload = with_checksum(SCCMD_LEDS, value)
        if value in valid:
            assert parse_command(payload).encode() == LEDS_BUZZ
        else:
            refused(payload, r"checksum .* is wrong")


# -- the allowed parameter ---------------------------------------------------------------------

SEQUENCE_ONLY = frozenset({"Sequence"})


@pytest.mark.parametrize(
    ("payload", "allowed", "field"),
    [
        pytest.param(b'{"Relay":true}', SEQUENCE_ONLY, "Relay", id="relay-not-allowed"),
        pytest.param(
            b'{"Sequence":"60","Relay":true}', SEQUENCE_ONLY, "Relay", id="one-of-two-not-allowed"
        ),
        pytest.param(b"$SCCMD;LEDS=92929292", SEQUENCE_ONLY, "Leds", id="sccmd-leds-not-allowed"),
        pytest.param(b"accept", frozenset({"Relay"}), "Sequence", id="word-not-allowed"),
        pytest.param(b'{"relays":[1]}', frozenset({"Relay"}), "Relays", id="relays-any-case"),
        pytest.param(b'{"Buzzer":1}', frozenset(), "Buzzer", id="nothing-allowed"),
    ],
)
def test_field_outside_allowed_is_refused_naming_it(
    payload: bytes, allowed: frozenset[str], field: str
) -> None:
    refused(payload, rf"field {field} is disabled on this bridge", allowed=allowed)


def test_disallowed_field_refusal_echoes_the_transaction() -> None:
    error = refused(
        b'{"Relay":true,"transaction":"t9"}', r"field Relay is disabled", allowed=SEQUENCE_ONLY
    )
    assert error.transaction == "t9"


@pytest.mark.parametrize(
    ("payload", "allowed", "expected"),
    [
        pytest.param(b'{"Sequence":96}', SEQUENCE_ONLY, b'{"Sequence":"60"}', id="sequence-only"),
        pytest.param(b"deny", SEQUENCE_ONLY, b'{"Sequence":"61"}', id="word-with-sequence-only"),
        pytest.param(
            b'{"Sequence":"60","Relay":true}',
            frozenset({"Sequence", "Relay"}),
            b'{"Sequence":"60","Relay":true}',
            id="sequence-and-relay",
        ),
        pytest.param(
            b"$SCCMD;LEDS=92929292;BUZZ=64",
            frozenset({"Leds", "Buzzer"}),
            LEDS_BUZZ,
            id="sccmd-leds-and-buzzer",
        ),
        pytest.param(b'{"Relay":true}', frozenset(FIELDS), b'{"Relay":true}', id="all-fields"),
    ],
)
def test_allowed_fields_pass(payload: bytes, allowed: frozenset[str], expected: bytes) -> None:
    assert parse_command(payload, allowed=allowed).encode() == expected


def test_validation_errors_come_before_the_allowed_check() -> None:
    # An invalid value is reported as such, even for a field that is also disabled.
    refused(b'{"Relay":1.5}', r"Relay must be", allowed=SEQUENCE_ONLY)


# -- Hypothesis properties ---------------------------------------------------------------------

PROPERTY = settings(deadline=None, max_examples=300, database=None)

_EXCLUSIVE_WITH_SEQUENCE = ("Leds", "RgbColor", "RgbMode", "Buzzer")
_RELAY_HEX = re.compile(r"[0-9A-F]{1,4}")


def _is_relay_value(value: object) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return 0 <= value <= 0xFFFF
    return isinstance(value, str) and _RELAY_HEX.fullmatch(value) is not None


def assert_valid(command: Command) -> None:
    """What every accepted command must look like on the wire."""
    assert isinstance(command, Command)
    encoded = command.encode()
    assert len(encoded) <= MAX_PAYLOAD
    assert b"transaction" not in encoded.lower()
    decoded = json.loads(encoded)
    assert isinstance(decoded, dict)
    assert encoded == json.dumps(decoded, separators=(",", ":")).encode()  # compact
    keys = list(decoded)
    assert keys, "a command must carry at least one field"
    assert keys == [name for name in FIELDS if name in decoded]  # subset, in FIELDS order
    assert keys == [name for name, _ in command.fields]
    if "Sequence" in decoded:
        assert re.fullmatch(r"[0-9A-F]{2}", decoded["Sequence"])
        assert not set(_EXCLUSIVE_WITH_SEQUENCE) & set(decoded)
    for name, digits in (("Leds", 8), ("RgbColor", 6), ("RgbMode", 2), ("Buzzer", 4)):
        if name in decoded:
            assert isinstance(decoded[name], str)
            assert re.fullmatch(f"[0-9A-F]{{{digits}}}", decoded[name]), (name, decoded[name])
    if "Relay" in decoded:
        assert _is_relay_value(decoded["Relay"])
    if "Relays" in decoded:
        relays = decoded["Relays"]
        assert isinstance(relays, list)
        assert 1 <= len(relays) <= 8
        assert all(_is_relay_value(item) for item in relays)
    # Idempotence: the canonical form parses to itself.
    again = parse_command(encoded)
    assert again.fields == command.fields
    assert again.encode() == encoded  # also tells true from 1, which == cannot
    assert again.transaction is None


def check(payload: bytes) -> Command | None:
    """parse_command returns a valid Command or raises CommandError; nothing else escapes."""
    try:
        command = parse_command(payload)
    except CommandError as error:
        message = str(error)
    else:
        assert_valid(command)
        return command
    assert message, "a refusal must say why"
    return None


def _in_case(name: str, mask: int) -> str:
    """``name`` with the letters whose bit is set in ``mask`` upper-cased, the rest lower."""
    return "".join(
        char.upper() if mask >> index & 1 else char.lower() for index, char in enumerate(name)
    )


def _random_case(names: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.builds(_in_case, st.sampled_from(names), st.integers(0, 2**12 - 1))


field_keys = _random_case((*FIELDS, "transaction"))
hex_strings = st.text(alphabet="0123456789abcdefABCDEF", max_size=9)


def _field_values(floats: st.SearchStrategy[float]) -> st.SearchStrategy[object]:
    scalars = st.one_of(
        st.integers(-3, 70_000),
        st.integers(),
        hex_strings,
        st.sampled_from(["wink", "Accept", "DENY", "nope", "0x10", ""]),
        st.booleans(),
        st.none(),
        floats,
        st.text(max_size=5),
    )
    return scalars | st.lists(scalars, max_size=9)  # Relays allows 8


field_values = _field_values(st.floats())
finite_field_values = _field_values(st.floats(allow_nan=False, allow_infinity=False))
field_only_keys = _random_case(FIELDS)
transactions = (
    st.text(max_size=20) | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
)
json_leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=3)
        # pairs, not st.dictionaries: no uniqueness retries, and duplicates collapse
        | st.lists(st.tuples(field_keys | st.text(max_size=4), children), max_size=3).map(dict)
    ),
    max_leaves=6,
)


@PROPERTY
@given(st.binary(max_size=MAX_PAYLOAD + 64))
def test_property_arbitrary_bytes(payload: bytes) -> None:
    check(payload)


@PROPERTY
@given(st.text(max_size=200))
def test_property_arbitrary_text(text: str) -> None:
    check(text.encode("utf-8", "surrogatepass"))


@PROPERTY
@given(json_values)
def test_property_arbitrary_json_values(value: object) -> None:
    check(json.dumps(value).encode())


@PROPERTY
@given(st.lists(st.tuples(field_keys, field_values), max_size=4))
def test_property_objects_with_field_names_in_random_case(
    pairs: list[tuple[str, object]],
) -> None:
    # Written out pair by pair, so a repeated key reaches the parser as a duplicate.
    items = ",".join(f"{json.dumps(key)}:{json.dumps(value)}" for key, value in pairs)
    command = check(f"{{{items}}}".encode())
    if command is not None:
        # Every field sent came from the input, once, whatever its case; transaction never sent.
        keys = [key.lower() for key, _ in pairs]
        assert len(keys) == len(set(keys))
        sent = {name.lower() for name, _ in command.fields}
        assert sent <= set(keys)
        assert "transaction" not in sent


@PROPERTY
@given(field_only_keys, finite_field_values, transactions)
def test_property_valid_transaction_is_echoed_on_success_and_refusal(
    key: str, value: object, transaction: str | float
) -> None:
    payload = json.dumps({key: value, "transaction": transaction}).encode()
    try:
        command = parse_command(payload)
    except CommandError as error:
        echoed = error.transaction
    else:
        assert_valid(command)
        echoed = command.transaction
    assert echoed == transaction


sccmd_items = st.tuples(
    st.sampled_from(["SEQ", "seq", "LEDS", "Leds", "BUZZ", "buzz", "FOO", ""]),
    st.sampled_from(["=", "", "=="]),
    hex_strings | st.sampled_from(["wink", "60", "92929292", "0064"]),
).map("".join)


@PROPERTY
@given(
    st.lists(sccmd_items, max_size=3),
    st.sampled_from(["none", "exclusive", "inclusive", "random"]),
    st.integers(0, 255),
    st.sampled_from(["", "\r\n", " "]),
)
def test_property_sccmd_lines(items: list[str], checksum: str, anything: int, tail: str) -> None:
    line = ";".join(["$SCCMD", *items])
    if checksum == "none":
        payload = line.encode()
    elif checksum == "exclusive":
        payload = with_checksum(line, checksum_exclusive(line))
    elif checksum == "inclusive":
        payload = with_checksum(line, checksum_inclusive(line))
    else:
        payload = with_checksum(line, anything)
    command = check(payload + tail.encode())
    if checksum in ("exclusive", "inclusive"):
        # A right checksum never changes the outcome of the line without one.
        plain = check(line.encode())
        assert (command is None) == (plain is None)
        if command is not None and plain is not None:
            assert command.encode() == plain.encode()
    elif checksum == "random" and anything not in (
        checksum_exclusive(line),
        checksum_inclusive(line),
    ):
        assert command is None


# -- the rate limit (pure: the test passes the clock) ------------------------------------------


def test_rate_limit_allows_a_burst_then_the_rate() -> None:
    limit = RateLimit(rate=2, burst=3)
    assert [limit.allow(10.0) for _ in range(4)] == [True, True, True, False]
    assert not limit.allow(10.4)  # 0.8 token refilled: not yet one
    assert limit.allow(10.5)  # one token after 0.5 s at 2/s
    assert not limit.allow(10.5)
    assert [limit.allow(100.0) for _ in range(4)] == [True, True, True, False]  # capped at burst


def test_rate_limit_zero_means_unlimited() -> None:
    limit = RateLimit(rate=0, burst=1)
    assert all(limit.allow(1.0) for _ in range(1000))
