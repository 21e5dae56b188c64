"""The medical fusion line's graph, in one function (:func:`compose`).

::

    recording replayer ─────────┐                                   ┌─> outbox ─┬─> PACS: SR + SEG (C-STORE),
    or PACS (Orthanc) new CT ───┴─> ModelReplica × N (Ray) ─> finding┤  (SQLite) │   FHIR DiagnosticReport
    studies + EHR record/note        decode CT + record,             │           └─> similar-cases index (faiss)
                                     nodule model                    └─> audit store (SQLite) ─> dashboard

Item ids are pseudonymous (the recording's case ids, or a keyed hash of the study for PACS studies): no name,
patient id or accession number reaches the audit trail or the logs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from connectors.audit import AuditStore
from connectors.outbox import Outbox
from connectors.recording import Replayer, read_labels
from connectors.sinks import DecisionSink, split_address
from pipelines.line import Line, LineReport
from pipelines.lines.medical.similar import CaseIndexSink
from pipelines.replicas import ReplicaPool

#: The line's registered name (:data:`pipelines.lines.LINES`): in decision ids and the audit.
LINE = "medical"


@dataclass
class MedicalLineConfig:
    """Everything ``compose`` needs; each field is a ``fusionline run medical`` flag.

    ``recording`` replays studies offline; ``pacs`` (Orthanc's ``host:port`` for DICOM, with its REST API on
    ``pacs_http_port``) takes new studies as they arrive, their record and note from the ``ehr`` recording, and
    receives the SR and SEG back. ``cases_index`` is the similar-cases index folder the line adds its cases to.
    """

    model_dir: str
    recording: str | None = None
    pacs: str | None = None
    pacs_http_port: int = 8042
    ehr: str | None = None
    audit_db: str = "runs/audit.db"
    cases_index: str | None = None
    reports_dir: str | None = None  # default: fhir-reports/ beside the audit store
    replicas: int = 1
    gpus_per_replica: float | None = None  # None: the cluster's GPUs shared evenly (pipelines.replicas.gpu_share)
    batch_size: int = 2
    max_in_flight: int = 2
    speed: float = 0.0
    limit: int | None = None
    idle_s: float = 10.0
    cache_size: int = 64
    outbox_db: str | None = None  # default: medical-outbox.db beside the audit store
    fail_safe_after: float = 30.0


def compose(cfg: MedicalLineConfig) -> Line:
    """Wire the medical line: studies → replicas → outbox → PACS and the similar-cases index, and the audit."""
    from connectors.pacs import PacsClient, PacsSource, PacsWriter, RecordingEHR

    runs = Path(cfg.audit_db).parent
    pacs = PacsClient(*split_address(cfg.pacs, 4242), http_port=cfg.pacs_http_port) if cfg.pacs else None
    if cfg.recording:
        source = Replayer(cfg.recording, speed=cfg.speed, limit=cfg.limit)
        source_id = source.source_id
    elif pacs is not None:
        source = PacsSource(pacs, spool_dir=runs / "pacs-spool", key=pseudonym_key(cfg),
                            ehr=RecordingEHR(cfg.ehr) if cfg.ehr else None, limit=cfg.limit, idle_s=cfg.idle_s)
        source_id = source.source_id
    else:
        raise ValueError("the medical line needs a source: a recording to replay, or a PACS to take studies from")
    replicas = ReplicaPool(cfg.model_dir, replicas=cfg.replicas, cache_size=cfg.cache_size, line=LINE,
                           gpus_per_replica=cfg.gpus_per_replica)
    controllers: list[DecisionSink] = []
    if pacs is not None:
        controllers.append(PacsWriter(pacs, reports_dir=cfg.reports_dir or runs / "fhir-reports",
                                      key=pseudonym_key(cfg)))
    if cfg.cases_index:
        controllers.append(CaseIndexSink(cfg.cases_index))
    outbox = Outbox(cfg.outbox_db or runs / "medical-outbox.db")
    audit = AuditStore(cfg.audit_db)
    return Line(LINE, source, source_id, replicas, controllers, outbox, audit, batch_size=cfg.batch_size,
                batch_wait_s=None if cfg.recording else 0.5, max_in_flight=cfg.max_in_flight,
                fail_safe_after_s=cfg.fail_safe_after, config=asdict(cfg))


def pseudonym_key(cfg: MedicalLineConfig) -> bytes:
    """The key of the line's pseudonyms: ``$FUSIONLINE_PSEUDONYM_KEY``, else ``pseudonym.key`` beside the audit store
    (made once, mode 0600)."""
    from connectors.privacy import load_key

    return load_key(Path(cfg.audit_db).parent / "pseudonym.key")


def score(report: LineReport, recording: str | Path, item_ids: dict[str, str] | None = None) -> dict[str, float]:
    """The run's findings against the recording's ground truth (kept apart from the inputs): presence accuracy,
    and the share of true nodules whose predicted centre lies within the nodule's radius. ``item_ids`` maps the
    run's item ids to the recording's (PACS studies are decided under pseudonyms)."""
    labels = read_labels(recording)
    truth = {d.item_id: labels.get((item_ids or {}).get(d.item_id, d.item_id)) for d in report.decisions}
    scored = [d for d in report.decisions if truth[d.item_id] is not None]
    if not scored:
        return {}
    right = sum(d.extra.get("nodule") == truth[d.item_id]["nodule"] for d in scored)
    nodules = [d for d in scored if truth[d.item_id]["nodule"] == "present"]
    hits = sum(within_radius(d.extra, truth[d.item_id]) for d in nodules)
    return {"scored": len(scored), "presence_accuracy": right / len(scored),
            "hit_rate": hits / len(nodules) if nodules else float("nan")}


def within_radius(extra: dict, label: dict) -> bool:
    """Whether the predicted centre lies within the true nodule's radius (distance in mm over the voxel spacing)."""
    if extra.get("center_vox") is None or extra.get("spacing_mm") is None:
        return False
    offset = (np.subtract(extra["center_vox"], label["center_vox"])) * np.asarray(extra["spacing_mm"])
    return float(np.linalg.norm(offset)) <= label["diameter_mm"] / 2
