"""The dashboard's query helpers (apps/data.py) against a real audit store; expectations computed independently."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from apps import data
from connectors.audit import AuditStore
from connectors.records import Decision, Quarantined

LABELS = ["good", "scratch", "dent", "crack"]
MACHINE = ["normal", "bearing_click", "imbalance_hum"]


@dataclass
class AuditFixture:
    db: Path
    run_id: str
    decisions: list[Decision]
    quarantined: list[Quarantined]


def defect_png(path: Path, box: list[float], seed: int) -> None:
    """A small brushed-metal frame with a dark scratch inside ``box``."""
    rng = np.random.default_rng(seed)
    h, w = 96, 128
    img = (150 + 25 * np.sin(np.linspace(0, 9, w))[None, :] + rng.normal(0, 6, (h, w))).clip(0, 255)
    img = np.repeat(img[..., None], 3, axis=2).astype(np.uint8)
    x, y, bw, bh = box
    p0, p1 = (int(x * w) + 3, int(y * h) + 3), (int((x + bw) * w) - 4, int((y + bh) * h) - 4)
    cv2.line(img, p0, p1, (40, 40, 45), 3)
    cv2.imwrite(str(path), img)


def build_audit_db(root: Path, n: int = 50, finish: bool = True, seed: int = 7) -> AuditFixture:
    """An audit store with one factory run: ``n`` varied decisions (a few with frames and defect boxes) and 2
    quarantined items. Decision times end a few seconds ago, so an unfinished run reads as live. A part is rejected
    for a defect or an abnormal machine sound, the latter only when its clip was heard (as the predictor does)."""
    rng = np.random.default_rng(seed)
    store = AuditStore(root / "audit.db")
    run_id = store.start_run("factory", {"replicas": 2})
    t = time.time() - 30.0
    decisions = []
    for i in range(n):
        t += float(rng.uniform(0.05, 0.4))
        label = str(rng.choice(LABELS, p=[0.72, 0.14, 0.08, 0.06]))
        confidence = float(rng.uniform(0.55, 0.99))
        image_w = float(rng.uniform(0.4, 0.9))
        weights = {"image": 1.0} if i % 7 == 0 else {"image": image_w, "audio": 1.0 - image_w}
        machine = str(rng.choice(MACHINE, p=[0.7, 0.15, 0.15]))
        unobserved = [] if "audio" in weights else ["machine"]  # no clip: the machine answer is the prior
        reject = label != "good" or (machine != "normal" and not unobserved)
        extra = {"machine": machine, "machine_confidence": float(rng.uniform(0.6, 1.0)), "unobserved": unobserved}
        acks = {"plc": "timeout" if i % 10 == 3 else "ok"}
        if i % 17 != 5:
            acks["mqtt"] = "error: broker unreachable" if i % 13 == 4 else "ok"
        decisions.append(Decision(
            item_id=f"part-{i:04d}", seq=i, label=label, confidence=confidence, reject=reject,
            modality_weights=weights, model_version="fusion-v1", latency_ms=float(8 + rng.gamma(2.0, 9.0)),
            input_digest=f"{i:064x}", extra=extra, acks=acks, ts=t,
        ))
    rejected = [d for d in decisions if d.reject]
    for k, d in enumerate(rejected[-6:-1]):  # the newest reject has no frame: the gallery must cope
        box = [round(0.1 + 0.1 * k, 2), 0.25, 0.35, 0.4]
        path = root / f"{d.item_id}.png"
        defect_png(path, box, seed=k)
        d.extra |= {"image_path": str(path), "defect_box": box if d.label != "good" else None}
    for d in decisions:
        store.record_decision(run_id, d)
    quarantined = [
        Quarantined("part-0050", 50, "frame is not a decodable image (12 bytes)", "decode", ts=t + 0.1),
        Quarantined("part-0051", 51, "frame size 8x8 outside 16..8192 pixels", "preprocess", ts=t + 0.2),
    ]
    for q in quarantined:
        store.record_quarantine(run_id, q)
    if finish:
        store.finish_run(run_id, {"parts": n})
    store.close()
    return AuditFixture(root / "audit.db", run_id, decisions, quarantined)


def expected_reason(d: Decision) -> str:
    """Why the fixture's decision ``d`` was rejected, as the page should say it."""
    reasons = [f"defect ({d.label})"] if d.label != "good" else []
    if d.extra["machine"] != "normal" and "machine" not in d.extra["unobserved"]:
        reasons.append(f"machine sound ({d.extra['machine']}, {d.extra['machine_confidence']:.0%})")
    return " and ".join(reasons)


@pytest.fixture
def audit(tmp_path: Path) -> AuditFixture:
    return build_audit_db(tmp_path)


@pytest.fixture
def frame(audit: AuditFixture) -> tuple:
    return data.load_decisions(audit.db, audit.run_id), data.load_quarantine(audit.db, audit.run_id)


