"""A line: a source, model replicas, controllers and the audit trail, and the loop that runs it.

Each registered line (``pipelines/lines/<line>/compose.py``) builds a :class:`Line` in one ``compose()``
function; :func:`run_line` is the same for all of them::

    source ─> run_stream (replicas) ─> decision ─> Dispatcher ─> outbox ─> courier per controller ─> ack
                                                                                              └─> audit
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from connectors.audit import AuditStore
from connectors.delivery import DeliveryStats, Dispatcher
from connectors.outbox import Outbox
from connectors.records import Decision, Quarantined, Sample, decision_id
from connectors.sinks import DecisionSink
from pipelines.replicas import Inference, ReplicaPool, ReplicaRestart
from pipelines.runtime import Outcome, StreamStats, run_stream

log = logging.getLogger("fusionline.line")


@dataclass
class Line:
    """The graph of one line: ``source -> replicas -> decision -> outbox -> controllers``, and the audit.

    ``source_id`` names the recording (or the live session) in decision ids; ``batch_wait_s`` is how long a
    partial micro-batch waits (None: batches cut by count only, so decisions are bitwise reproducible);
    ``fail_safe_after_s`` is how long a controller may be unreachable before the FAIL-SAFE alarm;
    ``drain_timeout_s`` is how long the end of the run waits for the controllers to take the backlog.
    """

    name: str
    source: Iterable[Sample | Quarantined]
    source_id: str
    replicas: ReplicaPool
    controllers: list[DecisionSink]
    outbox: Outbox
    audit: AuditStore
    batch_size: int = 16
    batch_wait_s: float | None = 0.02
    max_in_flight: int = 4
    fail_safe_after_s: float = 10.0
    drain_timeout_s: float = 30.0
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class LineReport:
    """What a run of a line did."""

    run_id: str
    stats: StreamStats
    decisions: list[Decision]
    quarantined: list[Quarantined]
    delivery: dict[str, DeliveryStats]
    replica_restarts: list[ReplicaRestart]

    @property
    def rejects(self) -> int:
        return sum(d.reject for d in self.decisions)

    @property
    def controller_writes(self) -> Counter:
        """Decisions each controller took ("ok") in this run."""
        return Counter({name: s.delivered + s.resent for name, s in self.delivery.items()})

    @property
    def fail_safe(self) -> list[str]:
        """The FAIL-SAFE alarms raised in this run (empty when every controller kept up)."""
        return [alarm for s in self.delivery.values() for alarm in s.fail_safe]


def to_decision(inference: Inference, latency_ms: float, line: str, source_id: str) -> Decision:
    """The decision for one inference: the handler's answer plus identity, provenance and latency."""
    p = inference.prediction
    return Decision(
        item_id=inference.item_id,
        seq=inference.seq,
        label=p.label,
        confidence=float(p.confidence),
        reject=bool(p.reject),
        modality_weights={k: float(v) for k, v in p.modality_weights.items()},
        model_version=p.model_version,
        latency_ms=latency_ms,
        input_digest=inference.input_digest,
        extra={**p.extra, **inference.provenance},
        decision_id=decision_id(line, source_id, inference.seq, inference.item_id),
    )


def run_line(line: Line, progress: Callable[[int], None] | None = None) -> LineReport:
    """Run ``line`` to the end of its source.

    Controllers are opened first (fail fast, naming host:port), then take what an earlier run left in the
    outbox. Each decision is queued durably for every controller and audited once all of them answered. A run
    that fails (a replica pool with no live replica, a controller's courier ended by an unexpected error) is
    still finished in the audit, with the error and the counts so far, before the exception propagates.
    """
    dispatcher = Dispatcher(line.controllers, line.outbox, lambda d: line.audit.record_decision(run_id, d),
                            line.fail_safe_after_s)
    dispatcher.open()
    run_id = line.audit.start_run(line.name, line.config)  # before the first put, so before any settling
    decisions: list[Decision] = []
    quarantined: list[Quarantined] = []

    def on_result(outcome: Outcome, latency_ms: float) -> None:
        if isinstance(outcome, Quarantined):
            folder = line.audit.record_quarantine(run_id, outcome)
            log.warning("quarantined item=%s stage=%s reason=%r folder=%s", outcome.item_id, outcome.stage,
                        outcome.reason, folder)
            quarantined.append(outcome)
            return
        decision = to_decision(outcome, latency_ms, line.name, line.source_id)
        decisions.append(decision)
        dispatcher.put(decision)

    try:
        try:
            stats = run_stream(line.source, line.replicas, on_result, batch_size=line.batch_size,
                               max_wait_s=line.batch_wait_s, max_in_flight=line.max_in_flight, progress=progress)
        finally:
            delivery = dispatcher.close(line.drain_timeout_s)
    except Exception as exc:  # the run still ends in the audit, saying why and how far it got
        line.audit.finish_run(run_id, {"error": f"{type(exc).__name__}: {exc}", "decisions": len(decisions),
                                       "quarantined": len(quarantined)})
        raise
    report = LineReport(run_id, stats, decisions, quarantined, delivery, list(line.replicas.restarts))
    for alarm in report.fail_safe:
        log.error("run=%s %s", run_id, alarm)
    line.audit.finish_run(run_id, {
        "items": stats.items, "decisions": len(decisions), "quarantined": len(quarantined),
        "rejects": report.rejects, "fps": stats.fps, "p50_ms": stats.percentile(50),
        "p99_ms": stats.percentile(99), "controller_writes": dict(report.controller_writes),
        "delivery": {name: asdict(s) for name, s in delivery.items()}, "fail_safe": report.fail_safe,
        "replica_restarts": [{"replica": r.replica, "error": r.error, "recovery_s": r.recovery_s, "lost": r.lost}
                             for r in report.replica_restarts],
    })
    return report
