"""The event path (bridge.session.EventPath) against a fake of its port, the publisher: what
the reader link reads becomes events stamped with their read time, garbage becomes one
throttled warning, the link's state goes on. No socket, no broker."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from bridge.answerer import Answerer
from bridge.options import LocalOptions
from bridge.protocol import Frame, Skipped, StreamDecoder
from bridge.session import EventPath
from bridge.worker import LocalAnswer


class FakePublisher:
    """The event path's port, and the answerer's view of the MQTT link; ``log`` says in
    which order things reached it."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[bytes, float]]] = []
        self.states: list[bool] = []
        self.log: list[str] = []
        self.is_connected = True

    def publish_events(self, events: list[tuple[bytes, float]]) -> None:
        self.batches.append(events)
        self.log.append(f"{len(events)} event(s)")

    def note_reply(self, seq: int, word: str) -> None:
        self.log.append(f"event {seq} marked {word}")

    def submit_local(self, answer: LocalAnswer) -> None:
        self.log.append(f"answer {answer.word} {answer.tag}")

    def next_seq(self) -> int:
        return 1 + sum(len(batch) for batch in self.batches)

    def set_reader_up(self, up: bool) -> None:
        self.states.append(up)


def frames(data: bytes) -> list[Frame]:
    return [item for item in StreamDecoder().feed(data) if isinstance(item, Frame)]


def test_the_frames_of_one_read_go_out_as_one_batch_stamped_with_the_read_time():
    publisher = FakePublisher()
    before = time.time()
    EventPath(publisher).frames(frames(b'{"TagId":"01"}\r\n{"TagId": "02"}\r\n'))
    after = time.time()
    (batch,) = publisher.batches
    assert [payload for payload, _ in batch] == [b'{"TagId":"01"}', b'{"TagId":"02"}']
    stamps = {stamp for _, stamp in batch}
    assert len(stamps) == 1  # one read, one time
    assert before <= stamps.pop() <= after


def test_the_link_state_goes_to_the_publisher():
    publisher = FakePublisher()
    path = EventPath(publisher)
    path.link_changed(True, "connected")
    path.link_changed(False, "the reader closed the connection")
    assert publisher.states == [True, False]


def test_garbage_is_one_warning_as_text_then_throttled(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="bridge.session")
    path = EventPath(FakePublisher())
    path.skipped(Skipped("not JSON", 12, b"$SCRDR;\xfe\x01xx"))
    path.skipped(Skipped("not JSON", 5, b"again"))
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == r"skipped 12 byte(s) from the reader: not JSON (starts '$SCRDR;\xfe\x01xx')"


def test_debug_lines_show_events_as_text(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG, logger="bridge.session")
    EventPath(FakePublisher()).frames(frames('{"TagData":"Café"}'.encode() + b"\n"))
    assert [r.getMessage() for r in caplog.records] == ['event {"TagData":"Café"}']


def test_answers_are_marked_on_their_events_and_given_once_the_events_are_published():
    async def run() -> list[str]:
        publisher = FakePublisher()
        answerer = Answerer(LocalOptions("accept", None, "always", 1.5), publisher, publisher)
        EventPath(publisher, answerer).frames(
            frames(b'{"TagId":"01","Move":"Remove"}{"TagId":"02"}{"TagId":"03"}')
        )
        return publisher.log

    assert asyncio.run(run()) == [
        "event 2 marked accept",  # marked before the events are published, not the Remove
        "event 3 marked accept",
        "3 event(s)",
        "answer accept 02",
        "answer accept 03",
    ]
