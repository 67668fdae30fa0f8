"""Frames READER EVENT objects out of the reader's TCP byte stream.

No I/O happens here: no socket, no clock, no logging. The caller feeds bytes and gets
frames back, like h11's ``receive_data``/``next_event`` (see docs/architecture.md), so every split
point and every garbage pattern can be tested without a network.

What the reader sends (docs/reader-protocol.md §1): compact JSON objects, separated by CR LF, LF,
NUL, spaces or nothing at all, never announced, sometimes long (a template's ``TagData``), up to 64
kB. One ``recv`` is not one message. The decoder therefore tracks just enough JSON structure
(strings, escapes, nesting) to find where an object ends, and gives back:

* :class:`Frame` - a complete, valid JSON object, re-serialised compact by dropping the
  whitespace outside strings, so keys, values, key order and number spelling are exactly
  the reader's;
* :class:`Skipped` - bytes it could not use (not JSON, invalid UTF-8, invalid JSON, an
  object over the cap, an object that never closed) with the reason, for the caller to log
  and count. It then resynchronises on the next ``{`` and goes on.

Bytes between objects that cannot start one are junk, reported as one "not JSON" run per
line, not per word: a run starts at its first junk byte, goes on across spaces and tabs
(trailing ones included, so a run is everything from its start to its end) and ends at CR,
LF, NUL or a ``{``, which starts the next object. A run longer than the cap is reported in
pieces of the cap, and only its first bytes are kept as the sample.

An object "never closes" when a byte arrives that JSON cannot have at that place: a raw
control character (CR, LF, NUL, ...) inside a string, a NUL between tokens, a ``{`` where no
value may start, a string right after a value. Such a ``{`` begins the next object. And since
events are flat, a cut object that holds a ``{`` (an event swallowed as a nested value after
``"TagId":``, or as the tail of an unterminated string) is read once more from that ``{``:
a truncated event glued to a good one loses only itself. Anything else unterminated is
bounded by the cap, and every report is the same however the bytes were chunked.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Final

DEFAULT_MAX_OBJECT: Final = 64 * 1024
"""The $SCRDR text format tells hosts to accept messages up to 64 kB; JSON is assumed alike."""

SAMPLE_SIZE: Final = 40
"""How many bytes of skipped data a :class:`Skipped` keeps, for the log."""

_SEPARATORS: Final = b" \t\r\n\x00"
_JSON_SPACE: Final = b" \t\r\n"
_STRUCTURAL: Final = b'{}[]:,"'
_STRING_STARTERS: Final = b"{[:,"

_IDLE_SEPARATORS = re.compile(rb"[ \t\r\n\x00]*")
_IDLE_JUNK = re.compile(rb"[^\r\n\x00{]*")  # a junk run goes on across spaces and tabs
_RUN_ENDS: Final = b"\r\n\x00"
_STRING_RUN = re.compile(rb'[^"\\\x00-\x1f]*')
# In the fast path, what a compact flat object (what the reader sends, docs/reader-protocol.md §1)
# has no byte of after its "{": whitespace or control bytes, or the start of a nested container.
_NOT_FLAT = re.compile(rb"[\x00-\x20{\[]")
_PLAIN_RUN = re.compile(rb'[^ \t\r\n"{}\[\]:,\x00-\x1f]+')  # numbers, true, false, null


class ProtocolError(Exception):
    """The decoder was used wrongly (for instance configured with a cap below 2 bytes)."""


@dataclass(frozen=True)
class Frame:
    """One complete READER EVENT (or any JSON object) from the reader."""

    payload: bytes
    """The object as the reader sent it, compact: whitespace between tokens removed."""
    fields: dict[str, object] = field(compare=False, repr=False)
    """The decoded object, keys in the reader's order."""


@dataclass(frozen=True)
class Skipped:
    """Bytes the decoder threw away, and why."""

    reason: str
    size: int
    sample: bytes


Item = Frame | Skipped


def _match_end(pattern: re.Pattern[bytes], data: bytes, pos: int, endpos: int) -> int:
    """End of ``pattern``'s match at ``pos``; always past ``pos`` so every step makes progress."""
    match = pattern.match(data, pos, endpos)
    return max(match.end() if match else pos, pos + 1)


def _reject_constant(name: str) -> object:
    # Python's json accepts NaN and Infinity; JSON (and MQTT consumers) do not.
    raise ValueError(f"{name} is not JSON")


