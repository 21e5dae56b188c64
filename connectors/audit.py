"""The audit trail: every decision and every quarantined item, in SQLite (the embedded default).

Dashboards read this store; nothing else is their source. Quarantined payloads are also copied to a
folder beside the database (``<db>.quarantine/<run>/<item_id>/``, or ``<item_id>@<seq>/`` when an earlier entry
of the run already holds that name, e.g. a duplicated item id) with a ``reason.txt``.

The trail is tamper-evident: every entry (a run's start, each decision, each quarantined item, a run's
finish) takes the next position in one hash chain. An entry stores ``prev_hash`` and
``hash = sha256(prev_hash + canonical JSON of the entry)``, the canonical JSON holding the entry's kind, its
position and every stored column; ``chain_head`` holds the last position and hash. :func:`verify` recomputes
the chain and names the first entry that was modified, deleted, moved or inserted by hand. Entries are only
ever appended: recording the same decision twice is a no-op, recording a different one for the same item
is refused (:class:`AuditConflict`). The chain proves the trail was not edited *behind the store's back*;
anyone who can rewrite the whole file can recompute it, so keep the head hash printed by
``fusionline audit verify`` somewhere else to anchor it.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors.records import Decision, Quarantined

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, line TEXT, started REAL, finished REAL, config TEXT, summary TEXT,
    start_pos INTEGER, start_prev_hash TEXT, start_hash TEXT,
    finish_pos INTEGER, finish_prev_hash TEXT, finish_hash TEXT
);
CREATE TABLE IF NOT EXISTS decisions (
    run_id TEXT, item_id TEXT, seq INTEGER, ts REAL, label TEXT, confidence REAL, reject INTEGER,
    modality_weights TEXT, extra TEXT, model_version TEXT, latency_ms REAL, input_digest TEXT, acks TEXT,
    chain_pos INTEGER, prev_hash TEXT, hash TEXT,
    PRIMARY KEY (run_id, item_id)
);
CREATE TABLE IF NOT EXISTS quarantine (
    run_id TEXT, item_id TEXT, seq INTEGER, ts REAL, stage TEXT, reason TEXT, folder TEXT,
    chain_pos INTEGER, prev_hash TEXT, hash TEXT,
    PRIMARY KEY (run_id, item_id, seq)
);
CREATE TABLE IF NOT EXISTS chain_head (
    id INTEGER PRIMARY KEY CHECK (id = 1), pos INTEGER NOT NULL, hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_ts ON decisions (ts);
"""

GENESIS = "0" * 64


@dataclass(frozen=True)
class EntryKind:
    """One kind of chained entry: the table row (or part of a row) it lives in and the columns it covers.

    ``columns`` maps each hashed column to its Python type; ``key`` columns identify the entry (the
    idempotency key); ``json_columns`` are the ones stored as JSON text. A kind with ``updates`` fills columns of
    an existing row (a run's finish). Readers (the dashboards) take table and column names from here.
    """

    name: str
    table: str
    columns: dict[str, type]
    key: tuple[str, ...]
    pos: str = "chain_pos"
    prev: str = "prev_hash"
    hash: str = "hash"
    updates: bool = False
    json_columns: tuple[str, ...] = ()


RUN_START = EntryKind("run_start", "runs", {"run_id": str, "line": str, "started": float, "config": str},
                      key=("run_id",), pos="start_pos", prev="start_prev_hash", hash="start_hash",
                      json_columns=("config",))
RUN_FINISH = EntryKind("run_finish", "runs", {"run_id": str, "finished": float, "summary": str},
                       key=("run_id",), pos="finish_pos", prev="finish_prev_hash", hash="finish_hash", updates=True,
                       json_columns=("summary",))
DECISION = EntryKind("decision", "decisions", {
    "run_id": str, "item_id": str, "seq": int, "ts": float, "label": str, "confidence": float, "reject": int,
    "modality_weights": str, "extra": str, "model_version": str, "latency_ms": float, "input_digest": str,
    "acks": str,
}, key=("run_id", "item_id"), json_columns=("modality_weights", "extra", "acks"))
QUARANTINE = EntryKind("quarantine", "quarantine", {
    "run_id": str, "item_id": str, "seq": int, "ts": float, "stage": str, "reason": str, "folder": str,
}, key=("run_id", "item_id", "seq"))
KINDS = (RUN_START, RUN_FINISH, DECISION, QUARANTINE)


