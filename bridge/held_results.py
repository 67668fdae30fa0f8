"""The results of local answers made while the broker is away, kept in the spool until they
are published (README, When the broker is down): a bridge restarted during an outage still
reports what the door did without the broker, marked late.

A table of its own in the reader's spool file, ``local_results``, with the reader's key (the
device id in a fleet, "" for one reader). Rows are written at human rates (reads while the
broker is down), each committed at once; a row is deleted once its result is handed to paho,
so a crash in that instant can only publish it twice. Without a spool there is nothing here:
results wait in memory, as every result does.
"""

from __future__ import annotations

import json
import logging
import sqlite3

from bridge.mqtt.outgoing import LocalResult
from bridge.spool import Spool

log = logging.getLogger(__name__)


class HeldResults:
    """One reader's held local results in a spool file."""

    def __init__(self, spool: Spool, reader: str) -> None:
        self._db = spool.db
        self._reader = reader
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS local_results "
            "(reader TEXT NOT NULL, made_at REAL NOT NULL, body TEXT NOT NULL)"
        )
        self._db.commit()

    def hold(self, result: LocalResult) -> int | None:
        """Keep ``result``; its row, or ``None`` if the spool could not take it (then it
        waits in memory only, and the reason is logged)."""
        body = json.dumps({"tag": result.tag, "sent": result.sent, "error": result.error})
        try:
            cursor = self._db.execute(
                "INSERT INTO local_results (reader, made_at, body) VALUES (?, ?, ?)",
                (self._reader, result.made_at, body),
            )
            self._db.commit()
        except sqlite3.Error as exc:
            log.warning("a local answer's result is kept in memory only: the spool said %s", exc)
            return None
        return cursor.lastrowid

    def release(self, row: int) -> None:
        """The result of ``row`` is published (or given up): forget it."""
        try:
            self._db.execute("DELETE FROM local_results WHERE rowid = ?", (row,))
            self._db.commit()
        except sqlite3.Error as exc:  # kept: published twice after a restart, not lost
            log.warning("a published local result stays in the spool: %s", exc)

    def load(self) -> list[LocalResult]:
        """What an earlier run held for this reader, oldest first."""
        rows = self._db.execute(
            "SELECT rowid, made_at, body FROM local_results WHERE reader = ? ORDER BY rowid",
            (self._reader,),
        ).fetchall()
        results = []
        for row, made_at, body in rows:
            fields = json.loads(body)
            results.append(
                LocalResult(fields["tag"], made_at, fields["sent"], fields["error"], row=row)
            )
        if results:
            log.info("spool holds %d local answer result(s) from before", len(results))
        return results
