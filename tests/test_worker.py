"""The command worker against fakes of its two ports: a sender (the reader link) and a result
sink (the MQTT link). No socket, no broker: what it sends, when, and what it answers.

The same behaviour end to end, with a real Mosquitto and the simulator, is in
tests/test_commands_integration.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

import pytest

from bridge.commands import FIELDS
from bridge.mqtt.incoming import IncomingCommand
from bridge.mqtt.outgoing import LocalResult, Result
from bridge.options import CommandOptions
from bridge.reader_connection import CommandNotSentError
from bridge.worker import CommandWorker, LocalAnswer

OPTIONS = CommandOptions(
    timeout=2.0,
    gap=0.0,
    delimiter=b"\r\n",
    allowed_fields=frozenset(FIELDS),
    rate=0.0,
    burst=10,
)


class FakeSender:
    """Records each write with its deadline; can be told to fail like a link that is down,
    and to take writes at once (``takes_now``) like a link that is up and idle."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, float, float]] = []
        self.failure: str | None = None
        self.takes_now = False
        self.written_now: list[tuple[bytes, float]] = []

    async def send(self, data: bytes, deadline: float, gap: float = 0.0) -> None:
        if self.failure is not None:
            raise CommandNotSentError(self.failure)
        self.sent.append((data, deadline, gap))

    def write_now(self, data: bytes, gap: float = 0.0) -> bool:
        if self.takes_now:
            self.written_now.append((data, gap))
        return self.takes_now


class FakeResults:
    def __init__(self) -> None:
        self.results: list[Result | LocalResult] = []

    def publish_result(self, result: Result | LocalResult) -> None:
        self.results.append(result)

    def bodies(self, connected_since: float = 0.0) -> list[dict[str, object]]:
        return [json.loads(result.encode(connected_since)) for result in self.results]


def command(
    payload: bytes, *, retained: bool = False, received: float | None = None
) -> IncomingCommand:
    return IncomingCommand(
        payload,
        time.monotonic() if received is None else received,
        retained=retained,
        response_topic="replies/me",
        correlation=b"c-1",
    )


def handle(worker: CommandWorker, *commands: IncomingCommand | LocalAnswer) -> None:
    async def run() -> None:
        for incoming in commands:
            await worker.handle(incoming)

    asyncio.run(run())


def make(options: CommandOptions = OPTIONS) -> tuple[CommandWorker, FakeSender, FakeResults]:
    sender, results = FakeSender(), FakeResults()
    return CommandWorker(options, sender, results, "p/dev/rdr/cmd"), sender, results


def test_a_valid_command_is_sent_with_its_deadline_and_delimiter_and_answered_ok():
    worker, sender, results = make()
    incoming = command(b'{"transaction":"t1","Sequence":"accept"}')
    handle(worker, incoming)
    assert sender.sent == [(b'{"Sequence":"60"}\r\n', incoming.received + 2.0, 0.0)]
    assert results.bodies() == [{"ok": True, "transaction": "t1", "sent": {"Sequence": "60"}}]
    assert (results.results[0].response_topic, results.results[0].correlation) == (
        "replies/me",
        b"c-1",
    )
    assert (worker.sent, worker.refused, worker.expired) == (1, 0, 0)


def test_an_invalid_command_is_answered_and_never_sent():
    worker, sender, results = make()
    handle(worker, command(b'{"transaction":7,"Colour":"red"}'))
    assert sender.sent == []
    (body,) = results.bodies()
    assert body["ok"] is False
    assert body["transaction"] == 7
    assert "Colour" in str(body["error"])
    assert worker.refused == 1


def test_a_command_the_link_cannot_take_in_time_is_dropped_and_said_so():
    worker, sender, results = make()
    sender.failure = "the reader link is down (connection refused)"
    handle(worker, command(b"wink"))
    (body,) = results.bodies()
    assert body["ok"] is False
    assert str(body["error"]).startswith("not sent within 2 s: the reader link is down")
    assert "cannot run late" in str(body["error"])
    assert worker.expired == 1