class AuditConflict(ValueError):
    """An entry recorded again with different content: the trail is append-only, history is not rewritten."""


@dataclass(frozen=True)
class BrokenEntry:
    """The first entry where the chain does not hold, and why."""

    pos: int | None
    kind: str
    table: str
    run_id: str | None
    item_id: str | None
    reason: str

    def __str__(self) -> str:
        where = f"position {self.pos}" if self.pos is not None else "no chain position"
        item = f" item {self.item_id}" if self.item_id is not None else ""
        return f"{self.table} row ({self.kind}, run {self.run_id}{item}, {where}): {self.reason}"


@dataclass(frozen=True)
class ChainReport:
    """What :func:`verify` found: entries checked, the head hash, and the first broken entry (None: intact)."""

    entries: int
    head: str
    broken: BrokenEntry | None

    @property
    def ok(self) -> bool:
        return self.broken is None

    def __str__(self) -> str:
        if self.broken is None:
            return f"audit trail intact: {self.entries} entries verified, head {self.head}"
        return f"audit trail TAMPERED: {self.broken} ({self.entries} entries checked before it)"


def canonical(kind: EntryKind, pos: int, values: dict[str, Any]) -> str:
    """The entry as canonical JSON: sorted keys, no spaces, ASCII; what its hash covers."""
    return json.dumps({"kind": kind.name, "pos": pos, **values}, sort_keys=True, separators=(",", ":"))


def entry_hash(prev_hash: str, kind: EntryKind, pos: int, values: dict[str, Any]) -> str:
    return hashlib.sha256((prev_hash + canonical(kind, pos, values)).encode()).hexdigest()


def _coerce(kind: EntryKind, values: dict[str, Any]) -> dict[str, Any]:
    """Values as SQLite stores and returns them (a NaN float is stored as NULL), so hashes recompute exactly."""
    out = {}
    for col, typ in kind.columns.items():
        v = values[col]
        if v is not None:
            v = typ(v)
            if typ is float and math.isnan(v):
                v = None
        out[col] = v
    return out


