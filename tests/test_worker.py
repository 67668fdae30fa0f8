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

import pytest

from bridge.commands import FIELDS
from bridge.mqtt.incoming import IncomingCommand
from bridge.mqtt.outgoing import Result
from bridge.options import CommandOptions
from bridge.reader import CommandNotSentError
from bridge.worker import CommandWorker

OPTIONS = CommandOptions(
    timeout=2.0,
    gap=0.0,
    delimiter=b"\r\n",
    allowed_fields=frozenset(FIELDS),
    rate=0.0,
    burst=10,
)


class FakeSender:
    """Records each write with its deadline; can be told to fail like a link that is down."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, float, float]] = []
        self.failure: str | None = None

    async def send(self, data: bytes, deadline: float, gap: float = 0.0) -> None:
        if self.failure is not None:
            raise CommandNotSentError(self.failure)
        self.sent.append((data, deadline, gap))


class FakeResults:
    def __init__(self) -> None:
        self.results: list[Result] = []

    def publish_result(self, result: Result) -> None:
        self.results.append(result)

    def bodies(self) -> list[dict[str, object]]:
        return [json.loads(result.payload) for result in self.results]


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


def handle(worker: CommandWorker, *commands: IncomingCommand) -> None:
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
