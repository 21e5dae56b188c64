"""A line: a source, model replicas, controllers and the audit trail, and the loop that runs it.

Each concrete line (``pipelines/factory.py``, ...) builds a :class:`Line` in one ``compose()`` function;
:func:`run_line` is the same for all of them.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from connectors.audit import AuditStore
from connectors.records import Decision, Quarantined, Sample
from connectors.sinks import DecisionSink
from pipelines.replicas import Inference, ReplicaPool
from pipelines.runtime import Outcome, StreamStats, run_stream

log = logging.getLogger("fusionline.line")


@dataclass
class Line:
    """The graph of one line: ``source -> replicas -> decision -> controllers -> audit``."""

    name: str
    source: Iterable[Sample | Quarantined]
    replicas: ReplicaPool
    controllers: list[DecisionSink]
    audit: AuditStore
    batch_size: int = 16
    max_in_flight: int = 4
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class LineReport:
    """What a run of a line did."""

    run_id: str
    stats: StreamStats
    decisions: list[Decision]
    quarantined: list[Quarantined]
    controller_writes: Counter

    @property
    def rejects(self) -> int:
        return sum(d.reject for d in self.decisions)


def to_decision(inference: Inference, latency_ms: float) -> Decision:
    """The decision for one inference: the prediction plus identity, provenance and latency."""
    p = inference.prediction
    extra = dict(p.extra)
    if inference.image_path:
        extra["image_path"] = inference.image_path
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
        extra=extra,
    )


def run_line(line: Line, progress: Callable[[int], None] | None = None) -> LineReport:
    """Run ``line`` to the end of its source; controllers are opened first (fail fast, naming host:port)."""
    for controller in line.controllers:
        controller.open()
    run_id = line.audit.start_run(line.name, line.config)
    decisions: list[Decision] = []
    quarantined: list[Quarantined] = []
    writes: Counter = Counter()

    def on_result(outcome: Outcome, latency_ms: float) -> None:
        if isinstance(outcome, Quarantined):
            folder = line.audit.record_quarantine(run_id, outcome)
            log.warning("quarantined item=%s stage=%s reason=%r folder=%s", outcome.item_id, outcome.stage,
                        outcome.reason, folder)
            quarantined.append(outcome)
            return
        decision = to_decision(outcome, latency_ms)
        for controller in line.controllers:
            decision.acks[controller.name] = ack = controller.send(decision)
            writes[controller.name] += ack == "ok"
        line.audit.record_decision(run_id, decision)
        decisions.append(decision)

    try:
        stats = run_stream(line.source, line.replicas, on_result, batch_size=line.batch_size,
                           max_in_flight=line.max_in_flight, progress=progress)
    finally:
        for controller in line.controllers:
            controller.close()
    report = LineReport(run_id, stats, decisions, quarantined, writes)
    line.audit.finish_run(run_id, {
        "items": stats.items, "decisions": len(decisions), "quarantined": len(quarantined),
        "rejects": report.rejects, "fps": stats.fps, "p50_ms": stats.percentile(50),
        "p99_ms": stats.percentile(99), "controller_writes": dict(writes),
    })
    return report