_JSON = json.JSONDecoder(parse_constant=_reject_constant)  # one, not one per event


def _decode(raw: bytes) -> dict[str, object] | str:
    """The JSON object in ``raw``, or why it is not one (a Skipped reason)."""
    try:
        decoded = _JSON.decode(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return "invalid UTF-8"
    except ValueError as exc:
        return f"invalid JSON ({getattr(exc, 'msg', str(exc))})"
    except RecursionError:  # 64 KiB of "[" nests deeper than json can follow
        return "invalid JSON (nested too deeply)"
    return decoded if isinstance(decoded, dict) else "invalid JSON (not an object)"


class StreamDecoder:
    """Incremental decoder for one reader connection; make a new one per connection."""

    def __init__(self, max_object: int = DEFAULT_MAX_OBJECT) -> None:
        if max_object < 2:
            raise ProtocolError(f"max_object must be at least 2 bytes, got {max_object}")
        self.max_object = max_object
        self._in_object = False
        self._keep = True  # False while the rest of an oversized object is skipped
        self._buf = bytearray()
        self._size = 0  # raw bytes of the current object, whitespace included
        self._stack = bytearray()  # the open containers, b"{" or b"["
        self._in_string = False
        self._escape = False
        self._last = 0  # last significant byte outside strings
        self._gap = False  # whitespace followed a bare token
        self._rescanning = False
        self._in_junk = False  # inside a junk run (it may have been reported up to the cap)
        self._junk = 0  # bytes of the run not reported yet
        self._junk_sample = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished object (never more than ``max_object``)."""
        return len(self._buf) + len(self._junk_sample)

    def feed(self, data: bytes) -> list[Item]:
        """Consume ``data``; return the frames and skipped runs it completed, in order."""
        out: list[Item] = []
        pos, end = 0, len(data)
        while pos < end:
            if self._in_object:
                pos = self._object_step(data, pos, out)
            else:
                pos = self._idle_step(data, pos, out)
        return out

    # -- between objects -------------------------------------------------------------

    def _idle_step(self, data: bytes, pos: int, out: list[Item]) -> int:
        byte = data[pos]
        if byte in (_RUN_ENDS if self._in_junk else _SEPARATORS):
            self._end_junk(out)
            return _match_end(_IDLE_SEPARATORS, data, pos, len(data))
        if byte == 0x7B:  # "{"
            self._end_junk(out)
            fast = self._fast_object(data, pos, out)
            if fast:
                return fast
            self._start_object()
            return pos
        self._in_junk = True
        room = self.max_object - self._junk
        stop = _match_end(_IDLE_JUNK, data, pos, min(len(data), pos + room))
        if len(self._junk_sample) < SAMPLE_SIZE:
            self._junk_sample += data[pos : min(stop, pos + SAMPLE_SIZE - len(self._junk_sample))]
        self._junk += stop - pos
        if self._junk >= self.max_object:
            self._report_junk(out)  # a long run in bounded pieces; the run goes on
        return stop

    def _fast_object(self, data: bytes, pos: int, out: list[Item]) -> int:
        """The common case in one step: a whole compact flat object in ``data``.

        Only a valid one is taken (and the byte-by-byte path would give the very same Frame);
        anything else returns 0 and goes the slow way, so results never depend on chunking.
        """
        # Up to the first "}": if that one sits in a string, the JSON is cut short and invalid.
        end = data.find(b"}", pos, pos + self.max_object) + 1
        if end == 0:
            return 0
        raw = data[pos:end]
        if _NOT_FLAT.search(raw, 1):  # strings with spaces or brackets go the slow way too
            return 0
        decoded = _decode(raw)
        if not isinstance(decoded, dict):
            return 0
        out.append(Frame(raw, decoded))
        return end

    def _end_junk(self, out: list[Item]) -> None:
        self._report_junk(out)
        self._in_junk = False

    def _report_junk(self, out: list[Item]) -> None:
        if self._junk:
            out.append(Skipped("not JSON", self._junk, bytes(self._junk_sample)))
            self._junk = 0
            self._junk_sample.clear()

    # -- inside an object --------------------------------------------------------------

    def _start_object(self) -> None:
        self._in_object = True
        self._keep = True
        self._buf.clear()
        self._size = 0
        self._stack.clear()
        self._in_string = False
        self._escape = False
        self._last = 0
        self._gap = False

    def _value_may_start(self) -> bool:
        """May a "{" or "[" stand here? First byte, after ":", or in an array after "[" or ","."""
        if not self._stack or self._last == 0x3A:
            return True
        return self._stack[-1] == 0x5B and self._last in b"[,"

    def _object_step(self, data: bytes, pos: int, out: list[Item]) -> int:
        if self._in_string:
            return self._string_step(data, pos, out)
        byte = data[pos]
        if byte in _JSON_SPACE:
            # Dropped from the payload, but "1 2" must not become "12": remember the gap.
            self._gap = self._gap or (self._last != 0 and self._last not in _STRUCTURAL)
            self._take(data, pos, pos + 1, out, store=False)
            return pos + 1
        if byte in b"{[":
            if not self._value_may_start():
                self._abandon(out)  # this "{" starts the next object; idle will see it
                return pos
            self._stack.append(byte)
        elif byte in b"}]":
            if self._stack:
                self._stack.pop()
        elif byte == 0x22:  # '"'
            if self._last not in _STRING_STARTERS:
                self._abandon(out)
                return pos
            self._in_string = True
        elif byte < 0x20:
            self._abandon(out)  # NUL or another control byte: a separator, the object is cut
            return pos
        elif byte not in b":,":
            if self._gap and self._keep:
                self._buf += b" "  # keeps "1 2" invalid, as the reader sent it
            stop = _match_end(_PLAIN_RUN, data, pos, self._limit(data, pos))
            self._last = data[stop - 1]
            self._gap = False
            self._take(data, pos, stop, out)
            return stop
        self._last = byte
        self._gap = False
        self._take(data, pos, pos + 1, out)
        if not self._stack and self._in_object:
            self._finish(out)
        return pos + 1

    def _string_step(self, data: bytes, pos: int, out: list[Item]) -> int:
        byte = data[pos]
        if byte < 0x20:
            self._abandon(out)  # JSON strings cannot hold raw control bytes: the object was cut
            return pos
        if self._escape:
            self._escape = False
        elif byte == 0x5C:  # backslash
            self._escape = True
        elif byte == 0x22:
            self._in_string = False
            self._last = byte
        else:
            stop = _match_end(_STRING_RUN, data, pos, self._limit(data, pos))
            self._take(data, pos, stop, out)
            return stop
        self._take(data, pos, pos + 1, out)
        return pos + 1

    def _limit(self, data: bytes, pos: int) -> int:
        """Where a run may end: one byte past the cap at most, so overflow is always at cap + 1."""
        if not self._keep:
            return len(data)
        return min(len(data), pos + self.max_object - self._size + 1)

    def _take(
        self, data: bytes, start: int, stop: int, out: list[Item], store: bool = True
    ) -> None:
        self._size += stop - start
        if not self._keep:
            return
        if store:
            self._buf += data[start:stop]
        if self._size > self.max_object:
            held = self._buf[:-1] if store else self._buf  # what fitted, without the byte over
            reason = f"object larger than {self.max_object} bytes"
            out.append(Skipped(reason, self._size, bytes(held[:SAMPLE_SIZE])))
            self._keep = False
            self._buf.clear()

    def _sample(self) -> bytes:
        return bytes(self._buf[:SAMPLE_SIZE])

    def _abandon(self, out: list[Item]) -> None:
        tail = b""
        if self._keep:
            # Events are flat, so a "{" inside a cut object is most likely the next event that
            # the cut swallowed ('{"TagId":' CR LF '{...}'): read it again from there, once.
            start = -1 if self._rescanning else self._buf.find(b"{", 1)
            if start > 0:
                tail = bytes(self._buf[start:])
            held = self._buf[:start] if tail else self._buf
            size = self._size - len(tail)
            out.append(Skipped("object cut short", size, bytes(held[:SAMPLE_SIZE])))
        self._reset_object()
        if tail:
            self._rescanning = True
            try:
                out += self.feed(tail)
            finally:
                self._rescanning = False

    def _reset_object(self) -> None:
        self._in_object = False
        self._buf.clear()

    def _finish(self, out: list[Item]) -> None:
        if not self._keep:  # the tail of an oversized object, already reported
            self._reset_object()
            return
        raw = bytes(self._buf)
        self._reset_object()
        decoded = _decode(raw)
        if isinstance(decoded, str):
            out.append(Skipped(decoded, len(raw), raw[:SAMPLE_SIZE]))
            return
        # A balanced run that starts with "{" and parses is always an object.
        assert isinstance(decoded, dict)
        out.append(Frame(raw, decoded))