def test_a_retained_command_is_refused_first_and_logged_once(caplog: pytest.LogCaptureFixture):
    worker, sender, results = make()
    stale = command(b'{"transaction":"old","Sequence":"accept"}', retained=True)
    handle(worker, stale, stale, command(b"", retained=True))
    assert sender.sent == []
    bodies = results.bodies()
    assert [body["ok"] for body in bodies] == [False, False, False]
    assert [body.get("transaction") for body in bodies] == ["old", "old", None]
    assert "retained command refused" in str(bodies[0]["error"])
    assert "empty retained message" in str(bodies[2]["error"])
    warned = [r for r in caplog.records if "retained command refused" in r.getMessage()]
    assert len(warned) == 1


def test_the_rate_limit_refuses_beyond_the_burst_and_logs_it_throttled(
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.WARNING)
    worker, sender, results = make(
        CommandOptions(2.0, 0.0, b"", frozenset(FIELDS), rate=1.0, burst=2)
    )
    now = time.monotonic()
    handle(worker, *(command(b"wink", received=now) for _ in range(5)))
    assert len(sender.sent) == 2
    assert [body["ok"] for body in results.bodies()] == [True, True, False, False, False]
    refusals = [r for r in caplog.records if "rate limit" in r.getMessage()]
    assert len(refusals) == 1  # the first; the others wait for the minute's summary


def test_a_full_queue_answers_at_once_without_waiting():
    worker, _, results = make()

    async def flood() -> None:
        for _ in range(101):  # nothing takes them: the worker's task is not running
            worker.submit(command(b'{"transaction":"x","Sequence":"wink"}'))

    asyncio.run(flood())
    assert results.bodies() == [
        {"ok": False, "transaction": "x", "error": "too many commands waiting; dropped"}
    ]


def test_commands_are_handled_one_at_a_time_in_arrival_order():
    worker, sender, results = make()

    async def run() -> None:
        task = asyncio.create_task(worker.run())
        for word in (b"wink", b"accept", b"deny"):
            worker.submit(command(word))
        while len(results.results) < 3:
            await asyncio.sleep(0)
        task.cancel()

    asyncio.run(run())
    assert [data for data, _, _ in sender.sent] == [
        b'{"Sequence":"0E"}\r\n',
        b'{"Sequence":"60"}\r\n',
        b'{"Sequence":"61"}\r\n',
    ]


# -- local answers (README, When the broker is down) ----------------------------------------


def local(
    word: str = "accept", *, read_at: float | None = None, unless: bool = False
) -> LocalAnswer:
    now = time.monotonic()
    return LocalAnswer(word, "04A1", now if read_at is None else read_at, now, unless)


def test_a_local_answer_is_sent_with_the_gap_and_deadline_and_reported_as_local():
    worker, sender, results = make()
    answer = local()
    handle(worker, answer)
    assert sender.sent == [(b'{"Sequence":"60"}\r\n', answer.decided + 2.0, 0.0)]
    (result,) = results.results
    assert result.response_topic is None
    assert results.bodies() == [
        {"ok": True, "local": True, "late": False, "tag": "04A1", "sent": {"Sequence": "60"}}
    ]
    assert results.bodies(connected_since=time.time() + 1)[0]["late"] is True  # held: late


def test_local_answers_are_not_counted_by_the_rate_limit():
    worker, sender, results = make(
        CommandOptions(2.0, 0.0, b"", frozenset(FIELDS), rate=1.0, burst=1)
    )
    handle(worker, local(), local("deny"), local("wink"), command(b"accept"))
    assert [data for data, _, _ in sender.sent] == [
        b'{"Sequence":"60"}',
        b'{"Sequence":"61"}',
        b'{"Sequence":"0E"}',
        b'{"Sequence":"60"}',
    ]
    assert [body["ok"] for body in results.bodies()] == [True] * 4


