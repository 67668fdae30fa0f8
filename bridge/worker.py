"""One reader's command worker: validates each command from MQTT, sends it to the reader
before its deadline or drops it, and answers every message with exactly one result.

It takes two small ports - a :class:`CommandSender` (the reader link) and a
:class:`ResultSink` (the MQTT link) - so it is tested against fakes as well as end to end.
Commands are handled one at a time, in arrival order, by one task per reader; nothing is
ever written after its deadline: a late "accept" on a door reader is a security fault.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from bridge.commands import Command, CommandError, RateLimit, parse_command
from bridge.logs import Throttle
from bridge.mqtt import LocalResult, Result
from bridge.mqtt.incoming import IncomingCommand
from bridge.options import CommandOptions
from bridge.reader_connection import CommandNotSentError

log = logging.getLogger(__name__)

COMMAND_QUEUE = 100
"""Commands waiting for the reader at most; beyond, refused at once."""
RETAINED_REMEMBERED = 1000
"""Retained payloads whose refusal was logged, remembered so that it is logged once."""
LOCAL_OUTCOMES = ("sent", "expired", "withdrawn")
"""What became of local answers: written, not written in time, or dropped because a command
from MQTT answered the read first (``unanswered``)."""


class CommandSender(Protocol):
    async def send(self, data: bytes, deadline: float, gap: float = 0.0) -> None:
        """Write before ``deadline`` or raise :class:`CommandNotSentError`."""
        ...

    def write_now(self, data: bytes, gap: float = 0.0) -> bool:
        """Write ``data`` whole at once if nothing stands in the way; else write nothing
        and say False (:meth:`send` then)."""
        ...


class ResultSink(Protocol):
    def publish_result(self, result: Result | LocalResult) -> None: ...


@dataclass(frozen=True)
class LocalAnswer:
    """A read the bridge answers itself (``bridge.answerer``): sent like any command (its
    fields allowed, the gap kept, never late), but not counted by the rate limit."""

    word: str  # accept, deny or wink
    tag: str | None  # the read's TagId, for the result
    read_at: float  # time.monotonic() when the read was read
    decided: float  # time.monotonic(): the command timeout counts from here
    unless_answered: bool  # dropped if a command from MQTT reached the reader since the read


def transaction_of(payload: bytes) -> object:
    """The ``transaction`` of a command payload, valid or not, for its result."""
    try:
        return parse_command(payload).transaction
    except CommandError as exc:
        return exc.transaction


def result_of(
    incoming: IncomingCommand,
    transaction: object,
    *,
    sent: dict[str, object] | None = None,
    error: str | None = None,
) -> Result:
    """``{"ok": ..., "transaction": ..., "sent"|"error": ...}`` (README, Commands), for the
    result topic and the command's v5 response topic."""
    body: dict[str, object] = {"ok": error is None}
    if transaction is not None:
        body["transaction"] = transaction
    if error is None:
        body["sent"] = sent
    else:
        body["error"] = error
    payload = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    return Result(payload, incoming.response_topic, incoming.correlation)


