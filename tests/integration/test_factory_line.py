"""The factory line end to end on real parts: a shipped recording replayed through Ray replicas into the
pymodbus PLC simulator and a real Mosquitto, audited in SQLite, compared with a golden file.

Bad input is mixed into a copy of the recording — a corrupt image, an empty WAV, a non-audio WAV, a
missing payload, a malformed event line, a path escaping the folder — and must be quarantined with its
reason while every good part is still decided, in order.

Regenerate the golden file after a deliberate model or recording change with ``pytest --update-golden``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from connectors.audit import AuditStore
from connectors.recording import read_labels
from pipelines.lines.factory.compose import FactoryLineConfig, compose, score
from pipelines.line import run_line
from tests.peers import BrokenSink, Subscriber

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data"
RECORDING = DATA / "recordings" / "factory-mini"
MODEL = DATA / "models" / "factory-v2"
GOLDEN = DATA / "golden" / "factory-mini-decisions.jsonl"

BAD_EVENTS = {
    # item id: (event line, expected words in the quarantine reason)
    "bad-corrupt-image": ('{"t": 9.0, "item_id": "bad-corrupt-image", "image": "frames/corrupt.png"}',
                          "not a decodable image"),
    "bad-empty-wav": ('{"t": 9.1, "item_id": "bad-empty-wav", "image": "frames/copy.jpg", "audio": "audio/empty.wav"}',
                      "empty"),
    "bad-not-audio": ('{"t": 9.2, "item_id": "bad-not-audio", "audio": "audio/text.wav"}', "not decodable"),
    "bad-missing": ('{"t": 9.3, "item_id": "bad-missing", "image": "frames/nowhere.png"}', "missing"),
    "line-": ('{"t": 9.4, "item_id": "bad-malformed", "image": ', "malformed JSON"),
    "bad-escape": ('{"t": 9.5, "item_id": "bad-escape", "image": "../../../etc/passwd"}', "escapes the recording"),
}


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    """A copy of the shipped recording with one bad event of each kind appended."""
    rec = tmp_path / "factory-mini"
    shutil.copytree(RECORDING, rec)
    (rec / "frames" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    shutil.copy(next((rec / "frames").iterdir()), rec / "frames" / "copy.jpg")
    (rec / "audio" / "empty.wav").write_bytes(b"")
    (rec / "audio" / "text.wav").write_text("this is not audio at all\n" * 20)
    with (rec / "events.jsonl").open("a") as events:
        for line, _ in BAD_EVENTS.values():
            events.write(line + "\n")
    return rec


def test_replay_through_ray_plc_and_mqtt_matches_golden(ray_cluster, recording, plc, broker, tmp_path,
                                                        request) -> None:
    subscriber = Subscriber(broker, "fusionline/factory/decisions")
    cfg = FactoryLineConfig(model_dir=str(MODEL), recording=str(recording), audit_db=str(tmp_path / "audit.db"),
                            replicas=2, batch_size=4, max_in_flight=2, plc=f"127.0.0.1:{plc.port}",
                            mqtt=f"127.0.0.1:{broker.port}")
    line = compose(cfg)
    try:
        report = run_line(line)
    finally:
        line.replicas.shutdown()
    labels = read_labels(RECORDING)

    # every good part decided, in source order, each controller acknowledged each one
    assert [d.item_id for d in report.decisions] == sorted(labels)
    assert [d.seq for d in report.decisions] == sorted(d.seq for d in report.decisions)
    assert all(d.acks == {"plc": "ok", "mqtt": "ok"} for d in report.decisions)

    # the PLC actuated exactly what was decided, in order
    assert [c[0] for c in plc.commands] == [d.seq for d in report.decisions]
    assert plc.rejects == report.rejects and plc.passes == len(report.decisions) - report.rejects

    # MQTT carried every decision once, in order
    messages = subscriber.take(len(report.decisions))
    subscriber.close()
    assert [m[2]["item_id"] for m in messages] == [d.item_id for d in report.decisions]

    # the audit trail holds the same decisions and every quarantined item with its reason
    audit = AuditStore(cfg.audit_db)
    assert [r["item_id"] for r in audit.decisions(report.run_id)] == [d.item_id for d in report.decisions]
    quarantined = audit.quarantined(report.run_id)
    assert len(quarantined) == len(BAD_EVENTS)
    for prefix, (_, words) in BAD_EVENTS.items():
        [row] = [q for q in quarantined if q["item_id"].startswith(prefix)]
        assert words in row["reason"], row
        assert (Path(row["folder"]) / "reason.txt").is_file()
    assert any((Path(q["folder"]) / "corrupt.png").is_file() for q in quarantined), "payload not kept"

    # scored against the recording's labels (never seen in training), then compared with the golden decisions
    metrics = score(report, RECORDING)
    # docs/model.md gives the held-out figures on 600 parts; these 24 (made by an earlier version of the
    # synthesiser, so slightly out of distribution: the shipped model scores 75 %) only check that the line carries
    # a trained model's answers (calling every part good scores 42 %), and the golden file below pins them
    assert metrics["machine_accuracy"] >= 0.9 and metrics["defect_accuracy"] >= 0.6, metrics
    got = [{"item_id": d.item_id, "label": d.label, "reject": d.reject, "machine": d.extra["machine"],
            "confidence": d.confidence} for d in report.decisions]
    if request.config.getoption("--update-golden"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text("".join(json.dumps(g) + "\n" for g in got))
    golden = [json.loads(line) for line in GOLDEN.read_text().splitlines()]
    assert [{k: g[k] for k in ("item_id", "label", "reject", "machine")} for g in got] == \
           [{k: g[k] for k in ("item_id", "label", "reject", "machine")} for g in golden]
    # replays are bitwise reproducible here (test_reliability.py); 1e-6 leaves room for another CPU's kernels
    # (ATen's or oneDNN's other code paths move a confidence by up to 8.3e-7: docs/reliability.md, Determinism)
    assert [g["confidence"] for g in got] == pytest.approx([g["confidence"] for g in golden], rel=0, abs=1e-6)


def test_unreachable_plc_stops_the_line_naming_host_and_port(ray_cluster, tmp_path) -> None:
    from connectors.mqtt import free_port
    from connectors.sinks import ControllerUnavailable

    port = free_port()
    cfg = FactoryLineConfig(model_dir=str(MODEL), recording=str(RECORDING), audit_db=str(tmp_path / "a.db"),
                            replicas=1, plc=f"127.0.0.1:{port}")
    line = compose(cfg)
    try:
        with pytest.raises(ControllerUnavailable, match=f"127.0.0.1:{port}"):
            run_line(line)
    finally:
        line.replicas.shutdown()


def test_a_run_whose_controller_breaks_still_ends_in_the_audit(ray_cluster, tmp_path) -> None:
    """A courier ended by a bug in its sink fails the run loudly, and the audit still closes the run with why."""
    cfg = FactoryLineConfig(model_dir=str(MODEL), recording=str(RECORDING), audit_db=str(tmp_path / "a.db"),
                            replicas=1)
    line = compose(cfg)
    line.controllers = [BrokenSink(fail_seq=2)]
    try:
        with pytest.raises(RuntimeError, match="delivery to broken"):
            run_line(line)
    finally:
        line.replicas.shutdown()
    audit = AuditStore(cfg.audit_db)
    [run] = audit.query("SELECT run_id, finished, summary FROM runs")
    summary = json.loads(run["summary"])
    assert run["finished"] is not None
    assert "cannot encode seq 2" in summary["error"], summary
    decided = audit.decisions(run["run_id"])
    assert len(decided) == summary["decisions"] == len(read_labels(RECORDING))
    assert [d["acks"]["broken"] for d in decided] == ["ok" if d["seq"] < 2 else "pending" for d in decided]


def test_a_fitted_anomaly_model_scores_every_part_in_the_replicas_and_its_flags_reject(ray_cluster, tmp_path) -> None:
    """``fusionline run factory --anomaly``: the good-only model (fitted here on the recording's good parts, small
    for speed) travels to the Ray replicas with the classifier; every decided part carries its anomaly score, a
    flagged one is rejected, and the decisions name both models; the audit keeps the score."""
    from model.anomaly import AnomalyConfig
    from pipelines.lines.factory.fit import fit_good_parts

    fit_good_parts(RECORDING, tmp_path / "fit", good=8, config=AnomalyConfig(image_size=(96, 128), coreset=128))
    cfg = FactoryLineConfig(model_dir=str(MODEL), recording=str(RECORDING), audit_db=str(tmp_path / "a.db"),
                            replicas=1, anomaly=str(tmp_path / "fit"))
    line = compose(cfg)
    try:
        report = run_line(line)
    finally:
        line.replicas.shutdown()
    assert len(report.decisions) == len(read_labels(RECORDING))
    assert all(d.extra["anomaly_score"] > 0 and "+anomaly:" in d.model_version for d in report.decisions)
    flagged = [d for d in report.decisions if d.extra["anomalous"]]
    assert all(d.reject for d in flagged) and all(d.extra["anomaly_score"] > 1 for d in flagged)
    audited = AuditStore(cfg.audit_db).decisions(report.run_id)
    assert [d["extra"]["anomaly_score"] for d in audited] == [d.extra["anomaly_score"] for d in report.decisions]
