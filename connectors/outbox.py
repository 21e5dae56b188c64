"""The durable outbox: every decision, per controller, from the moment it is decided until that controller acks.

SQLite in WAL mode, one row per ``(controller, decision_id)`` in the order decisions were put. A row is
*pending* until :meth:`Outbox.ack` stores the controller's answer; pending rows survive a crash or restart
and come back first, in order, from :meth:`Outbox.pending` on the next start. Putting a decision id that is
already there (a replay of the same recording after a restart) adds nothing, and an acked id is never
pending again, so no controller is sent a decision it already took.

Example:
    >>> box = Outbox("runs/outbox.db")
    >>> box.put("plc", decision)            # None: queued (or the stored ack when it was delivered before)
    >>> [d.item_id for d in box.pending("plc")]
    ['part-000000']
    >>> box.ack("plc", decision.decision_id, "ok")
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from connectors.records import Decision

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    pos INTEGER PRIMARY KEY AUTOINCREMENT,
    controller TEXT NOT NULL,
    decision_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    decision TEXT NOT NULL,
    queued REAL NOT NULL,
    acked REAL,
    ack TEXT,
    UNIQUE (controller, decision_id)
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (controller, acked, pos);
"""


class Outbox:
    """Pending decisions per controller, in SQLite (WAL); thread-safe, one connection."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash
        self._db.executescript(SCHEMA)

    def put(self, controller: str, decision: Decision) -> str | None:
        """Queue ``decision`` for ``controller``: ``None`` when it is (now or still) pending, else its stored ack."""
        return self.put_all([controller], decision)[controller]

    def put_all(self, controllers: Sequence[str], decision: Decision) -> dict[str, str | None]:
        """Queue ``decision`` for every one of ``controllers`` in one transaction (one commit, one serialisation):
        per controller, ``None`` when it is (now or still) pending, else its stored ack."""
        if not decision.decision_id:
            raise ValueError(f"{decision.item_id}: a decision needs a decision_id to enter the outbox")
        record = json.dumps({f.name: getattr(decision, f.name) for f in fields(decision) if f.name != "acks"},
                            default=str)
        queued = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR IGNORE INTO outbox (controller, decision_id, item_id, decision, queued) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(c, decision.decision_id, decision.item_id, record, queued) for c in controllers],
                )
                acks = {c: self._db.execute("SELECT ack FROM outbox WHERE controller = ? AND decision_id = ?",
                                            (c, decision.decision_id)).fetchone()[0] for c in controllers}
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return acks

    def pending(self, controller: str, limit: int = 64) -> list[Decision]:
        """The oldest ``limit`` decisions ``controller`` has not acked, in the order they were put."""
        with self._lock:
            rows = self._db.execute(
                "SELECT decision FROM outbox WHERE controller = ? AND acked IS NULL ORDER BY pos LIMIT ?",
                (controller, limit),
            ).fetchall()
        return [Decision(**json.loads(row[0])) for row in rows]

    def ack(self, controller: str, decision_id: str, ack: str) -> None:
        """Store ``controller``'s answer for ``decision_id``: it leaves the pending list for good."""
        with self._lock:
            self._db.execute(
                "UPDATE outbox SET acked = ?, ack = ? WHERE controller = ? AND decision_id = ?",
                (time.time(), ack, controller, decision_id),
            )

    def count_pending(self, controller: str) -> int:
        with self._lock:
            (n,) = self._db.execute(
                "SELECT COUNT(*) FROM outbox WHERE controller = ? AND acked IS NULL", (controller,)
            ).fetchone()
        return n

    def close(self) -> None:
        with self._lock:
            self._db.close()
