"""The factory defect-inspection line's graph, in one function (:func:`compose`).

::

    recording replayer ─┐                                     ┌─> outbox ─┬─> PLC reject gate (Modbus TCP)
    or camera (OpenCV) ─┴─> ModelReplica × N (Ray) ─> decision ┤  (SQLite) └─> MQTT fusionline/factory/decisions
                                                               └─> audit store (SQLite) ─> dashboard
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from connectors.audit import AuditStore
from connectors.camera import CameraSource
from connectors.modbus import ModbusRejectGate
from connectors.mqtt import MqttPublisher
from connectors.outbox import Outbox
from connectors.recording import Replayer, read_labels
from connectors.sinks import DecisionSink, split_address
from model.config import InspectorConfig
from pipelines.line import Line, LineReport
from pipelines.lines.factory.handler import inspector_dir
from pipelines.replicas import ReplicaPool

#: The line's registered name (:data:`pipelines.lines.LINES`): in decision ids, MQTT topics and the audit.
LINE = "factory"


@dataclass
class FactoryLineConfig:
    """Everything ``compose`` needs; each field is a ``fusionline run factory`` flag."""

    model_dir: str
    recording: str | None = None
    camera: str | None = None
    audit_db: str = "runs/audit.db"
    replicas: int = 2
    gpus_per_replica: float | None = None  # None: the cluster's GPUs shared evenly (pipelines.replicas.gpu_share)
    runtime: str = "eager"  # eager | onnx | int8 (model.runtimes)
    anomaly: str | None = None  # a good-only model of the product (fusionline fit factory): its flags reject too
    batch_size: int = 16
    max_in_flight: int = 4
    speed: float = 0.0
    limit: int | None = None
    loop: bool = False
    plc: str | None = None
    mqtt: str | None = None
    cache_size: int = 4096
    outbox_db: str | None = None  # default: outbox.db beside the audit store
    fail_safe_after: float = 10.0


def compose(cfg: FactoryLineConfig, replicas: ReplicaPool | None = None) -> Line:
    """Wire the factory line: source → replicas → outbox → controllers, and the audit.

    ``replicas``: a running pool to host the model (a benchmark's, kept across runs); None starts one from ``cfg``.
    """
    if cfg.recording:
        source = Replayer(cfg.recording, speed=cfg.speed, limit=cfg.limit, loop=cfg.loop)
        source_id, batch_wait_s = source.source_id, None  # replays: batches by count, bitwise reproducible
    else:
        source = CameraSource(cfg.camera, limit=cfg.limit)
        source_id, batch_wait_s = f"camera:{cfg.camera}@{time.time_ns()}", 0.02  # live: bounded latency
    if replicas is None:
        replicas = ReplicaPool(cfg.model_dir, replicas=cfg.replicas, cache_size=cfg.cache_size, line=LINE,
                               gpus_per_replica=cfg.gpus_per_replica, runtime=cfg.runtime,
                               handler_options={"anomaly": cfg.anomaly} if cfg.anomaly else None)
    controllers: list[DecisionSink] = []
    if cfg.plc:
        labels = InspectorConfig.load(inspector_dir(cfg.model_dir)).classes["defect"]
        controllers.append(ModbusRejectGate(*split_address(cfg.plc, 5020), label_codes=label_codes(labels)))
    if cfg.mqtt:
        controllers.append(MqttPublisher(*split_address(cfg.mqtt, 1883), line=LINE))
    outbox = Outbox(cfg.outbox_db or Path(cfg.audit_db).with_name("outbox.db"))
    audit = AuditStore(cfg.audit_db)
    return Line(LINE, source, source_id, replicas, controllers, outbox, audit, batch_size=cfg.batch_size,
                batch_wait_s=batch_wait_s, max_in_flight=cfg.max_in_flight, fail_safe_after_s=cfg.fail_safe_after,
                config=asdict(cfg))


def label_codes(labels: list[str]) -> dict[str, int]:
    """PLC label codes: the class index in the model's vocabulary (documented in docs/plc-register-map.md)."""
    return {label: code for code, label in enumerate(labels)}


def score(report: LineReport, recording: str | Path) -> dict[str, float]:
    """Accuracy of the run's decisions against the recording's ground truth (apart from the inputs)."""
    labels = read_labels(recording)
    scored = [d for d in report.decisions if d.item_id in labels]
    if not scored:
        return {}
    defect = sum(d.label == labels[d.item_id]["defect"] for d in scored) / len(scored)
    machine = sum(d.extra.get("machine") == labels[d.item_id].get("machine") for d in scored) / len(scored)
    return {"scored": len(scored), "defect_accuracy": defect, "machine_accuracy": machine}