class CommandWorker:
    """Validates, paces and sends one reader's commands; one result each."""

    def __init__(
        self, options: CommandOptions, sender: CommandSender, results: ResultSink, topic: str
    ) -> None:
        self.options = options
        self._sender = sender
        self._results = results
        self._topic = topic
        self._queue: asyncio.Queue[IncomingCommand | LocalAnswer] = asyncio.Queue(COMMAND_QUEUE)
        self._limit = RateLimit(options.rate, options.burst)
        self._retained_seen: set[bytes] = set()  # digests of retained payloads logged once
        self._throttle = Throttle(log)
        self.sent = 0  # commands from MQTT, by outcome
        self.refused = 0
        self.expired = 0
        self.local = dict.fromkeys(LOCAL_OUTCOMES, 0)  # local answers, by outcome
        self.last_reached = float("-inf")  # time.monotonic(): a command from MQTT was written
        self.on_reached: Callable[[float], None] = lambda at: None  # told of each such write
        self._idle = False  # the worker task waits for the queue (not before it runs)
        self._words: dict[str, Command] = {}  # local answer words, parsed once

    def submit(self, incoming: IncomingCommand) -> None:
        """From the MQTT link, as the message arrives: never blocks."""
        try:
            self._queue.put_nowait(incoming)
        except asyncio.QueueFull:
            transaction = transaction_of(incoming.payload)
            self._reply(incoming, transaction, error="too many commands waiting; dropped")

    def submit_local(self, answer: LocalAnswer) -> None:
        """From the answerer, as the read arrives: never blocks. Written at once when
        nothing waits before it and the reader link takes it (:meth:`_answer_now`), else
        queued like any command."""
        if self._idle and self._queue.empty():
            try:
                if self._answer_now(answer):
                    return
            except Exception:  # as in run(); raised in the reader's callback, it would be fatal
                log.exception("local answer handling failed")
                return
        try:
            self._queue.put_nowait(answer)
        except asyncio.QueueFull:
            self._answered(answer, error="too many commands waiting; dropped")

    async def run(self) -> None:
        while True:
            self._idle = True
            incoming = await self._queue.get()
            self._idle = False
            try:
                await self.handle(incoming)
            except Exception:  # a bug with one command must not silence the next ones
                log.exception("command handling failed")

    async def handle(self, incoming: IncomingCommand | LocalAnswer) -> None:
        if isinstance(incoming, LocalAnswer):
            await self._answer(incoming)
            return
        if incoming.retained:
            self._refuse_retained(incoming)
            return
        command = self._check(incoming)
        if command is None:
            return
        problem = await self._send(command, incoming.received)
        if problem is not None:
            self.expired += 1
            self._reply(incoming, command.transaction, error=problem)
            return
        self.sent += 1
        self.last_reached = time.monotonic()
        self.on_reached(self.last_reached)
        log.info("command sent to the reader: %s", command.encode().decode())
        self._reply(incoming, command.transaction, sent=dict(command.as_dict()))

    def _answer_now(self, answer: LocalAnswer) -> bool:
        """A local answer handled in the caller's turn, without the hop through the queue
        and the worker task: True if it is done (withdrawn, or written whole now)."""
        if self._withdrawn(answer):
            return True
        try:
            command = self._local_command(answer.word)
        except CommandError:  # the queue's way says why
            return False
        if not self._sender.write_now(command.encode() + self.options.delimiter, self.options.gap):
            return False
        self._local_sent(answer, command)
        return True

    async def _answer(self, answer: LocalAnswer) -> None:
        """A local answer: validated like a command from MQTT (BRIDGE_COMMAND_FIELDS)."""
        if self._withdrawn(answer):
            return
        try:
            command = self._local_command(answer.word)
        except CommandError as exc:  # the settings check rules this out; say it if not
            self._answered(answer, error=str(exc))
            return
        problem = await self._send(command, answer.decided)
        if problem is not None:
            self.local["expired"] += 1
            self._answered(answer, error=problem)
            return
        self._local_sent(answer, command)

    def _local_command(self, word: str) -> Command:
        """The command for an answer word, validated like one from MQTT
        (BRIDGE_COMMAND_FIELDS) once; :class:`CommandError` if it is refused."""
        if word not in self._words:
            self._words[word] = parse_command(word.encode(), self.options.allowed_fields)
        return self._words[word]

    def _withdrawn(self, answer: LocalAnswer) -> bool:
        """A command from MQTT reached the reader since the read (``unanswered``)."""
        if answer.unless_answered and self.last_reached >= answer.read_at:
            self.local["withdrawn"] += 1
            return True
        return False

    def _local_sent(self, answer: LocalAnswer, command: Command) -> None:
        self.local["sent"] += 1
        log.info("local answer sent to the reader: %s", answer.word)
        self._answered(answer, sent=dict(command.as_dict()))

    async def _send(self, command: Command, since: float) -> str | None:
        """Write ``command`` within the command timeout from ``since`` (monotonic), keeping
        the gap; the error for its result if that cannot be done."""
        data = command.encode()
        deadline = since + self.options.timeout
        try:
            await self._sender.send(data + self.options.delimiter, deadline, self.options.gap)
        except CommandNotSentError as exc:
            message = (
                f"not sent within {self.options.timeout:g} s: {exc}; "
                "dropped so that it cannot run late"
            )
            log.warning("command %s %s", data.decode(), message)
            return message
        return None

    def _check(self, incoming: IncomingCommand) -> Command | None:
        """The command to send, or ``None`` after its refusal was answered."""
        try:
            command = parse_command(incoming.payload, self.options.allowed_fields)
            if not self._limit.allow(incoming.received):
                raise CommandError(
                    f"rate limit: more than {self.options.rate:g} commands per second "
                    f"(bursts of {self.options.burst}, BRIDGE_COMMAND_RATE/_BURST); dropped",
                    command.transaction,
                )
        except CommandError as exc:
            self.refused += 1
            kind = "rate" if str(exc).startswith("rate limit") else "refused"
            self._throttle.warning(kind, "command refused: %s", exc)
            self._reply(incoming, exc.transaction, error=str(exc))
            return None
        return command

    def _refuse_retained(self, incoming: IncomingCommand) -> None:
        """A retained message on the command topic is never executed: it would run again
        on every reconnection. Each one gets its result; the log names a given payload once
        (a v3.1.1 broker replays it at every subscription)."""
        self.refused += 1
        if not incoming.payload:  # someone cleared the retained command: that is the fix
            self._retained_seen.clear()
            log.info("the retained message on %s was cleared", self._topic)
            self._reply(incoming, None, error="empty retained message (a clearing); nothing sent")
            return
        error = (
            "retained command refused: it would run again on every reconnection; publish "
            "commands without the retain flag, and clear this one (an empty retained message)"
        )
        digest = hashlib.sha256(incoming.payload).digest()
        if digest not in self._retained_seen:
            if len(self._retained_seen) >= RETAINED_REMEMBERED:
                self._retained_seen.clear()  # a flood of distinct ones: say them again
            self._retained_seen.add(digest)
            shown = incoming.payload[:100].decode("utf-8", "replace")
            log.warning("%s on %s: %s", error, self._topic, shown)
        self._reply(incoming, transaction_of(incoming.payload), error=error)

    def _reply(
        self,
        incoming: IncomingCommand,
        transaction: object,
        *,
        sent: dict[str, object] | None = None,
        error: str | None = None,
    ) -> None:
        self._results.publish_result(result_of(incoming, transaction, sent=sent, error=error))

    def _answered(
        self,
        answer: LocalAnswer,
        *,
        sent: dict[str, object] | None = None,
        error: str | None = None,
    ) -> None:
        self._results.publish_result(LocalResult(answer.tag, time.time(), sent, error))
