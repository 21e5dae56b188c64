"""Dialog state of a service ticket across its follow-up messages, kept in a SQLite file.

A ticket's messages (the customer's transcripts and typed text, the desk's answers) and what the desk remembers
about it (device, fault, guide, escalation: any JSON) live in one SQLite file that several replicas may share
(WAL, a busy timeout). Every text is passed through :func:`~pipelines.lines.service.safety.scrub_pii` before it is
written: the file never holds a name, phone number, street address or e-mail address that the scrubber finds.

Long tickets are cut to a word budget by :meth:`TicketDialog.context`, which keeps what matters for finding the
fault: the newest message, the first one (the original complaint) and as many of the latest ones as fit, with a
marker where messages were left out. The chunked attention of ``model/lab/attention.py`` is not used here: it is an
untrained layer, and the text goes to the frozen MiniLM sentence model, which reads at most 256 word pieces, so a
word budget is what serves.

Example:
    >>> dialog = TicketDialog("runs/service/dialog.db", "ticket-0007")
    >>> dialog.add("customer", "My kettle leaks. Call me on 07700 900123.", message_id="m1").text
    'My kettle leaks. Call me on [PHONE].'
    >>> dialog.remember(device="kettle", fault="leaking_seal")
    >>> dialog.context(max_words=120)
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.lines.service.safety import scrub_pii

ROLES = ("customer", "desk")
SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    ticket_id TEXT NOT NULL, seq INTEGER NOT NULL, message_id TEXT, ts REAL NOT NULL, role TEXT NOT NULL,
    text TEXT NOT NULL, PRIMARY KEY (ticket_id, seq), UNIQUE (ticket_id, message_id)
);
CREATE TABLE IF NOT EXISTS ticket_state (ticket_id TEXT PRIMARY KEY, state TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Message:
    """One stored message of a ticket (``text`` already scrubbed); ``seq`` counts from 0 in arrival order."""

    seq: int
    role: str
    text: str
    ts: float
    message_id: str | None = None


class TicketDialog:
    """The messages and remembered state of one ticket, read from and written to ``db`` at each call."""

    def __init__(self, db: str | Path, ticket_id: str):
        if not ticket_id:
            raise ValueError("a ticket dialog needs a ticket id")
        self.db, self.ticket_id = Path(db), ticket_id
        self.db.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.db, timeout=30)
        try:
            with connection:  # one transaction: committed on success, rolled back on error
                yield connection
        finally:
            connection.close()

    def add(self, role: str, text: str, message_id: str | None = None) -> Message:
        """Store a message, scrubbed; a ``message_id`` already stored for this ticket returns that message and
        stores nothing (a replayed or retried message counts once). ValueError for an unknown role."""
        if role not in ROLES:
            raise ValueError(f"ticket {self.ticket_id}: role {role!r} is not one of {', '.join(ROLES)}")
        with self._connect() as connection:
            connection.execute("BEGIN IMMEDIATE")  # seq and the duplicate check under one write lock
            if message_id is not None:
                row = connection.execute("SELECT seq, role, text, ts, message_id FROM messages WHERE ticket_id = ? "
                                         "AND message_id = ?", (self.ticket_id, message_id)).fetchone()
                if row:
                    return Message(*row)
            seq = connection.execute("SELECT COUNT(*) FROM messages WHERE ticket_id = ?",
                                     (self.ticket_id,)).fetchone()[0]
            message = Message(seq, role, scrub_pii(text), time.time(), message_id)
            connection.execute("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?)", (
                self.ticket_id, message.seq, message_id, message.ts, role, message.text))
        return message

    @property
    def messages(self) -> list[Message]:
        """Every message of the ticket, oldest first."""
        with self._connect() as connection:
            rows = connection.execute("SELECT seq, role, text, ts, message_id FROM messages WHERE ticket_id = ? "
                                      "ORDER BY seq", (self.ticket_id,)).fetchall()
        return [Message(*row) for row in rows]

    @property
    def state(self) -> dict[str, Any]:
        """What the desk remembers about the ticket ({} at first)."""
        with self._connect() as connection:
            row = connection.execute("SELECT state FROM ticket_state WHERE ticket_id = ?",
                                     (self.ticket_id,)).fetchone()
        return json.loads(row[0]) if row else {}

    def remember(self, **facts: Any) -> dict[str, Any]:
        """Merge ``facts`` (JSON values; their text scrubbed) into the ticket's state and return the new state."""
        with self._connect() as connection:
            connection.execute("BEGIN IMMEDIATE")
            row = connection.execute("SELECT state FROM ticket_state WHERE ticket_id = ?",
                                     (self.ticket_id,)).fetchone()
            state = {**(json.loads(row[0]) if row else {}), **_scrubbed(facts)}
            connection.execute("INSERT OR REPLACE INTO ticket_state VALUES (?, ?)", (self.ticket_id, json.dumps(state)))
        return state

    def context(self, max_words: int = 180, roles: tuple[str, ...] = ("customer",)) -> str:
        """The ticket's text for the model within ``max_words`` words, oldest first: the newest message and the
        first one (their first words when they are longer than what is left), then the latest ones that fit whole;
        ``[... N messages left out ...]`` where some were."""
        texts = [message.text for message in self.messages if message.role in roles]
        if not texts:
            return ""
        chosen: dict[int, str] = {}
        left = max_words
        for index in dict.fromkeys([len(texts) - 1, 0]):  # the newest and the first, cut when they must be
            words = texts[index].split()[:left]
            if words:
                chosen[index] = " ".join(words)
                left -= len(words)
        for index in range(len(texts) - 2, 0, -1):  # then the latest ones that fit whole
            words = texts[index].split()
            if len(words) > left:
                break
            chosen[index] = texts[index]
            left -= len(words)
        parts, previous = [], -1
        for index in sorted(chosen):
            if index - previous > 1:
                parts.append(f"[... {index - previous - 1} messages left out ...]")
            parts.append(chosen[index])
            previous = index
        return "\n".join(parts)


def _scrubbed(value: Any) -> Any:
    """``value`` with every string in it (keys aside) scrubbed of personal data."""
    if isinstance(value, str):
        return scrub_pii(value)
    if isinstance(value, dict):
        return {key: _scrubbed(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrubbed(item) for item in value]
    return value
