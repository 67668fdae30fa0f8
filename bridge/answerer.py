"""One reader's answers at the edge (README, When the broker is down): it sees each read as
the reader sends it, decides with ``bridge.local`` whether and how the bridge answers it
itself, and hands the answer to the command worker, which sends it like any command.

It must not send anything itself (the worker keeps the gap and the never-late rule), nor
log a tag id or the allow file's contents: the file says who may enter. No timer runs while
no read waits for an answer; the allow file is looked at when a read needs it, at most once
per ``CHECK_EVERY`` seconds, so an idle reader costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from pathlib import Path
from typing import Protocol

from bridge.local import AllowList, AllowListError, Edge, is_read, parse_allow_list, tag_of
from bridge.options import LocalOptions
from bridge.protocol import Frame
from bridge.worker import LocalAnswer

log = logging.getLogger(__name__)

CHECK_EVERY = 1.0
"""Seconds between two looks at the allow file's size and time (an edit counts after it)."""


class AnswerSink(Protocol):
    """Where local answers go (the command worker)."""

    def submit_local(self, answer: LocalAnswer) -> None: ...


class LinkState(Protocol):
    """What the answerer reads and tells on the MQTT side (the reader's MQTT link)."""

    @property
    def is_connected(self) -> bool: ...

    def note_reply(self, seq: int, word: str) -> None: ...


class AllowFile:
    """The allow file, read again when its size, time or inode change. A file that cannot
    be used keeps the last good list, and says why once (again only when the reason
    changes). One per path, shared by the readers of a fleet (:class:`AllowFiles`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.allow = AllowList(frozenset())
        self._stamp: tuple[int, int, int] | None = None
        self._checked = float("-inf")
        self._problem: str | None = None
        self.check()

    def current(self) -> AllowList:
        """The list in force, after a look at the file if the last is CHECK_EVERY s old."""
        if time.monotonic() - self._checked >= CHECK_EVERY:
            self.check()
        return self.allow

    def check(self) -> None:
        self._checked = time.monotonic()
        try:
            info = os.stat(self.path)
            stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
            if stamp == self._stamp:
                return
            allow = parse_allow_list(self.path.read_text(encoding="utf-8"))
        except OSError as exc:
            self._failed(f"cannot read it: {exc.strerror or exc}")
            return
        except UnicodeDecodeError:
            self._failed("it is not UTF-8 text")
            return
        except AllowListError as exc:
            self._failed(str(exc))
            return
        first = self._stamp is None
        self._stamp, self.allow, self._problem = stamp, allow, None
        log.info(
            "allow file %s %s: %d tag(s)",
            self.path,
            "read" if first else "re-read",
            len(allow.tags),
        )
        if stat.S_IMODE(info.st_mode) & 0o077:
            log.warning(
                "allow file %s can be read by other users (mode %o): it says who may enter; "
                "chmod 600 it",
                self.path,
                stat.S_IMODE(info.st_mode),
            )

    def _failed(self, problem: str) -> None:
        if problem != self._problem:
            self._problem = problem
            log.warning(
                "allow file %s: %s; keeping the last good list (%d tag(s))",
                self.path,
                problem,
                len(self.allow.tags),
            )


class AllowFiles:
    """The allow files in use, one :class:`AllowFile` per path: a fleet's readers that name
    the same file share one list in memory and one look at the disk."""

    def __init__(self) -> None:
        self._files: dict[Path, AllowFile] = {}

    def get(self, path: Path) -> AllowFile:
        if path not in self._files:
            self._files[path] = AllowFile(path)
        return self._files[path]


class Answerer:
    """Decides, for each read of one reader, whether the bridge answers it, and with what."""

    def __init__(
        self,
        options: LocalOptions,
        sink: AnswerSink,
        link: LinkState,
        files: AllowFiles | None = None,
    ) -> None:
        self.options = options
        self._sink = sink
        self._link = link
        self._edge: Edge[tuple[int, str | None]] = Edge(options.when, options.after)
        self._file = None
        if options.allow_file is not None:
            self._file = (files or AllowFiles()).get(options.allow_file)
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self.withdrawn = 0  # reads that a command from MQTT answered in time

    def reads(self, frames: list[Frame], first_seq: int) -> list[LocalAnswer]:
        """The frames of one read, whose events get ``first_seq``, ``first_seq + 1``, ...:
        the answers to give at once. Called before the events are published, so that each
        answer is marked on its event; the caller then publishes them and :meth:`give`s
        the answers - the event reaches the broker first, its answer right after."""
        now = time.monotonic()
        answers = []
        for index, frame in enumerate(frames):
            if not is_read(frame.fields):
                continue
            read = (first_seq + index, tag_of(frame.fields))
            if self._edge.read(read, now, self._link.is_connected):
                answers.append(self._answer(read, now, unless_answered=False))
        self._arm()
        return answers

    def give(self, answers: list[LocalAnswer]) -> None:
        for answer in answers:
            self._sink.submit_local(answer)

    def command_reached(self, at: float) -> None:
        """A command from MQTT was written to the reader at ``at`` (monotonic)."""
        self.withdrawn += self._edge.command_reached(at)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _answer(
        self, read: tuple[int, str | None], read_at: float, unless_answered: bool
    ) -> LocalAnswer:
        seq, tag = read
        word = self.options.reply or self._allow().answer(tag)
        self._link.note_reply(seq, word)
        return LocalAnswer(word, tag, read_at, time.monotonic(), unless_answered)

    def _allow(self) -> AllowList:
        assert self._file is not None  # without a reply, options name an allow file
        return self._file.current()

    def _arm(self) -> None:
        due = self._edge.next_due()
        if self._timer is None and due is not None:
            self._timer = self._loop.call_later(max(0.0, due - time.monotonic()), self._due)

    def _due(self) -> None:
        self._timer = None
        due = self._edge.due(time.monotonic())
        self.give([self._answer(read, read_at, unless_answered=True) for read_at, read in due])
        self._arm()