def test_load_decisions_parses_rows(audit: AuditFixture, frame: tuple) -> None:
    decisions, quarantine = frame
    assert list(decisions["item_id"]) == [d.item_id for d in audit.decisions]
    assert decisions["reject"].dtype == bool
    assert decisions.iloc[0]["modality_weights"] == {"image": 1.0}
    assert list(quarantine["item_id"]) == ["part-0050", "part-0051"]
    assert list(quarantine["stage"]) == ["decode", "preprocess"]


def test_run_stats(audit: AuditFixture, frame: tuple) -> None:
    ds = audit.decisions
    stats = data.run_stats(*frame)
    lat = [d.latency_ms for d in ds]
    cuts = statistics.quantiles(lat, n=100, method="inclusive")
    ts = [d.ts for d in ds]
    assert stats.parts == 50
    assert stats.rejected == sum(d.reject for d in ds)
    assert stats.reject_rate == pytest.approx(sum(d.reject for d in ds) / 50)
    assert stats.throughput == pytest.approx(49 / (max(ts) - min(ts)))
    assert stats.latency_p50_ms == pytest.approx(cuts[49])
    assert stats.latency_p99_ms == pytest.approx(cuts[98])
    assert stats.quarantined == 2


def test_class_breakdown(audit: AuditFixture, frame: tuple) -> None:
    table = data.class_breakdown(frame[0]).set_index("label")
    counts = Counter(d.label for d in audit.decisions)
    rejects = Counter(d.label for d in audit.decisions if d.reject)
    assert dict(table["parts"]) == dict(counts)
    assert list(table["parts"]) == sorted(table["parts"], reverse=True)
    for label, count in counts.items():
        assert table.loc[label, "rejected"] == rejects[label]
        assert table.loc[label, "share"] == pytest.approx(count / 50)
        assert table.loc[label, "reject_rate"] == pytest.approx(rejects[label] / count)
    assert table["share"].sum() == pytest.approx(1.0)


def test_ack_status(audit: AuditFixture, frame: tuple) -> None:
    acks = data.ack_status(frame[0]).set_index("controller")
    assert list(acks.index) == ["mqtt", "plc"]
    for sink in ("plc", "mqtt"):
        got = [d.acks[sink] for d in audit.decisions if sink in d.acks]
        assert acks.loc[sink, "ok"] == got.count("ok")
        assert acks.loc[sink, "failed"] == len(got) - got.count("ok")
        assert acks.loc[sink, "missing"] == 50 - len(got)
        assert acks.loc[sink, "last_ack"] == got[-1]
    assert acks.loc["plc", "failed"] == 5  # i % 10 == 3
    assert acks.loc["mqtt", "missing"] == 3  # i % 17 == 5


def test_modality_weights_count_absent_modality_as_zero(audit: AuditFixture, frame: tuple) -> None:
    w = data.modality_weights(frame[0]).set_index(["label", "modality"])["weight"]
    ds = audit.decisions
    assert w["all parts", "audio"] == pytest.approx(sum(d.modality_weights.get("audio", 0.0) for d in ds) / 50)
    scratch = [d for d in ds if d.label == "scratch"]
    assert w["scratch", "image"] == pytest.approx(sum(d.modality_weights["image"] for d in scratch) / len(scratch))
    assert w["all parts"].sum() == pytest.approx(1.0)


def test_timeline_and_histogram_account_for_every_part(audit: AuditFixture, frame: tuple) -> None:
    tl = data.timeline(frame[0], buckets=10)
    assert len(tl) == 10
    assert tl["parts"].sum() == 50
    assert tl["rejected"].sum() == sum(d.reject for d in audit.decisions)
    width = tl["t_s"].iloc[1]
    assert (tl["parts_per_s"] * width).round().astype(int).tolist() == tl["parts"].tolist()
    hist = data.latency_histogram(frame[0], bins=12)
    assert hist["parts"].sum() == 50
    assert hist["lo_ms"].iloc[0] == pytest.approx(min(d.latency_ms for d in audit.decisions))


def test_recent_rejects_and_annotation(audit: AuditFixture, frame: tuple) -> None:
    rejected = [d for d in audit.decisions if d.reject]
    recent = data.recent_rejects(frame[0], limit=4)
    assert list(recent["item_id"]) == [d.item_id for d in reversed(rejected)][:4]
    assert list(recent["reason"]) == [expected_reason(d) for d in reversed(rejected)][:4]
    assert recent.iloc[0]["image_path"] is None
    row = recent.iloc[1]
    image = data.annotate_defect(row["image_path"], row["defect_box"])
    assert image.shape == (96, 128, 3)
    x, y, _, _ = row["defect_box"]
    r, g, b = image[int(y * 96) + 10, int(x * 128)]  # the box's left edge is drawn red (RGB)
    assert r > 200 and g < 100 and b < 100
    plain = cv2.cvtColor(cv2.imread(row["image_path"]), cv2.COLOR_BGR2RGB)
    assert np.array_equal(data.annotate_defect(row["image_path"], [2, 0, 1, 1]), plain)  # invalid box: not drawn
    assert data.annotate_defect("/nonexistent/frame.png", [0.1, 0.1, 0.2, 0.2]) is None