def test_a_waiting_local_answer_is_dropped_once_a_command_from_mqtt_reached_the_reader():
    worker, sender, results = make()
    reached: list[float] = []
    worker.on_reached = reached.append
    read_at = time.monotonic()
    handle(worker, command(b"deny"), local(read_at=read_at, unless=True))
    assert [data for data, _, _ in sender.sent] == [b'{"Sequence":"61"}\r\n']
    assert len(reached) == 1
    assert reached[0] >= read_at
    assert [body.get("local") for body in results.bodies()] == [None]  # one result: MQTT's


def test_a_local_answer_that_cannot_reach_the_reader_in_time_is_dropped_and_reported():
    worker, sender, results = make()
    sender.failure = "the reader link is down (connection refused)"
    handle(worker, local())
    (body,) = results.bodies()
    assert body["ok"] is False
    assert body["local"] is True
    assert body["tag"] == "04A1"
    assert "cannot run late" in str(body["error"])
    assert worker.last_reached == float("-inf")  # a local answer is not a central one


def test_a_local_answer_with_sequence_not_allowed_is_refused_not_sent():
    worker, sender, results = make(CommandOptions(2.0, 0.0, b"", frozenset({"Leds"}), 0, 10))
    handle(worker, local())
    assert sender.sent == []
    assert results.bodies()[0]["ok"] is False


async def until(done: Callable[[], bool]) -> None:
    """Let the loop run the worker task until ``done()``."""
    for _ in range(100):
        if done():
            return
        await asyncio.sleep(0)
    raise AssertionError("the worker did not get there")


def test_a_local_answer_is_written_in_the_read_turn_when_nothing_waits_before_it():
    async def run() -> None:
        worker, sender, results = make()
        sender.takes_now = True
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(0)  # the task's first step: it waits for its queue
        worker.submit_local(local())
        # no turn of the loop since: written, and reported, by submit_local itself
        assert sender.written_now == [(b'{"Sequence":"60"}\r\n', 0.0)]
        assert sender.sent == []
        assert results.bodies()[0]["sent"] == {"Sequence": "60"}
        assert worker.local["sent"] == 1
        worker.last_reached = time.monotonic()  # a command from MQTT answered the next read
        worker.submit_local(local(read_at=worker.last_reached - 1, unless=True))
        assert worker.local["withdrawn"] == 1
        assert len(sender.written_now) == 1
        task.cancel()

    asyncio.run(run())


def test_a_local_answer_never_overtakes_a_command_waiting_before_it():
    async def run() -> tuple[FakeSender, FakeResults]:
        worker, sender, results = make()
        sender.takes_now = True
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(0)  # the task's first step: it waits for its queue
        worker.submit(command(b"deny"))
        worker.submit_local(local())
        await until(lambda: len(results.results) == 2)
        task.cancel()
        return sender, results

    sender, results = asyncio.run(run())
    assert sender.written_now == []  # both went the queue's way, in their order
    assert [data for data, _, _ in sender.sent] == [
        b'{"Sequence":"61"}\r\n',
        b'{"Sequence":"60"}\r\n',
    ]
    assert [body.get("local") for body in results.bodies()] == [None, True]


def test_a_bug_while_answering_in_the_read_turn_is_logged_not_raised_into_the_reader(
    caplog: pytest.LogCaptureFixture,
):
    class BrokenSender(FakeSender):
        def write_now(self, data: bytes, gap: float = 0.0) -> bool:
            raise RuntimeError("a bug")

    async def run() -> FakeResults:
        results = FakeResults()
        worker = CommandWorker(OPTIONS, BrokenSender(), results, "p/dev/rdr/cmd")
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(0)  # the task's first step: it waits for its queue
        worker.submit_local(local())  # must not raise: the caller is the reader's callback
        task.cancel()
        return results

    results = asyncio.run(run())
    assert results.results == []
    assert "local answer handling failed" in caplog.text
