"""The audit trail: every decision and every quarantined item, in SQLite (the embedded default).

Dashboards read this store; nothing else is their source. Quarantined payloads are also copied to a
folder beside the database (``<db>.quarantine/<item_id>/``) with a ``reason.txt``.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from connectors.records import Decision, Quarantined

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, line TEXT, started REAL, finished REAL, config TEXT, summary TEXT
);
CREATE TABLE IF NOT EXISTS decisions (
    run_id TEXT, item_id TEXT, seq INTEGER, ts REAL, label TEXT, confidence REAL, reject INTEGER,
    modality_weights TEXT, extra TEXT, model_version TEXT, latency_ms REAL, input_digest TEXT, acks TEXT,
    PRIMARY KEY (run_id, item_id)
);
CREATE TABLE IF NOT EXISTS quarantine (
    run_id TEXT, item_id TEXT, seq INTEGER, ts REAL, stage TEXT, reason TEXT, folder TEXT,
    PRIMARY KEY (run_id, item_id, seq)
);
CREATE INDEX IF NOT EXISTS decisions_ts ON decisions (ts);
"""


class AuditStore:
    """SQLite audit store; thread-safe, one connection.

    Example:
        >>> audit = AuditStore("runs/audit.db")
        >>> run = audit.start_run("factory", {"replicas": 2})
        >>> audit.record_decision(run, decision)
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.quarantine_dir = self.path.with_name(self.path.name + ".quarantine")
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    def start_run(self, line: str, config: dict[str, Any]) -> str:
        run_id = time.strftime("%Y%m%d-%H%M%S-", time.gmtime()) + f"{time.time_ns() % 1_000_000:06d}"
        with self._lock:
            self._db.execute(
                "INSERT INTO runs (run_id, line, started, config) VALUES (?, ?, ?, ?)",
                (run_id, line, time.time(), json.dumps(config, default=str)),
            )
        return run_id

    def finish_run(self, run_id: str, summary: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE runs SET finished = ?, summary = ? WHERE run_id = ?",
                (time.time(), json.dumps(summary, default=str), run_id),
            )

    def record_decision(self, run_id: str, d: Decision) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id, d.item_id, d.seq, d.ts, d.label, d.confidence, int(d.reject),
                    json.dumps(d.modality_weights), json.dumps(d.extra, default=str), d.model_version,
                    d.latency_ms, d.input_digest, json.dumps(d.acks),
                ),
            )

    def record_quarantine(self, run_id: str, q: Quarantined) -> Path:
        """Store the reason and copy the item's payloads into the quarantine folder; returns that folder."""
        folder = self.quarantine_dir / run_id / _safe_name(q.item_id)
        folder.mkdir(parents=True, exist_ok=True)
        for src in q.payload_paths:
            if Path(src).is_file():
                shutil.copy2(src, folder / Path(src).name)
        (folder / "reason.txt").write_text(f"item: {q.item_id}\nstage: {q.stage}\nreason: {q.reason}\n")
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, q.item_id, q.seq, q.ts, q.stage, q.reason, str(folder)),
            )
        return folder

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
            for key in ("modality_weights", "extra", "acks"):
                d[key] = json.loads(d[key])
            out.append(d)
        return out

    def quarantined(self, run_id: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.query("SELECT * FROM quarantine WHERE run_id = ? ORDER BY seq", (run_id,))]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _safe_name(item_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in item_id)[:120] or "item"
