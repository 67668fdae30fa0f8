"""The rules of the answers at the edge (bridge.local, pure) and the answerer that applies them
to a reader's reads (bridge.answerer), against fakes: which events are reads, what an allow
list says, and which reads get exactly one local answer in each mode."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.answerer import AllowFile, AllowFiles, Answerer
from bridge.held_results import HeldResults
from bridge.local import (
    AllowList,
    AllowListError,
    Edge,
    When,
    is_read,
    normal_tag,
    parse_allow_list,
    tag_of,
)
from bridge.mqtt.outgoing import LocalResult
from bridge.options import LocalOptions
from bridge.protocol import Frame
from bridge.spool import Spool
from bridge.worker import LocalAnswer

# -- reads and tags ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "read"),
    [
        ({"TagId": "04A1"}, True),
        ({"TagId": "04A1", "Move": "Insert"}, True),
        ({"TagId": "04A1", "Move": "Insert,Remove"}, True),
        ({"TagId": "04A1", "Move": "Remove"}, False),
        ({"TagId": "04A1", "State": "Remove"}, False),
        ({"TagId": "04A1", "State": "Insert"}, True),
        ({"TagId": "04A1", "Move": 3}, False),
    ],
)
def test_a_read_is_an_event_without_move_or_with_an_insert(fields: dict[str, object], read: bool):
    assert is_read(fields) is read


def test_the_tag_is_tagid_or_the_older_taguid_and_only_a_string():
    assert tag_of({"TagId": "04A1"}) == "04A1"
    assert tag_of({"TagUid": "04a1"}) == "04a1"
    assert tag_of({"TagId": 12}) is None
    assert tag_of({}) is None


def test_tags_compare_as_upper_case_hex():
    assert normal_tag(" 04ae02c8 ") == "04AE02C8"
    assert normal_tag("04:AE") is None
    assert normal_tag("") is None


# -- the allow list ---------------------------------------------------------------------------


def test_an_allow_list_reads_one_tag_per_line_with_comments_in_any_case():
    allow = parse_allow_list("# staff\n047dae02c84080\n\n  E2801160  # the van\n#04FF\n")
    assert allow.tags == frozenset({"047DAE02C84080", "E2801160"})
    assert allow.answer("047DAE02C84080") == "accept"
    assert allow.answer("e2801160") == "accept"
    assert allow.answer("04FF") == "deny"
    assert allow.answer(None) == "deny"


def test_an_allow_list_names_bad_lines_by_number_never_by_content():
    with pytest.raises(AllowListError) as caught:
        parse_allow_list("04A1\nalice-badge\n04A2\nsecret door code\n")
    message = str(caught.value)
    assert "lines 2, 4" in message
    assert "alice" not in message
    assert "secret" not in message


def test_an_empty_allow_list_denies_everyone():
    assert parse_allow_list("# nobody yet\n") == AllowList(frozenset())
    assert AllowList(frozenset()).answer("04A1") == "deny"


# -- when: the pure rule ----------------------------------------------------------------------


def test_always_answers_every_read_at_once_and_offline_only_while_the_broker_is_down():
    always: Edge[int] = Edge("always", 1.5)
    offline: Edge[int] = Edge("offline", 1.5)
    assert always.read(1, 0.0, broker_up=True)
    assert always.read(2, 0.0, broker_up=False)
    assert not offline.read(1, 0.0, broker_up=True)
    assert offline.read(2, 0.0, broker_up=False)
    assert always.next_due() is None
    assert offline.next_due() is None


def test_unanswered_answers_a_read_after_the_delay_unless_a_command_reached_the_reader():
    edge: Edge[str] = Edge("unanswered", 1.5)
    assert not edge.read("a", 10.0, broker_up=True)
    assert not edge.read("b", 10.5, broker_up=True)
    assert edge.next_due() == 11.5
    assert edge.due(11.49) == []
    assert edge.command_reached(10.2) == 1  # answers "a" (read before it), not "b"
    assert edge.next_due() == 12.0
    assert edge.due(12.0) == [(10.5, "b")]
    assert edge.waiting() == 0


Step = tuple[float, str]  # (seconds since the previous step, "read" | "command" | "up" | "down")

steps = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.1, 0.5, 1.0, 1.4, 1.5, 2.0, 3.0]),
        st.sampled_from(["read", "command", "up", "down"]),
    ),
    max_size=40,
)


def run_edge(
    when: When, after: float, script: list[Step]
) -> tuple[dict[int, int], dict[int, float]]:
    """Drive an Edge through ``script``; how many answers each read got, and when each read
    happened. Reads still waiting at the end get their time to fall due."""
    edge: Edge[int] = Edge(when, after)
    answers: dict[int, int] = {}
    read_at: dict[int, float] = {}
    now, up = 0.0, True

    def count(reads: list[tuple[float, int]]) -> None:
        for _, key in reads:
            answers[key] += 1

    for gap, kind in script:
        now += gap
        count(edge.due(now))
        if kind == "read":
            key = len(read_at)
            read_at[key] = now
            answers[key] = 1 if edge.read(key, now, broker_up=up) else 0
        elif kind == "command":
            edge.command_reached(now)
        else:
            up = kind == "up"
    count(edge.due(now + after))
    return answers, read_at


@settings(max_examples=300, deadline=None)
@given(script=steps, when=st.sampled_from(["always", "offline", "unanswered"]))
def test_each_read_gets_exactly_one_local_answer_or_none_as_the_mode_says(
    script: list[Step], when: When
):
    answers, _ = run_edge(when, 1.5, script)
    up, expected, key = True, {}, 0
    for _, kind in script:
        if kind in ("up", "down"):
            up = kind == "up"
        elif kind == "read":
            if when == "offline":
                expected[key] = 0 if up else 1
            elif when == "always":
                expected[key] = 1
            key += 1
    if when == "unanswered":
        assert set(answers.values()) <= {0, 1}
    else:
        assert answers == expected


@settings(max_examples=300, deadline=None)
@given(script=steps, after=st.sampled_from([0.5, 1.5, 2.5]))
def test_unanswered_answers_exactly_the_reads_no_command_followed_within_the_delay(
    script: list[Step], after: float
):
    """Central answers at random times: a read gets the local answer iff no command reached
    the reader after it and before ``after`` s had passed (then it was answered centrally)."""
    answers, read_at = run_edge("unanswered", after, script)
    times, now = [], 0.0
    for gap, kind in script:
        now += gap
        times.append((now, kind))
    commands = [(index, at) for index, (at, kind) in enumerate(times) if kind == "command"]
    read_steps = [index for index, (_, kind) in enumerate(times) if kind == "read"]
    for key, step in enumerate(read_steps):
        at = read_at[key]
        answered_centrally = any(i > step and t < at + after for i, t in commands)
        assert answers[key] == (0 if answered_centrally else 1), (key, at, commands)


# -- the answerer, against fakes ------------------------------------------------------------


class FakeSink:
    def __init__(self) -> None:
        self.answers: list[LocalAnswer] = []

    def submit_local(self, answer: LocalAnswer) -> None:
        self.answers.append(answer)


class FakeLink:
    def __init__(self) -> None:
        self.is_connected = True
        self.replies: dict[int, str] = {}

    def note_reply(self, seq: int, word: str) -> None:
        self.replies[seq] = word


def frame(tag: str, move: str | None = None) -> Frame:
    fields: dict[str, object] = {"TagId": tag}
    if move is not None:
        fields["Move"] = move
    return Frame(b"{}", fields)


def answerer(
    options: LocalOptions, files: AllowFiles | None = None
) -> tuple[Answerer, FakeSink, FakeLink]:
    sink, link = FakeSink(), FakeLink()
    return Answerer(options, sink, link, files), sink, link


def test_a_fixed_reply_answers_reads_at_once_and_marks_their_events():
    async def run() -> tuple[FakeSink, FakeLink]:
        answers, sink, link = answerer(LocalOptions("accept", None, "always", 1.5))
        read = [frame("04A1", "Insert"), frame("04A1", "Remove"), frame("04B2")]
        answers.give(answers.reads(read, 100))
        return sink, link

    sink, link = asyncio.run(run())
    assert [(a.word, a.tag, a.unless_answered) for a in sink.answers] == [
        ("accept", "04A1", False),
        ("accept", "04B2", False),
    ]
    assert link.replies == {100: "accept", 102: "accept"}  # not the Remove's event (101)


@settings(max_examples=100, deadline=None)
@given(script=st.lists(st.sampled_from(["read", "remove", "up", "down"]), max_size=30))
def test_offline_answers_exactly_the_reads_made_while_the_broker_is_down(script: list[str]):
    async def run() -> tuple[FakeSink, FakeLink, list[int]]:
        answers, sink, link = answerer(LocalOptions("deny", None, "offline", 1.5))
        expected, seq = [], 0
        for kind in script:
            if kind in ("up", "down"):
                link.is_connected = kind == "up"
                continue
            read = [frame("04A1", "Insert" if kind == "read" else "Remove")]
            answers.give(answers.reads(read, seq))
            if kind == "read" and not link.is_connected:
                expected.append(seq)
            seq += 1
        return sink, link, expected

    sink, link, expected = asyncio.run(run())
    assert len(sink.answers) == len(expected)
    assert all(a.word == "deny" for a in sink.answers)
    assert sorted(link.replies) == expected


def test_unanswered_reads_are_answered_after_the_delay_unless_a_command_came():
    async def run() -> tuple[FakeSink, float, float]:
        answers, sink, _ = answerer(LocalOptions("wink", None, "unanswered", 0.05))
        loop = asyncio.get_running_loop()
        answers.give(answers.reads([frame("04A1")], 1))
        read_at = loop.time()
        answers.command_reached(loop.time())  # answered centrally
        answers.give(answers.reads([frame("04B2")], 2))
        while not sink.answers:
            await asyncio.sleep(0.01)
        return sink, read_at, loop.time()

    sink, read_at, seen = asyncio.run(run())
    (answer,) = sink.answers
    assert (answer.word, answer.tag, answer.unless_answered) == ("wink", "04B2", True)
    assert answer.decided - answer.read_at >= 0.05
    assert seen >= read_at


# -- the allow file -----------------------------------------------------------------------


def test_the_allow_file_keeps_the_last_good_list_and_says_why_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, "bridge.answerer")
    path = tmp_path / "allowed"
    path.write_text("04A1\n")
    path.chmod(0o600)
    allow = AllowFile(path)
    assert allow.current().answer("04A1") == "accept"
    path.write_text("04A1\nnot-a-tag\n")
    allow.check()
    allow.check()
    assert allow.current().answer("04A1") == "accept"
    path.unlink()
    allow.check()
    allow.check()
    assert allow.current().answer("04A1") == "accept"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings  # one per reason, not one per look
    assert "line 2" in warnings[0]
    assert "not-a-tag" not in warnings[0]
    assert "cannot read it" in warnings[1]
    path.write_text("04B2\n")
    allow.check()
    assert allow.current().answer("04A1") == "deny"
    assert allow.current().answer("04B2") == "accept"
    assert any("re-read: 1 tag(s)" in r.getMessage() for r in caplog.records)
    assert all("04A1" not in r.getMessage() for r in caplog.records)


def test_an_allow_file_readable_by_others_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    path = tmp_path / "allowed"
    path.write_text("04A1\n")
    os.chmod(path, 0o644)
    AllowFile(path)
    assert any("chmod 600" in r.getMessage() for r in caplog.records)


def test_readers_naming_one_allow_file_share_it(tmp_path: Path):
    path = tmp_path / "allowed"
    path.write_text("04A1\n")
    files = AllowFiles()
    assert files.get(path) is files.get(path)


# -- local results held in the spool --------------------------------------------------------


def test_held_local_results_come_back_per_reader_in_order_until_released(tmp_path: Path):
    spool = Spool.open(tmp_path / "spool.db")
    front, back = HeldResults(spool, "front"), HeldResults(spool, "back")
    first = front.hold(LocalResult("04A1", 100.0, {"Sequence": "60"}))
    front.hold(LocalResult("04B2", 101.0, error="not sent within 2 s"))
    back.hold(LocalResult("04C3", 102.0, {"Sequence": "61"}))
    assert first is not None
    loaded = HeldResults(spool, "front").load()
    assert [(r.tag, r.made_at, r.sent, r.error) for r in loaded] == [
        ("04A1", 100.0, {"Sequence": "60"}, None),
        ("04B2", 101.0, None, "not sent within 2 s"),
    ]
    assert json.loads(loaded[0].encode(connected_since=150.0))["late"] is True
    front.release(first)
    assert [r.tag for r in front.load()] == ["04B2"]
    assert [r.tag for r in back.load()] == ["04C3"]
    spool.close()