class AuditStore:
    """SQLite audit store; thread-safe, one connection; several stores (processes) may share one file.

    Example:
        >>> audit = AuditStore("runs/audit.db")
        >>> run = audit.start_run("factory", {"replicas": 2})
        >>> audit.record_decision(run, decision)
        >>> audit.verify().ok
        True
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.quarantine_dir = self.path.with_name(self.path.name + ".quarantine")
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._add_chain_columns()

    def _add_chain_columns(self) -> None:
        """Stores written before the chain existed get its columns; their old rows fail :meth:`verify`."""
        for kind in KINDS:
            have = {r[1] for r in self._db.execute(f"PRAGMA table_info({kind.table})")}
            for col, sql_type in ((kind.pos, "INTEGER"), (kind.prev, "TEXT"), (kind.hash, "TEXT")):
                if col not in have:
                    self._db.execute(f"ALTER TABLE {kind.table} ADD COLUMN {col} {sql_type}")

    def start_run(self, line: str, config: dict[str, Any]) -> str:
        run_id = time.strftime("%Y%m%d-%H%M%S-", time.gmtime()) + f"{time.time_ns() % 1_000_000:06d}"
        self._append(RUN_START, {"run_id": run_id, "line": line, "started": time.time(),
                                 "config": json.dumps(config, default=str)})
        return run_id

    def finish_run(self, run_id: str, summary: dict[str, Any]) -> None:
        """Record the run's end; a run finishes once (a second finish raises :class:`AuditConflict`)."""
        self._append(RUN_FINISH, {"run_id": run_id, "finished": time.time(),
                                  "summary": json.dumps(summary, default=str)})

    def record_decision(self, run_id: str, d: Decision) -> bool:
        """Append the decision; False when this exact decision is already recorded for the item (a no-op).

        Raises :class:`AuditConflict` when the run already holds a *different* decision for ``d.item_id``.
        """
        return self._append(DECISION, {
            "run_id": run_id, "item_id": d.item_id, "seq": d.seq, "ts": d.ts, "label": d.label,
            "confidence": d.confidence, "reject": int(d.reject), "modality_weights": json.dumps(d.modality_weights),
            "extra": json.dumps(d.extra, default=str), "model_version": d.model_version,
            "latency_ms": d.latency_ms, "input_digest": d.input_digest, "acks": json.dumps(d.acks),
        })

    def record_quarantine(self, run_id: str, q: Quarantined) -> Path:
        """Store the reason and copy the item's payloads into the quarantine folder; returns that folder.

        Recording the same item again is a no-op; with a different reason it raises :class:`AuditConflict`.
        The folder is ``<item_id>``, or ``<item_id>@<seq>`` when another entry of the run holds that name (an
        item id quarantined twice, as a duplicate event's is; ids that sanitise alike).
        """
        folder = self.quarantine_dir / run_id / _safe_name(q.item_id)
        holders = self.query("SELECT item_id, seq FROM quarantine WHERE run_id = ? AND folder = ?",
                             (run_id, str(folder)))
        if any((h["item_id"], h["seq"]) != (q.item_id, q.seq) for h in holders):
            folder = folder.with_name(f"{folder.name}@{q.seq}")
        appended = self._append(QUARANTINE, {"run_id": run_id, "item_id": q.item_id, "seq": q.seq, "ts": q.ts,
                                             "stage": q.stage, "reason": q.reason, "folder": str(folder)})
        if appended:
            folder.mkdir(parents=True, exist_ok=True)
            for src in q.payload_paths:
                if Path(src).is_file():
                    shutil.copy2(src, folder / Path(src).name)
            (folder / "reason.txt").write_text(f"item: {q.item_id}\nstage: {q.stage}\nreason: {q.reason}\n")
        return folder

    def _append(self, kind: EntryKind, values: dict[str, Any]) -> bool:
        """Chain and write one entry in one transaction; False when the identical entry is already there."""
        values = _coerce(kind, values)
        key = {c: values[c] for c in kind.key}
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # the head is read and moved under SQLite's write lock
            try:
                appended = self._append_locked(kind, values, key)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return appended

    def _append_locked(self, kind: EntryKind, values: dict[str, Any], key: dict[str, Any]) -> bool:
        where = " AND ".join(f"{c} = ?" for c in key)
        cols = list(kind.columns)
        existing = self._db.execute(f"SELECT {', '.join(cols)}, {kind.pos} FROM {kind.table} WHERE {where}",
                                    tuple(key.values())).fetchone()
        if kind.updates and existing is None:
            raise AuditConflict(f"{kind.name}: no {kind.table} row for {key}")
        if existing is not None and (existing[-1] is not None or not kind.updates):
            stored = dict(zip(cols, existing[:-1]))
            if stored == values:
                return False
            differ = sorted(c for c in cols if stored[c] != values[c])
            raise AuditConflict(f"{kind.name} for {key} is already recorded with different {', '.join(differ)}; "
                                "the audit trail is append-only")
        head = self._db.execute("SELECT pos, hash FROM chain_head WHERE id = 1").fetchone()
        pos, prev = (head[0] + 1, head[1]) if head else (1, GENESIS)
        chained = {**values, kind.pos: pos, kind.prev: prev, kind.hash: entry_hash(prev, kind, pos, values)}
        if kind.updates:
            sets = ", ".join(f"{c} = ?" for c in chained if c not in key)
            self._db.execute(f"UPDATE {kind.table} SET {sets} WHERE {where}",
                             (*(v for c, v in chained.items() if c not in key), *key.values()))
        else:
            self._db.execute(f"INSERT INTO {kind.table} ({', '.join(chained)}) VALUES "
                             f"({', '.join('?' * len(chained))})", tuple(chained.values()))
        self._db.execute("INSERT OR REPLACE INTO chain_head (id, pos, hash) VALUES (1, ?, ?)",
                         (pos, chained[kind.hash]))
        return True

    def verify(self) -> ChainReport:
        """Recompute the hash chain over every entry; see :func:`verify`."""
        with self._lock:
            return verify_connection(self._db)

    def query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            cur = self._db.execute(sql, params)
            cur.row_factory = sqlite3.Row
            return cur.fetchall()

    def decisions(self, run_id: str) -> list[dict[str, Any]]:
        """A run's decisions in ``seq`` order, JSON columns parsed."""
        rows = self.query("SELECT * FROM decisions WHERE run_id = ? ORDER BY seq", (run_id,))
        out = []
        for row in rows:
            d = dict(row)
            for key in DECISION.json_columns:
                d[key] = json.loads(d[key])
            out.append(d)
        return out

    def quarantined(self, run_id: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.query("SELECT * FROM quarantine WHERE run_id = ? ORDER BY seq", (run_id,))]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def verify(path: str | Path) -> ChainReport:
    """Verify the audit store at ``path``, opened read-only (verifying never writes to the evidence).

    Raises FileNotFoundError when there is no file, ValueError when it is not an audit store.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no audit database at {path}")
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return verify_connection(conn)
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"{path} is not a readable audit store: {exc}") from None
    finally:
        conn.close()


@dataclass(frozen=True)
class _Entry:
    kind: EntryKind
    pos: int | None
    prev: str | None
    hash: str | None
    values: dict[str, Any]

    def broken(self, reason: str) -> BrokenEntry:
        return BrokenEntry(self.pos, self.kind.name, self.kind.table, self.values.get("run_id"),
                           self.values.get("item_id"), reason)


def verify_connection(conn: sqlite3.Connection) -> ChainReport:
    """Walk the chain in position order: each entry must sit at the next position, link to the previous hash
    and hash to its stored value; the last one must be the recorded head. Reports the first that does not."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not {k.table for k in KINDS} | {"chain_head"} <= tables:
        raise sqlite3.DatabaseError("audit tables missing")
    entries = [e for kind in KINDS for e in _read_entries(conn, kind)]
    unchained = next((e for e in entries if e.pos is None), None)
    if unchained is not None:
        return ChainReport(0, "", unchained.broken("not in the hash chain (inserted outside the audit store, "
                                                   "or written before the chain existed)"))
    entries.sort(key=lambda e: e.pos)
    prev = GENESIS
    for checked, e in enumerate(entries):
        expected_pos = checked + 1
        if e.pos != expected_pos:
            why = (f"position {expected_pos} is missing: the entry before this one was deleted"
                   if e.pos > expected_pos else f"position {e.pos} is held by two entries")
            return ChainReport(checked, prev, e.broken(why))
        try:
            recomputed = entry_hash(e.prev or "", e.kind, e.pos, e.values)
        except TypeError:  # a value no audit store writes (a BLOB put there by hand)
            recomputed = None
        if recomputed != e.hash:
            return ChainReport(checked, prev, e.broken("content does not match its hash (modified or moved)"))
        if e.prev != prev:
            return ChainReport(checked, prev, e.broken("prev_hash does not match the previous entry's hash "
                                                       "(entries deleted, replaced or reordered)"))
        prev = e.hash
    head = conn.execute("SELECT pos, hash FROM chain_head WHERE id = 1").fetchone()
    head_pos, head_hash = head if head else (0, GENESIS)
    if (head_pos, head_hash) != (len(entries), prev):
        reason = (f"the chain head is at position {head_pos} but the chain ends at {len(entries)}: the last "
                  "entries were deleted" if head_pos > len(entries) else "the chain head does not match the last entry")
        last = entries[-1].broken(reason) if entries else BrokenEntry(None, "head", "chain_head", None, None, reason)
        return ChainReport(len(entries), prev, last)
    return ChainReport(len(entries), prev, None)


def _read_entries(conn: sqlite3.Connection, kind: EntryKind) -> list[_Entry]:
    cols: Sequence[str] = list(kind.columns)
    sql = f"SELECT {', '.join(cols)}, {kind.pos}, {kind.prev}, {kind.hash} FROM {kind.table}"
    if kind.updates:
        sql += f" WHERE {kind.pos} IS NOT NULL OR " + " OR ".join(f"{c} IS NOT NULL" for c in cols
                                                                   if c not in kind.key)
    return [_Entry(kind, r[-3], r[-2], r[-1], dict(zip(cols, r[:-3]))) for r in conn.execute(sql)]


def _safe_name(item_id: str) -> str:
    """A single, harmless path component: never empty, never ``.``/``..`` or hidden."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in item_id)[:120]
    return ("_" + name[1:] if name.startswith(".") else name) or "item"
