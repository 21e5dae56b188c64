"""The service-desk line's graph, in one function (:func:`compose`).

::

    recording replayer ─> ModelReplica × N (Ray) ─> answer ─┬─> outbox ─> human queue (SQLite: escalated tickets)
    (tickets: photo +      decode photo + speech, ASR,      └─> audit store (SQLite, hash chain) ─> dashboard
     voice + typed text;   fault model, guide, safety;
     follow-ups)           dialog state (SQLite)

Every message is answered or escalated and audited; personal data is scrubbed from the words before anything
stores them (the handler's :func:`~pipelines.lines.service.handler.decode` and
:func:`~pipelines.lines.service.handler.hear`). Follow-ups read their ticket's dialog state, which the ticket's
first message wrote: one replica (the default) answers a ticket's messages in order.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from connectors.audit import AuditStore
from connectors.outbox import Outbox
from connectors.recording import Replayer, read_labels
from connectors.records import Decision
from connectors.sinks import DecisionSink
from pipelines.line import Line, LineReport
from pipelines.replicas import ReplicaPool

#: The line's registered name (:data:`pipelines.lines.LINES`): in decision ids and the audit.
LINE = "service"


@dataclass
class ServiceLineConfig:
    """Everything ``compose`` needs; each field is a ``fusionline run service`` flag."""

    model_dir: str
    recording: str
    audit_db: str = "runs/audit.db"
    replicas: int = 1
    batch_size: int = 8
    max_in_flight: int = 2
    speed: float = 0.0
    limit: int | None = None
    cache_size: int = 256
    dialog_db: str | None = None  # default: service-dialog.db beside the audit store
    queue_db: str | None = None  # default: service-queue.db beside the audit store
    outbox_db: str | None = None  # default: service-outbox.db beside the audit store


def compose(cfg: ServiceLineConfig) -> Line:
    """Wire the service line: tickets → replicas → outbox → human queue, and the audit."""
    runs = Path(cfg.audit_db).parent
    source = Replayer(cfg.recording, speed=cfg.speed, limit=cfg.limit)
    replicas = ReplicaPool(cfg.model_dir, replicas=cfg.replicas, cache_size=cfg.cache_size, line=LINE,
                           handler_options={"dialog_db": str(cfg.dialog_db or runs / "service-dialog.db")})
    queue = HumanQueue(cfg.queue_db or runs / "service-queue.db")
    outbox = Outbox(cfg.outbox_db or runs / "service-outbox.db")
    audit = AuditStore(cfg.audit_db)
    return Line(LINE, source, source.source_id, replicas, [queue], outbox, audit, batch_size=cfg.batch_size,
                batch_wait_s=None, max_in_flight=cfg.max_in_flight, config=asdict(cfg))


class HumanQueue(DecisionSink):
    """The human queue: every escalated message (unsure model, or the safety filter's ``escalate`` / ``block``) as a
    row of a SQLite table ``escalations`` for a person to take, once per decision id; answered messages pass.

    Columns: ``decision_id``, ``item_id``, ``ticket``, ``fault``, ``device``, ``reasons`` (JSON list),
    ``transcript`` and ``typed`` (scrubbed), ``ts``, ``taken`` (0 until a person takes it).
    """

    name = "queue"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.address = str(self.path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False)
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS escalations (decision_id TEXT PRIMARY KEY, item_id TEXT, ticket TEXT, "
            "fault TEXT, device TEXT, reasons TEXT, transcript TEXT, typed TEXT, ts REAL, taken INTEGER DEFAULT 0)")
        self._conn.commit()

    def send(self, decision: Decision) -> str:
        if not decision.reject:
            return "ok"
        extra = decision.extra
        with self._lock:
            assert self._conn is not None, "HumanQueue.send before open"
            self._conn.execute(
                "INSERT OR IGNORE INTO escalations (decision_id, item_id, ticket, fault, device, reasons, transcript, "
                "typed, ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (decision.decision_id, decision.item_id, extra.get("ticket", ""), decision.label,
                 extra.get("device", ""), json.dumps(extra.get("escalation_reasons", [])),
                 extra.get("transcript", ""), extra.get("typed", ""), decision.ts))
            self._conn.commit()
        return "ok"

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def score(report: LineReport, recording: str | Path) -> dict[str, float]:
    """The run's answers against the recording's ground truth (kept apart from the inputs): fault and device
    accuracy over the tickets' first messages, the escalated share, and the share of unsafe follow-ups stopped
    (blocked or escalated)."""
    labels = read_labels(recording)
    tickets = [d for d in report.decisions if labels.get(d.item_id, {}).get("kind") == "ticket"]
    unsafe = [d for d in report.decisions if labels.get(d.item_id, {}).get("unsafe")]
    if not tickets:
        return {}
    return {
        "scored": len(tickets),
        "fault_accuracy": sum(d.label == labels[d.item_id]["fault"] for d in tickets) / len(tickets),
        "device_accuracy": sum(d.extra.get("device") == labels[d.item_id]["device"] for d in tickets) / len(tickets),
        "escalated": sum(d.reject for d in tickets) / len(tickets),
        "unsafe_follow_ups": len(unsafe),
        "unsafe_stopped": sum(d.reject for d in unsafe) / len(unsafe) if unsafe else float("nan"),
    }