def test_reject_reason_follows_the_predictors_rule() -> None:
    heard = {"machine": "normal", "machine_confidence": 0.91, "unobserved": []}
    assert data.reject_reason("scratch", heard) == "defect (scratch)"
    click = heard | {"machine": "bearing_click", "machine_confidence": 0.974}
    assert data.reject_reason("good", click) == "machine sound (bearing_click, 97%)"
    assert data.reject_reason("crack", click) == "defect (crack) and machine sound (bearing_click, 97%)"
    assert data.reject_reason("crack", click | {"unobserved": ["machine"]}) == "defect (crack)"  # no clip heard
    assert data.reject_reason("good", {}) == ""  # a record without the machine's answer does not say
    flagged = heard | {"anomaly_score": 1.84, "anomalous": True}  # the product's good-only model flagged it
    assert data.reject_reason("good", flagged) == "anomaly (1.8× the fitted threshold)"
    assert data.reject_reason("dent", flagged) == "defect (dent) and anomaly (1.8× the fitted threshold)"


def test_runs_newest_first_with_status(tmp_path: Path) -> None:
    old = build_audit_db(tmp_path, n=5)
    store = AuditStore(old.db)  # a second, unfinished run with no decisions yet, still being written
    live = store.start_run("factory", {})
    try:
        runs = data.list_runs(old.db)
        assert list(runs["run_id"]) == [live, old.run_id]
        assert list(runs["parts"]) == [0, 5]
        assert list(runs["status"]) == ["live", "finished"]
        state = data.run_state(old.db, old.run_id)
        assert (state.parts, state.quarantined, state.status) == (5, 2, "finished")
    finally:
        store.close()
    started = time.time() - 1000
    assert data.run_status(None, started, started + 10) == "stalled"
    assert data.run_status(None, started, started + 10, now=started + 20) == "live"


def test_missing_empty_and_foreign_stores(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "audit.db"
    with pytest.raises(data.AuditUnavailable, match="no audit database"):
        data.list_runs(missing)
    assert not missing.parent.exists()  # reading never creates the store
    empty = tmp_path / "empty.db"
    empty.touch()
    assert data.list_runs(empty).empty
    AuditStore(tmp_path / "fresh.db").close()
    assert data.list_runs(tmp_path / "fresh.db").empty
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(data.AuditUnavailable, match="cannot read"):
        data.list_runs(junk)


def test_the_dashboard_reads_the_audit_without_importing_torch() -> None:
    """The dashboard process stays small: the audit schema, model configurations and the reject rule need no torch."""
    probe = "import sys, apps.data, apps.factory; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False"


def test_cascade_breakdown_splits_who_decided_with_accuracy_from_the_recordings_labels(tmp_path: Path) -> None:
    recording = tmp_path / "rec"
    recording.mkdir()
    truth = ["good", "scratch", "good", "dent", "good", "crack"]
    (recording / "labels.jsonl").write_text("".join(
        f'{{"item_id": "part-{i}", "defect": "{t}"}}\n' for i, t in enumerate(truth)))
    store = AuditStore(tmp_path / "audit.db")
    run_id = store.start_run("factory", {"recording": str(recording)})
    decided = [("good", "small", 0.99), ("scratch", "small", 0.97), ("good", "small", 0.95),
               ("scratch", "escalated", 0.6), ("good", "escalated", 0.5), ("crack", "escalated", 0.7)]
    for i, (label, path, conf) in enumerate(decided):
        store.record_decision(run_id, Decision(
            item_id=f"part-{i}", seq=i, label=label, confidence=0.9, reject=label != "good", modality_weights={},
            model_version="small" if path == "small" else "big", latency_ms=1.0, input_digest=f"{i:064x}",
            extra={"cascade": path, "small_confidence": conf}, acks={}, ts=float(i)))
    store.close()
    paths = data.cascade_breakdown(data.load_decisions(tmp_path / "audit.db", run_id),
                                   data.run_labels(tmp_path / "audit.db", run_id)).set_index("path")
    assert paths.loc["small", "parts"] == 3 and paths.loc["escalated", "share"] == 0.5
    assert paths.loc["small", "accuracy"] == 1.0 and paths.loc["escalated", "accuracy"] == pytest.approx(2 / 3)
    assert paths.loc["escalated", "mean_small_confidence"] == pytest.approx(0.6)


def test_a_run_without_a_cascade_has_no_cascade_panel(audit: AuditFixture, frame: tuple) -> None:
    assert data.cascade_breakdown(frame[0], {}).empty
    assert data.run_labels(audit.db, audit.run_id) == {}
